"""A headless Chromium, driven over the DevTools protocol, for the usage page's tests.

Chromium talks the protocol over two pipes (``--remote-debugging-pipe``: it
reads commands from its fd 3 and writes answers and events to its fd 4, each a
JSON text ended by a NUL byte), so no port, no websocket library and no
package beyond Debian's ``chromium``.  One thread reads the answers; the tests
wait on them synchronously, as they do for the other peers.

What the tests look at: every request a page made, everything it logged at
error level (console errors, uncaught exceptions, blocked loads, Content
Security Policy violations), the DOM, screenshots, and real mouse clicks.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from tests.support.clients import require

# The protocol's answer to a command, or an event.
Message = dict[str, Any]


_LAUNCH = """
import os, sys
commands, answers = int(sys.argv[1]), int(sys.argv[2])
os.dup2(commands, 3)
os.dup2(answers, 4)
os.close(commands)
os.close(answers)
os.execv(sys.argv[3], sys.argv[3:])
"""


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved to 10 or above, clear of the 3 and 4 that Chromium reads."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved[0], moved[1]


class BrowserError(Exception):
    """The browser refused a command, or did not answer in time."""


@attrs.frozen
class Request:
    url: str
    method: str
    # What made it: "Document" for the page itself, "Script", "Image", "Fetch", "Other"...
    kind: str


@attrs.frozen
class Response:
    url: str
    status: int
    # Header names lower-cased.
    headers: Mapping[str, str]


class Browser:
    """One headless Chromium with a profile of its own under ``root``.

    ``resolve``: host names mapped to IP addresses (``--host-resolver-rules``),
    so a page can be visited under a name that only this browser knows.
    ``ports``: ports Chromium would otherwise refuse as unsafe (a free port may
    be one of them).
    """

    def __init__(
        self,
        root: Path,
        *,
        resolve: Mapping[str, str] | None = None,
        ports: Iterable[int] = (),
        size: tuple[int, int] = (1280, 900),
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self.log = root / "chromium.log"
        root.mkdir(parents=True, exist_ok=True)
        rules = ", ".join(f"MAP {name} {address}" for name, address in (resolve or {}).items())
        args = [
            require("chromium"),
            "--headless",
            # CI runs the suite as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            # Containers often have a small /dev/shm, where Chromium's tabs crash.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            # Nothing of the browser's own on the network: only what the page asks for.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--metrics-recording-only",
            "--no-pings",
            "--mute-audio",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={root / 'profile'}",
            f"--window-size={size[0]},{size[1]}",
        ]
        if rules:
            args.append(f"--host-resolver-rules={rules}")
        allowed = ",".join(str(p) for p in ports)
        if allowed:
            args.append(f"--explicitly-allowed-ports={allowed}")
        args.append("about:blank")
        # Chromium wants the pipes as its fds 3 and 4: a small Python puts them there and
        # execs it (preexec_fn is unsafe in a process with threads; dash knows fds up to 9).
        commands_read, self._commands = _high(os.pipe())
        self._answers, answers_write = _high(os.pipe())
        self._out = open(self.log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(commands_read), str(answers_write), *args],
            pass_fds=(commands_read, answers_write),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._command_line = shlex.join(args)
        self._next_id = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._answered: dict[int, Message] = {}
        self.events: list[Message] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="chromium-reader", daemon=True)
        self._reader.start()
        self.version = self.call("Browser.getVersion")["product"]

    def _read(self) -> None:
        buffered = b""
        while True:
            try:
                chunk = os.read(self._answers, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffered += chunk
            *messages, buffered = buffered.split(b"\0")
            with self._changed:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answered[message["id"]] = message
                    else:
                        self.events.append(message)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def call(self, method: str, session: str | None = None, **params: Any) -> Message:
        """Send a command; its result, or BrowserError with the browser's message."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            command: Message = {"id": ident, "method": method, "params": params}
            if session is not None:
                command["sessionId"] = session
            os.write(self._commands, json.dumps(command).encode() + b"\0")
        answer = self._wait(lambda: self._answered.pop(ident, None), f"an answer to {method}")
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: Message = answer.get("result", {})
        return result

    def _wait(self, found: Callable[[], Message | None], what: str) -> Message:
        deadline = time.monotonic() + self.timeout
        with self._changed:
            while True:
                message = found()
                if message is not None:
                    return message
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    state = "exited" if self._closed else f"gave no {what} in {self.timeout} s"
                    state += f" ({self._command_line})"
                    raise BrowserError(f"chromium {state}; its log: {self.output()[-3000:]}")
                self._changed.wait(left)

    def wait_event(
        self,
        method: str,
        session: str | None = None,
        since: int = 0,
        where: Callable[[Message], bool] = lambda event: True,
    ) -> Message:
        """The first event ``method`` (of ``session``) at index ``since`` or later."""

        def found() -> Message | None:
            for event in self.events[since:]:
                if (
                    event["method"] == method
                    and event.get("sessionId") == session
                    and where(event.get("params", {}))
                ):
                    return event
            return None

        return self._wait(found, f"{method} event")

    def new_page(self) -> Page:
        """A new tab, its events on (network, console, log, page lifecycle)."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Network", "Runtime", "Log", "DOM"):
            page.call(f"{domain}.enable")
        # As if its window had the focus, which the clipboard asks for.
        page.call("Emulation.setFocusEmulationEnabled", enabled=True)
        return page

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.call("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self._commands)
        self._reader.join(10)
        os.close(self._answers)
        self._out.close()


class Page:
    """One tab.  ``requests``, ``responses`` and ``errors`` cover its whole life so far."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def call(self, method: str, **params: Any) -> Message:
        return self.browser.call(method, self.session, **params)

    def _events(self, *methods: str) -> list[Message]:
        return [
            e.get("params", {})
            for e in list(self.browser.events)
            if e.get("sessionId") == self.session and e["method"] in methods
        ]

    def goto(self, url: str) -> Response:
        """Load ``url`` and wait for its load event; the document's response."""
        since = len(self.browser.events)
        navigation = self.call("Page.navigate", url=url)
        if navigation.get("errorText"):
            raise BrowserError(f"{url}: {navigation['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session, since)
        loader = navigation.get("loaderId")
        for params in self._events("Network.responseReceived"):
            if params.get("type") == "Document" and params.get("loaderId") == loader:
                response = params["response"]
                headers = {k.lower(): v for k, v in response["headers"].items()}
                return Response(response["url"], int(response["status"]), headers)
        raise BrowserError(f"{url}: no response for the document")

    @property
    def requests(self) -> list[Request]:
        return [
            Request(p["request"]["url"], p["request"]["method"], p.get("type", "Other"))
            for p in self._events("Network.requestWillBeSent")
        ]

    @property
    def errors(self) -> list[str]:
        """Everything the page reported at error level, one line each."""
        found = []
        for params in self._events("Runtime.exceptionThrown"):
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            found.append(f"exception: {text}")
        for params in self._events("Runtime.consoleAPICalled"):
            if params["type"] in ("error", "assert"):
                values = (a.get("value", a.get("description")) for a in params["args"])
                found.append(f"console.{params['type']}: {' '.join(map(str, values))}")
        for params in self._events("Log.entryAdded"):
            entry = params["entry"]
            if entry["level"] == "error":
                found.append(f"{entry['source']}: {entry['text']} ({entry.get('url', '')})")
        for params in self._events("Network.loadingFailed"):
            found.append(
                f"load failed: {params.get('errorText')} {params.get('blockedReason', '')}"
            )
        return found

    def evaluate(self, expression: str, *, user_gesture: bool = False) -> Any:
        """``expression``'s value (promises awaited), or BrowserError with what it threw."""
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            userGesture=user_gesture,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]!r} threw: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 10.0) -> Any:
        """``expression``'s value once it is truthy (it is asked every 50 ms)."""
        deadline = time.monotonic() + seconds
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} is still {value!r} after {seconds} s")
            time.sleep(0.05)

    def query_count(self, selector: str) -> int:
        """How many elements match, asked of the DOM itself (works with scripts off)."""
        root = self.call("DOM.getDocument", depth=0)["root"]["nodeId"]
        return len(self.call("DOM.querySelectorAll", nodeId=root, selector=selector)["nodeIds"])

    def outer_html(self, selector: str) -> str:
        root = self.call("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise BrowserError(f"nothing matches {selector!r}")
        html: str = self.call("DOM.getOuterHTML", nodeId=node)["outerHTML"]
        return html

    def click(self, selector: str, index: int = 0, count: int = 1) -> None:
        """A real left click (``count``: 3 for a triple click) in the middle of the element."""
        where = self.evaluate(
            f"""(() => {{
                const element = document.querySelectorAll({json.dumps(selector)})[{index}];
                if (!element) return null;
                element.scrollIntoView({{block: "center"}});
                const box = element.getBoundingClientRect();
                if (!box.width || !box.height) return "hidden";
                return [box.left + box.width / 2, box.top + box.height / 2];
            }})()"""
        )
        if where is None or where == "hidden":
            state = "is hidden" if where else "matches nothing"
            raise BrowserError(f"{selector!r} at {index} {state}: a reader could not click it")
        x, y = where
        for clicks in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.call(
                    "Input.dispatchMouseEvent",
                    type=kind,
                    x=x,
                    y=y,
                    button="left",
                    buttons=1 if kind == "mousePressed" else 0,
                    clickCount=clicks,
                )

    def follow(self, selector: str) -> None:
        """Click a link and wait until the page it leads to has loaded."""
        since = len(self.browser.events)
        self.click(selector)
        self.browser.wait_event("Page.loadEventFired", self.session, since)

    def screenshot(self, path: Path) -> Path:
        """The whole page, not only the window, as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
