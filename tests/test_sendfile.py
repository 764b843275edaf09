"""Cached blobs leave through os.sendfile on plain TCP connections, byte-exact.

In process, with the real reactor and real sockets: the mirror's Site listens
on loopback, its upstream is in memory.  Big enough (8 MiB) that the socket
fills and the send resumes when it drains; ranges start mid-file.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from dockermirror.reference import digest_of
from dockermirror.registry.streams import CHUNK
from tests.fakes import FakeRegistry, Harness, blob_handler

BLOB = os.urandom(8 * 1024 * 1024)
DIGEST = digest_of(BLOB)


def by_sendfile(calls: list[int], length: int) -> bool:
    """All the bytes but the first chunk, which goes with the response head."""
    return length - CHUNK <= sum(calls) <= length


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[Harness, str]]:
    registry = FakeRegistry()
    registry.handlers[f"/v2/library/redis/blobs/{DIGEST}"] = blob_handler(BLOB)
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    # Cached first, in memory (no socket there, so no sendfile either).
    response = harness.request("GET", f"/v2/redis/blobs/{DIGEST}")
    assert harness.body(response) == BLOB
    port: Any = reactor.listenTCP(0, harness.site, interface="127.0.0.1")  # type: ignore[arg-type]
    yield harness, f"http://127.0.0.1:{port.getHost().port}/v2/redis/blobs/{DIGEST}"
    port.stopListening()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        cache = response.headers["x-dockermirror-cache"]
        return response.status, cache, response.read()


@pytest_twisted.ensureDeferred
async def test_a_cached_blob_goes_out_by_sendfile(
    listening: tuple[Harness, str], sendfile_calls: list[int]
) -> None:
    _, url = listening
    status, cache, body = await deferToThread(fetch, url)
    assert (status, cache) == (200, "HIT")
    assert body == BLOB
    # In several calls: the socket filled and drained.
    assert by_sendfile(sendfile_calls, len(BLOB)) and len(sendfile_calls) > 1


@pytest_twisted.ensureDeferred
async def test_ranges_start_where_asked(
    listening: tuple[Harness, str], sendfile_calls: list[int]
) -> None:
    _, url = listening
    first = 3 * 1024 * 1024 + 17
    status, _, body = await deferToThread(fetch, url, {"Range": f"bytes={first}-"})
    assert (status, body) == (206, BLOB[first:])
    status, _, body = await deferToThread(fetch, url, {"Range": "bytes=5-9"})
    assert (status, body) == (206, BLOB[5:10])
    assert by_sendfile(sendfile_calls, len(BLOB) - first)


@pytest_twisted.ensureDeferred
async def test_keep_alive_requests_follow_a_sendfile_answer(
    listening: tuple[Harness, str], sendfile_calls: list[int]
) -> None:
    """The next answer on the connection comes after every byte of the blob, never among them."""
    _, url = listening

    def two_on_one_connection() -> list[bytes]:
        import http.client

        host, _, rest = url.removeprefix("http://").partition("/")
        connection = http.client.HTTPConnection(host, timeout=30)
        bodies = []
        for _ in range(2):
            connection.request("GET", "/" + rest)
            bodies.append(connection.getresponse().read())
        connection.close()
        return bodies

    assert await deferToThread(two_on_one_connection) == [BLOB, BLOB]
    assert 2 * len(BLOB) - 2 * CHUNK <= sum(sendfile_calls) <= 2 * len(BLOB)
