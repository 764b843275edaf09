"""Hostile clients against a real ``twistd -n dockermirror``, all on loopback.

- A 300 MiB PUT body is answered 405 before it is sent, and nothing is spooled
  to disk; a chunked body is cut at the limit.
- Huge headers get 431, a long request line 414.
- Hundreds of trickling connections are held to the per-client and global caps
  and cut at the header deadline; other clients are served meanwhile or after.
- An idle keep-alive connection is closed after the idle timeout, while a slow
  download outlives both timeouts.

The mirror runs with small limits ([server] below) so that the deadlines pass in
seconds.  Bounds on time here are deadlines, never speeds.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest

from tests.support.clients import require
from tests.support.peers import Mirror, Upstream, assert_clean_log, registry_config, start_mirror
from tests.support.processes import wait_for

MIB = 1024 * 1024
HEADER_TIMEOUT = 2
IDLE_TIMEOUT = 3
PER_CLIENT = 20
TOTAL = 50
SERVER = f"""header_timeout = {HEADER_TIMEOUT}
idle_timeout = {IDLE_TIMEOUT}
max_connections_per_client = {PER_CLIENT}
max_connections = {TOTAL}
"""
# Time the mirror is given beyond a deadline to act on it, and the test to notice.
SLACK = 3.0


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """A mirror with small client limits; its upstream is a closed port (nothing here pulls)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        config = registry_config(
            "docker.io", f"http://127.0.0.1:{closed.getsockname()[1]}", "[cache]\nenabled = false"
        )
        root = tmp_path_factory.mktemp("hostile")
        result = start_mirror(root, require("twistd"), config, server=SERVER)
        yield result
        result.stop()
    assert_clean_log(result)


def status_kib(mirror: Mirror, field: str) -> int:
    for line in Path(f"/proc/{mirror.peer.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def open_files(mirror: Mirror) -> list[str]:
    """What the mirror's descriptors point at."""
    fds = Path(f"/proc/{mirror.peer.process.pid}/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    return targets


def sockets(mirror: Mirror) -> int:
    return sum(target.startswith("socket:") for target in open_files(mirror))


def spooled(mirror: Mirror) -> list[str]:
    """Open files a request body could have been spooled to: Twisted's TemporaryFile,
    which is unlinked at once (or never linked) and so shows as deleted."""
    return [target for target in open_files(mirror) if target.endswith("(deleted)")]


def read_answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the mirror closes: status, headers, body."""
    s.settimeout(10)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"no answer and close within 10 s; received {data[:200]!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


def zeros(total: int, size: int = MIB) -> Iterator[bytes]:
    """A body streamed in pieces, never whole in memory."""
    chunk = bytes(size)
    for _ in range(total // size):
        yield chunk


def send_all(s: socket.socket, pieces: Iterator[bytes]) -> int:
    """Send until the body ends or the mirror has closed; the bytes the kernel took."""
    sent = 0
    try:
        for piece in pieces:
            s.sendall(piece)
            sent += len(piece)
    except OSError:
        pass  # closed by the mirror: what the body was meant to find out
    return sent


def test_a_huge_put_body_gets_its_405_before_it_is_sent(mirror: Mirror) -> None:
    size = 300 * MIB
    rss_before = status_kib(mirror, "VmRSS")
    with socket.create_connection(("127.0.0.1", mirror.port)) as s:
        s.sendall(
            b"PUT /v2/library/x/blobs/uploads/ HTTP/1.1\r\nHost: m\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        status, headers, body = read_answer(s)  # not one body byte sent yet
        assert (status, error_code(body)) == (405, "UNSUPPORTED")
        assert (headers["allow"], headers["connection"]) == ("GET, HEAD", "close")
        assert spooled(mirror) == []
        sent = send_all(s, zeros(size))
    assert sent < 16 * MIB  # the connection is gone: the rest is never sent

    # A client that does not wait for an answer before sending its body gets it too.
    with socket.create_connection(("127.0.0.1", mirror.port)) as s:
        s.sendall(b"PUT /v2/x/manifests/1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
        sending = threading.Thread(target=send_all, args=(s, zeros(size)))
        sending.start()
        status, headers, body = read_answer(s)
        sending.join(30)
        assert not sending.is_alive()
    assert (status, headers["connection"]) == (405, "close")
    rss_after, peak = status_kib(mirror, "VmRSS"), status_kib(mirror, "VmHWM")
    print(f"300 MiB PUT: RSS {rss_before} -> {rss_after} KiB, peak {peak} KiB; {sent} bytes sent")
    assert rss_after - rss_before < 10 * 1024
    assert peak < 100 * 1024
    assert "PUT /v2/library/x/blobs/uploads/ -> 405 refused" in mirror.peer.output()


@pytest.mark.parametrize(
    ("method", "status", "code"),
    [(b"PUT", 405, "UNSUPPORTED"), (b"GET", 413, "REQUEST_TOO_LARGE")],
)
def test_a_chunked_body_is_cut_at_the_limit(
    mirror: Mirror, method: bytes, status: int, code: str
) -> None:
    chunk = b"1000\r\n" + b"c" * 4096 + b"\r\n"
    with socket.create_connection(("127.0.0.1", mirror.port)) as s:
        s.sendall(method + b" /v2/x/blobs/uploads/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(chunk)  # within the limit: read into memory, never a temporary file
        time.sleep(0.5)  # (for the mirror to have read it: an absence cannot be waited for)
        assert spooled(mirror) == []
        sent = send_all(s, (chunk for _ in range(300 * MIB // len(chunk))))
        answer, headers, body = read_answer(s)
    assert (answer, error_code(body), headers["connection"]) == (status, code, "close")
    assert sent < 16 * MIB


def test_huge_headers_get_431(mirror: Mirror) -> None:
    for headers in (
        b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(64)),  # 64 KiB
        b"".join(b"X-Many-%d: 1\r\n" % i for i in range(500)),
        b"Cookie: " + b"c" * MIB,  # one line that never ends
    ):
        with socket.create_connection(("127.0.0.1", mirror.port)) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n")
            send_all(s, iter([headers, b"\r\n\r\n"]))
            status, response_headers, body = read_answer(s)
        assert (status, error_code(body)) == (431, "REQUEST_TOO_LARGE")
        assert response_headers["connection"] == "close"


def test_a_long_request_line_gets_414(mirror: Mirror) -> None:
    for ending in (b" HTTP/1.1\r\n\r\n", b""):  # a whole line, and one that never ends
        with socket.create_connection(("127.0.0.1", mirror.port)) as s:
            send_all(s, iter([b"GET /v2/" + b"a" * (64 * 1024) + ending]))
            status, headers, body = read_answer(s)
        assert (status, error_code(body), headers["connection"]) == (
            414,
            "REQUEST_TOO_LARGE",
            "close",
        )


def get_v2(mirror: Mirror, source: str) -> int:
    connection = http.client.HTTPConnection(
        "127.0.0.1", mirror.port, source_address=(source, 0), timeout=10
    )
    try:
        connection.request("GET", "/v2/")
        response = connection.getresponse()
        assert response.read() == b"{}"
        return response.status
    finally:
        connection.close()


def open_tricklers(mirror: Mirror, sources: list[str], count: int) -> list[Trickler]:
    """``count`` connections from each source, each with the start of a request head.

    Paced: opened faster than the mirror accepts, connections overflow the listen
    backlog and the kernel retries them a second or more later, past the deadline.
    """
    opened = []
    for source in sources:
        for _ in range(count):
            s = socket.socket()
            s.settimeout(5)
            s.bind((source, 0))
            opened.append(Trickler(s, time.monotonic()))
            try:
                s.connect(("127.0.0.1", mirror.port))
                s.sendall(b"GET /v2/ HTTP/1.1\r\nX-Slow: ")
            except ConnectionError:
                pass  # refused at once
            time.sleep(0.002)
    return opened


@attrs.define
class Trickler:
    socket: socket.socket
    opened: float
    closed: float | None = None

    def close(self) -> None:
        self.socket.close()


def trickle(tricklers: list[Trickler], seconds: float) -> threading.Thread:
    """In a thread: a byte on each every 0.2 s until each is found closed, for ``seconds``."""

    def run() -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and any(t.closed is None for t in tricklers):
            for t in tricklers:
                if t.closed is None:
                    try:
                        t.socket.send(b"s")
                    except OSError:
                        t.closed = time.monotonic()
            time.sleep(0.2)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def held(tricklers: list[Trickler]) -> list[Trickler]:
    """Those the mirror kept: neither reset nor closed."""
    kept = []
    for t in tricklers:
        t.socket.setblocking(False)
        try:
            assert t.socket.recv(1) == b"", "a trickler got an answer"
        except BlockingIOError:
            kept.append(t)
        except OSError:
            pass  # reset: refused
        t.socket.setblocking(True)
    return kept


def quiet(mirror: Mirror) -> None:
    """Wait until the mirror holds no client connection: only its listening socket is left."""
    wait_for(lambda: sockets(mirror) == 1, 10)


def cut_after(tricklers: list[Trickler]) -> list[float]:
    """How long after its opening each was found closed (all must have been)."""
    lifetimes = [t.closed - t.opened for t in tricklers if t.closed is not None]
    assert len(lifetimes) == len(tricklers), "a trickler outlived the header deadline"
    return lifetimes


def test_trickling_connections_are_capped_per_client_and_cut_at_the_deadline(
    mirror: Mirror,
) -> None:
    quiet(mirror)
    rss_before = status_kib(mirror, "VmRSS")
    first = open_tricklers(mirror, ["127.0.0.1"], PER_CLIENT)
    assert len(held(first)) == PER_CLIENT
    trickling = trickle(first, HEADER_TIMEOUT + 2 * SLACK)
    flood = open_tricklers(mirror, ["127.0.0.1"], 300 - PER_CLIENT)
    try:
        time.sleep(0.5)  # for the refused ones to be closed
        # (Before the deadline of the first: after it, their places are free again.)
        assert time.monotonic() - first[-1].opened < HEADER_TIMEOUT, "too slow to tell"
        refused_held, settled = held(flood), sockets(mirror) - 1
        # Another client address is served while 127.0.0.1 holds its 20.
        assert get_v2(mirror, "127.0.0.2") == 200
        trickling.join()
    finally:
        for t in first + flood:
            t.close()
    assert (refused_held, settled) == ([], PER_CLIENT)
    lifetimes = cut_after(first)
    # Held until the deadline counted from their opening, however many bytes they sent.
    assert HEADER_TIMEOUT - 0.5 < min(lifetimes) <= max(lifetimes) < HEADER_TIMEOUT + SLACK
    # Once they are cut, their address is served again.
    assert get_v2(mirror, "127.0.0.1") == 200
    rss_after, peak = status_kib(mirror, "VmRSS"), status_kib(mirror, "VmHWM")
    print(
        f"300 tricklers from one address: {PER_CLIENT} held,"
        f" {settled} client sockets in the mirror; cut {min(lifetimes):.2f}-"
        f"{max(lifetimes):.2f}s after opening; RSS {rss_before} -> {rss_after} KiB,"
        f" peak {peak} KiB"
    )
    assert rss_after - rss_before < 10 * 1024
    assert peak < 100 * 1024


def test_connections_are_capped_in_all(mirror: Mirror) -> None:
    quiet(mirror)
    sources = [f"127.0.0.{i}" for i in range(3, 7)]  # 4 x 20 > 50
    tricklers = open_tricklers(mirror, sources, PER_CLIENT)
    try:
        time.sleep(0.5)
        assert time.monotonic() - tricklers[0].opened < HEADER_TIMEOUT, "too slow to tell"
        kept, settled = held(tricklers), sockets(mirror) - 1
        with pytest.raises(ConnectionError):
            get_v2(mirror, "127.0.0.7")  # the mirror is full: refused, whatever the address
        trickle(kept, HEADER_TIMEOUT + 2 * SLACK).join()
    finally:
        for t in tricklers:
            t.close()
    assert (len(kept), settled) == (TOTAL, TOTAL)
    assert max(cut_after(kept)) < HEADER_TIMEOUT + SLACK
    assert get_v2(mirror, "127.0.0.7") == 200  # and served once the tricklers are cut
    # Hundreds refused by now, reported at most once a minute.
    reports = [
        datetime.fromisoformat(line.split(" ")[0])
        for line in mirror.peer.output().splitlines()
        if "client connection(s) since the last report" in line
    ]
    assert reports
    assert all(b - a >= timedelta(seconds=59) for a, b in itertools.pairwise(reports))
    print(f"{len(tricklers)} tricklers from 4 addresses: {len(kept)} held, {settled} sockets")


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(mirror: Mirror) -> None:
    with socket.create_connection(("127.0.0.1", mirror.port)) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
        s.settimeout(IDLE_TIMEOUT + SLACK)
        answer = s.recv(65536)
        answered = time.monotonic()
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"0\r\n\r\n")
        assert s.recv(1) == b""  # closed by the mirror, not by our timeout
        idle = time.monotonic() - answered
    assert IDLE_TIMEOUT - 0.5 < idle < IDLE_TIMEOUT + SLACK
    print(f"idle keep-alive connection closed after {idle:.1f}s")


def test_a_slow_download_outlives_both_timeouts(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = registry_config("docker.io", upstream.url, "[cache]\nenabled = false")
    root = tmp_path_factory.mktemp("slow-client")
    mirror = start_mirror(root, require("twistd"), config, server=SERVER)
    try:
        layer = max(upstream.images["big"].blobs, key=lambda b: b.size)
        url = f"{mirror.url}/v2/library/big/blobs/{layer.digest}"
        hasher = hashlib.sha256()
        received = 0
        with urllib.request.urlopen(url, timeout=60) as response:
            for pause in (True, False):
                while chunk := response.read(MIB):
                    hasher.update(chunk)
                    received += len(chunk)
                    if pause:
                        # Longer than the header deadline and the idle timeout together.
                        time.sleep(HEADER_TIMEOUT + IDLE_TIMEOUT + 1)
                        break
        assert received == layer.size
        assert "sha256:" + hasher.hexdigest() == layer.digest
    finally:
        mirror.stop()
    assert_clean_log(mirror)
