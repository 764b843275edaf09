"""The usage page in a real headless Chromium, served by a real ``twistd dockermirror``.

The browser knows the mirror as ``mirror.test`` (``--host-resolver-rules``), a
host name that is no secure context, as most mirrors served over http are not:
there the copy buttons must fall back to a selection and execCommand("copy").
At ``127.0.0.1`` (a secure context) they use navigator.clipboard.

The whole page is saved as tests/output/usage-page.png for review.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockermirror.config import build_config
from dockermirror.status import LiveStatus, QuotaReading, UpstreamState
from dockermirror.web.homepage import CONTENT_SECURITY_POLICY, TRADITIONAL, render_homepage
from tests.support.browser import Browser, Page
from tests.support.clients import require
from tests.support.peers import Mirror, assert_clean_log, start_mirror

SCREENSHOT = Path(__file__).parent / "output" / "usage-page.png"
NAME = "mirror.test"
CONFIG = """[routes]
"*" = "docker.io"
"ghcr.mirror.test" = "ghcr.io"
"""


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    root = tmp_path_factory.mktemp("homepage")
    started = start_mirror(root, require("twistd"), CONFIG)
    yield started
    started.stop()
    assert_clean_log(started)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, mirror: Mirror) -> Iterator[Browser]:
    started = Browser(
        tmp_path_factory.mktemp("chromium"),
        resolve={NAME: "127.0.0.1", f"ghcr.{NAME}": "127.0.0.1"},
        ports=[mirror.port],
    )
    yield started
    started.close()


def snippets(page: Page) -> list[str]:
    return list(
        page.evaluate("[...document.querySelectorAll('.snippet code')].map(c => c.textContent)")
    )


def button_labels(page: Page) -> list[str]:
    return list(
        page.evaluate("[...document.querySelectorAll('button.copy')].map(b => b.textContent)")
    )


def test_the_page_in_a_browser(browser: Browser, mirror: Mirror) -> None:
    origin = f"http://{NAME}:{mirror.port}"
    page = browser.new_page()
    response = page.goto(origin + "/")
    assert response.status == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # One request, for the page itself: no fonts, scripts, images or styles from anywhere.
    assert [(r.url, r.kind) for r in page.requests] == [(origin + "/", "Document")]
    host = f"{NAME}:{mirror.port}"
    texts = snippets(page)
    assert len(texts) >= 10
    assert f"docker pull {host}/library/redis\ndocker tag {host}/library/redis redis" in texts
    assert any(f'"registry-mirrors": ["http://{host}"]' in t for t in texts)
    assert any(f'[host."http://{host}"]' in t for t in texts)
    assert any(f'location = "{host}"' in t for t in texts)
    assert f"docker pull ghcr.{NAME}:{mirror.port}/NAMESPACE/IMAGE" in page.evaluate(
        "document.querySelector('#routes').textContent"
    )
    # The script ran (under the policy) and gave every snippet a button.
    assert button_labels(page) == ["Copy"] * len(texts)
    assert page.evaluate("window.isSecureContext") is False
    # As a visitor first sees it, for review.
    print(f"\nusage page screenshot: {page.screenshot(SCREENSHOT)}")
    page.evaluate(
        "window.copied = [];"
        "document.addEventListener('copy', () => window.copied.push(String(getSelection())))"
    )
    for index in range(page.query_count("details")):
        page.click("details > summary", index)  # open what is folded away
    for index in range(len(texts)):
        page.click("button.copy", index)
    assert page.evaluate("window.copied") == texts
    assert button_labels(page) == ["Copied"] * len(texts)
    assert page.errors == []
    assert [r.url for r in page.requests] == [origin + "/"]


def test_copy_uses_the_clipboard_in_a_secure_context(browser: Browser, mirror: Mirror) -> None:
    page = browser.new_page()
    browser.call(
        "Browser.grantPermissions",
        origin=mirror.url,
        permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
    )
    page.goto(mirror.url + "/?lang=zh")
    assert page.evaluate("window.isSecureContext && !!navigator.clipboard") is True
    page.evaluate("document.addEventListener('copy', () => { window.selectionCopied = true })")
    page.click("button.copy", 2)
    # The clipboard API answers later: the button says when.
    page.wait_for("document.querySelectorAll('button.copy')[2].dataset.state")
    assert button_labels(page)[2] == "已复制"
    assert page.evaluate("navigator.clipboard.readText()") == snippets(page)[2]
    assert page.evaluate("window.selectionCopied") is None  # no fallback was needed
    assert page.errors == []


def test_without_javascript_the_snippets_are_plain_selectable_text(
    browser: Browser, mirror: Mirror
) -> None:
    page = browser.new_page()
    page.call("Emulation.setScriptExecutionDisabled", value=True)
    page.goto(f"http://{NAME}:{mirror.port}/")
    assert page.query_count("button") == 0  # no dead buttons
    assert page.query_count(".snippet pre code") >= 10
    # Scripts back on for the test's own questions; the page's script stays unrun.
    page.call("Emulation.setScriptExecutionDisabled", value=False)
    assert page.evaluate("getComputedStyle(document.querySelector('pre code')).userSelect") in (
        "auto",
        "text",
    )
    page.click(".snippet pre", 0, count=3)  # a reader's triple click selects a line
    selected = page.evaluate("String(getSelection())").strip()
    host = f"{NAME}:{mirror.port}"
    lines = [f"docker pull {host}/library/redis", f"docker tag {host}/library/redis redis"]
    assert selected in lines
    assert page.errors == []


def test_the_language_switch_and_the_traditional_chinese_notice(
    browser: Browser, mirror: Mirror
) -> None:
    page = browser.new_page()
    page.call("Network.setExtraHTTPHeaders", headers={"Accept-Language": "zh-TW,zh;q=0.9"})
    page.goto(mirror.url + "/")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    notice = page.evaluate("document.querySelector('.notice').innerText")
    assert "本頁只提供簡體中文版" in notice and "English" in notice
    page.follow(".notice a")
    assert page.evaluate("location.search") == "?lang=en"
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.evaluate("document.querySelector('.notice')") is None
    page.follow('.languages a[hreflang="zh-CN"]')
    assert page.evaluate("location.search") == "?lang=zh"
    assert page.evaluate("document.querySelector('h1').textContent") == "镜像仓库代理"
    assert page.evaluate("document.querySelector('.notice')") is None
    assert page.errors == []


class _Static(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` at every path, under the usage page's policy."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def static() -> Iterator[str]:
    """A plain server for pages the mirror would not serve; yields its origin."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Static)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_hostile_values_stay_text_in_a_browser(browser: Browser, static: str) -> None:
    """What the mirror's Host check keeps out, rendered anyway: nothing runs or loads."""
    hostile = '"><img src=/x onerror=alert(1)><script>alert(2)</script>'
    config = build_config({"routes": {"*": "docker.io"}})
    status = LiveStatus(
        hub_quota=QuotaReading(limit=10, remaining=1),
        upstreams=(UpstreamState("docker.io", False, 1.0, "<img src=/y onerror=alert(3)>"),),
    )
    _Static.body = render_homepage(
        config, config.registries["docker.io"], hostile, "http", TRADITIONAL, status
    )
    page = browser.new_page()
    page.goto(static + "/")
    assert [r.url for r in page.requests] == [static + "/"]
    assert page.query_count("img") == 0
    assert page.query_count("script") == 1
    assert page.evaluate("document.querySelector('.snippet code').textContent") == (
        f"docker pull {hostile}/library/redis\ndocker tag {hostile}/library/redis redis"
    )
    assert [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"] == []
    assert len(button_labels(page)) == len(snippets(page))
    assert page.errors == []


def test_the_checks_see_errors_and_policy_violations(browser: Browser, static: str) -> None:
    """What the tests above assert away is really seen when it happens."""
    _Static.body = (
        b"<!DOCTYPE html><title>t</title><script>console.log('blocked')</script>"
        b"<img src=/elsewhere.png>"
    )
    page = browser.new_page()
    page.goto(static + "/")
    page.evaluate("console.error('seen'); setTimeout(() => { throw new Error('thrown') })")
    page.evaluate("new Promise(resolve => setTimeout(resolve, 200))")
    errors = "\n".join(page.errors)
    assert "console.error: seen" in errors
    assert "Error: thrown" in errors
    assert "Content Security Policy" in errors  # the inline script, refused
    assert "/elsewhere.png" in errors  # the image, refused
