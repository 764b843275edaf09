"""Cache behaviours that a deliberate break of the code once left unguarded, in memory.

- A revalidated tag is trusted for another ``tag_ttl``.
- Eviction leaves alone a blob that a slow client is reading, and one being filled.
- A fill whose upstream goes silent ends after ``idle_timeout``, leaving nothing behind.
- ``detached_fill_max`` decides whether a fill goes on when its only client leaves mid-body.
- An upstream 404 for a cached tag past its TTL drops the tag.

Slow and leaving clients are connections of their own to the mirror's Site
(:class:`RawClient`): a transport with a small window pauses the mirror as a
full socket buffer does, and a client that leaves drops its connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.server import Request

from dockermirror.reference import digest_of
from dockermirror.registry import fills
from dockermirror.registry.caching import upstream_key
from dockermirror.storage.interface import Scope
from tests.fakes import (
    WITH_PRIVATE,
    FakeRegistry,
    Harness,
    HeldBlob,
    blob_handler,
    json_error,
    result_of,
)

SIZE = 256 * 1024  # four of the FileStream's 64 KiB chunks
OCI = "application/vnd.oci.image.manifest.v1+json"
TAG_PATH = "/v2/library/redis/manifests/7"


def blob(fill: int) -> bytes:
    data = bytes((fill + i) % 256 for i in range(256)) * (SIZE // 256)
    assert len(data) == SIZE
    return data


@pytest.fixture(autouse=True)
def wake_readers_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test blobs are smaller than the wake-up batch; wake readers on every write."""
    monkeypatch.setattr(fills, "NOTIFY_EVERY", 1)


@pytest.fixture
def cached(tmp_path: Path) -> Callable[..., Harness]:
    def make(registry: FakeRegistry, toml: dict[str, Any] | None = None, **cache: Any) -> Harness:
        return Harness(
            registry, {**(toml or {}), "cache": {"dir": str(tmp_path / "cache"), **cache}}
        )

    return make


def running_fill(
    harness: Harness, registry: str, digest: str
) -> fills.Fill | fills.RemoteFill | None:
    scope = Scope(upstream_key(harness.config.registries[registry]), "library/redis")
    return harness.caching().running_fill(scope, digest)


def temp_files(harness: Harness) -> list[Path]:
    return list((Path(harness.config.cache.dir) / "tmp").iterdir())


def outcome(response: Any) -> str:
    return str(response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0])


def get(harness: Harness, path: str) -> tuple[Any, bytes]:
    # A client that names no manifest type takes schema1 only, and is passed through.
    response = harness.request("GET", path, headers={"Accept": [OCI]})
    return response, harness.body(response)


class _Window(StringTransport):
    """A client socket that takes ``window`` bytes, then pauses its producer until read."""

    def __init__(self, window: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.window = window
        self.stalled = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) >= self.window and not self.stalled and self.producer is not None:
            self.stalled = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        if self.stalled and self.producer is not None:
            self.stalled = False
            self.producer.resumeProducing()
        return data


class RawClient:
    """One HTTP/1.1 GET on a connection of its own to the mirror's Site, read when told to."""

    def __init__(self, harness: Harness, path: str, window: int = 1) -> None:
        self._harness = harness
        self.transport = _Window(window)
        self.channel = harness.site.buildProtocol(self.transport.getPeer())
        assert self.channel is not None
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: mirror.test\r\n\r\n".encode())
        self._received = b""
        harness.settle()

    def read(self) -> None:
        """Take what the mirror has sent so far, letting it send (one window) more."""
        self._received += self.transport.take()
        self._harness.settle()

    def read_all(self) -> None:
        """Read until the mirror sends nothing more."""
        while self.transport.value():
            self.read()

    def leave(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone("the client left")))
        self._harness.settle()

    @property
    def status(self) -> int:
        return int(self._head().split(b" ", 2)[1])

    @property
    def headers(self) -> dict[str, str]:
        lines = self._head().decode("latin-1").split("\r\n")[1:]
        return {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)
        }

    @property
    def body(self) -> bytes:
        return self._received.partition(b"\r\n\r\n")[2]

    @property
    def complete(self) -> bool:
        return len(self.body) == int(self.headers["content-length"])

    def _head(self) -> bytes:
        head, separator, _ = self._received.partition(b"\r\n\r\n")
        assert separator, f"no response head yet: {self._received[:200]!r}"
        return head


# 1. Revalidation


class Manifests:
    """An upstream tag ``library/redis:7`` that can start failing."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.body = json.dumps({"schemaVersion": 2, "mediaType": OCI}).encode()
        self.failure: tuple[int, str] | None = None
        registry.handlers[TAG_PATH] = self.handle

    def handle(self, request: Request) -> bytes:
        if self.failure is not None:
            return json_error(request, *self.failure)
        request.setHeader(b"content-type", OCI.encode())
        request.setHeader(b"docker-content-digest", digest_of(self.body).encode())
        return self.body


def test_a_revalidated_tag_is_trusted_for_another_ttl(
    cached: Callable[..., Harness], observe_errors: list[object]
) -> None:
    registry = FakeRegistry()
    manifests = Manifests(registry)
    harness = cached(registry, tag_ttl=60)
    response, _ = get(harness, "/v2/redis/manifests/7")
    assert outcome(response) == "MISS"
    harness.clock.advance(61)
    response, body = get(harness, "/v2/redis/manifests/7")
    assert (outcome(response), body) == ("REVALIDATED", manifests.body)
    before = len(registry.requests)
    # 100 s after the first fetch, 39 s after the revalidation: the tag is fresh again.
    harness.clock.advance(39)
    for method in ("GET", "HEAD"):
        response = harness.request(method, "/v2/redis/manifests/7", headers={"Accept": [OCI]})
        assert (response.code, outcome(response)) == (200, "HIT"), method
    assert len(registry.requests) == before
    scope = Scope(upstream_key(harness.config.registries["docker.io"]), "library/redis")
    entry = result_of(harness.storage().tag(scope, "7"))
    assert entry is not None and entry.checked == 61


# 2. Eviction


def test_eviction_spares_a_blob_a_slow_client_is_reading(
    cached: Callable[..., Harness], observe_errors: list[object]
) -> None:
    registry = FakeRegistry()
    old, new = blob(1), blob(2)
    for data in (old, new):
        registry.handlers[f"/v2/library/redis/blobs/{digest_of(data)}"] = blob_handler(data)
    # Room for one and a half blobs: the second pushes the cache over max_size.
    harness = cached(registry, max_size=SIZE * 3 // 2, min_free=1)
    store = harness.storage()
    old_path = f"/v2/redis/blobs/{digest_of(old)}"
    get(harness, old_path)
    harness.clock.advance(1)
    slow = RawClient(harness, old_path)
    slow.read()  # the first chunk; then the client stops reading
    assert (slow.status, slow.headers["x-dockermirror-cache"]) == (200, "HIT")
    assert 0 < len(slow.body) < SIZE
    harness.clock.advance(1)
    get(harness, f"/v2/redis/blobs/{digest_of(new)}")
    harness.clock.advance(0)  # eviction runs in a later turn of the reactor
    assert store.evicted == 1
    assert store.total <= store.max_size
    # The least recently used blob is the one being read: the other one went instead.
    assert store.path(digest_of(old)).exists()
    assert not store.path(digest_of(new)).exists()
    slow.read_all()
    assert slow.complete and slow.body == old
    response, body = get(harness, old_path)
    assert (outcome(response), body) == ("HIT", old)


def test_eviction_spares_a_blob_being_filled(
    cached: Callable[..., Harness], observe_errors: list[object]
) -> None:
    """A blob one identity stored is filled for another; eviction must not take it meanwhile.

    The fill's only client has left, and the fill goes on (smaller than
    detached_fill_max), so no reader holds the blob: only the fill does.
    """
    registry = FakeRegistry()
    data, other = blob(1), blob(2)
    digest = digest_of(data)
    registry.handlers[f"/v2/library/redis/blobs/{digest}"] = blob_handler(data)
    registry.handlers[f"/v2/library/redis/blobs/{digest_of(other)}"] = blob_handler(other)
    upstream = HeldBlob(registry, f"/v2/private/app/blobs/{digest}", data, SIZE // 2)
    toml = {"registries": WITH_PRIVATE}
    harness = cached(registry, toml, max_size=SIZE * 3 // 2, min_free=1)
    store = harness.storage()
    anonymous, private = (
        f"/v2/redis/blobs/{digest}",
        f"/v2/private.test/private/app/blobs/{digest}",
    )
    get(harness, anonymous)
    harness.clock.advance(1)
    client = RawClient(harness, private)
    client.read()
    assert (client.status, client.headers["x-dockermirror-cache"]) == (200, "MISS")
    client.leave()
    assert running_fill(harness, "private.test", digest) is not None  # it goes on
    harness.clock.advance(1)
    get(harness, f"/v2/redis/blobs/{digest_of(other)}")
    harness.clock.advance(0)
    assert store.evicted == 1
    assert store.path(digest).exists()  # the least recently used, but being filled
    assert not store.path(digest_of(other)).exists()
    assert len(temp_files(harness)) == 1
    upstream.release()
    harness.settle()
    assert temp_files(harness) == []
    before = len(registry.requests)
    for path in (anonymous, private):
        response, body = get(harness, path)
        assert (outcome(response), body) == ("HIT", data), path
    assert len(registry.requests) == before


# 3. The fill's idle timeout


def test_a_fill_whose_upstream_goes_silent_ends_after_idle_timeout(
    cached: Callable[..., Harness],
) -> None:
    registry = FakeRegistry()
    data = blob(3)
    path = f"/v2/library/redis/blobs/{digest_of(data)}"
    upstream = HeldBlob(registry, path, data, SIZE // 2)
    harness = cached(registry, {"upstream": {"idle_timeout": 10}})
    store = harness.storage()
    pending = [harness.client.get(f"http://mirror.test/v2/redis/blobs/{digest_of(data)}")]
    harness.settle()
    pending.append(harness.client.get(f"http://mirror.test/v2/redis/blobs/{digest_of(data)}"))
    harness.settle()
    assert registry.paths("GET") == [path]  # one download, two readers
    harness.clock.advance(9)
    harness.settle()
    assert len(temp_files(harness)) == 1 and upstream.closed == []
    harness.clock.advance(2)
    harness.settle()
    for d in pending:
        with pytest.raises((ResponseFailed, ResponseNeverReceived)):
            harness.body(result_of(d))
    assert len(upstream.closed) == 1  # the upstream connection was dropped
    assert temp_files(harness) == []
    assert not store.path(digest_of(data)).exists()
    assert running_fill(harness, "docker.io", digest_of(data)) is None
    registry.handlers[path] = blob_handler(data)
    response, body = get(harness, f"/v2/redis/blobs/{digest_of(data)}")
    assert (response.code, outcome(response), body) == (200, "MISS", data)
    assert registry.paths("GET") == [path, path]


# 4. detached_fill_max when the only client leaves mid-download


def left_by_its_client(
    cached: Callable[..., Harness], detached_fill_max: int
) -> tuple[Harness, HeldBlob, bytes]:
    """A fill whose only client read part of the body and left; the upstream is held."""
    registry = FakeRegistry()
    data = blob(4)
    upstream = HeldBlob(registry, f"/v2/library/redis/blobs/{digest_of(data)}", data, SIZE // 2)
    harness = cached(registry, detached_fill_max=detached_fill_max)
    client = RawClient(harness, f"/v2/redis/blobs/{digest_of(data)}")
    client.read()
    assert (client.status, client.headers["x-dockermirror-cache"]) == (200, "MISS")
    assert 0 < len(client.body) < SIZE
    harness.clock.advance(1)  # the fill's own check at its start finds the client there
    assert running_fill(harness, "docker.io", digest_of(data)) is not None
    client.leave()
    harness.clock.advance(0)
    harness.settle()
    return harness, upstream, data


def test_a_fill_larger_than_detached_fill_max_stops_when_its_client_leaves(
    cached: Callable[..., Harness],
) -> None:
    harness, upstream, data = left_by_its_client(cached, SIZE - 1)
    assert running_fill(harness, "docker.io", digest_of(data)) is None
    assert len(upstream.closed) == 1  # the upstream download was stopped
    assert temp_files(harness) == []
    assert not harness.storage().path(digest_of(data)).exists()
    path = f"/v2/library/redis/blobs/{digest_of(data)}"
    harness.registry.handlers[path] = blob_handler(data)
    response, body = get(harness, f"/v2/redis/blobs/{digest_of(data)}")
    assert (outcome(response), body) == ("MISS", data)  # a fresh download
    assert harness.registry.paths("GET") == [path, path]


def test_a_fill_within_detached_fill_max_goes_on_when_its_client_leaves(
    cached: Callable[..., Harness], observe_errors: list[object]
) -> None:
    harness, upstream, data = left_by_its_client(cached, SIZE)
    assert running_fill(harness, "docker.io", digest_of(data)) is not None
    assert upstream.closed == []  # the download goes on
    assert len(temp_files(harness)) == 1
    upstream.release()
    harness.settle()
    assert temp_files(harness) == []
    assert harness.storage().path(digest_of(data)).read_bytes() == data
    before = len(harness.registry.requests)
    response, body = get(harness, f"/v2/redis/blobs/{digest_of(data)}")
    assert (outcome(response), body) == ("HIT", data)
    assert len(harness.registry.requests) == before


# 5. A 404 drops the tag


def test_an_upstream_404_for_a_cached_tag_drops_it(cached: Callable[..., Harness]) -> None:
    registry = FakeRegistry()
    manifests = Manifests(registry)
    harness = cached(registry, tag_ttl=60, stale_on_not_found=False)
    scope = Scope(upstream_key(harness.config.registries["docker.io"]), "library/redis")
    get(harness, "/v2/redis/manifests/7")
    assert result_of(harness.storage().tag(scope, "7")) is not None
    manifests.failure = (404, "MANIFEST_UNKNOWN")
    harness.clock.advance(61)
    response = harness.request("GET", "/v2/redis/manifests/7", headers={"Accept": [OCI]})
    assert harness.error(response) == (
        404,
        "MANIFEST_UNKNOWN",
    )
    assert result_of(harness.storage().tag(scope, "7")) is None
    # The tag is back upstream: the mirror asks for it afresh (a GET), not a revalidation.
    manifests.failure = None
    before = len(registry.paths("GET"))
    response, body = get(harness, "/v2/redis/manifests/7")
    assert (response.code, outcome(response), body) == (200, "MISS", manifests.body)
    assert registry.paths("GET")[before:] == [TAG_PATH]


def test_fills_with_no_client_left_are_bounded_in_number(
    cached: Callable[..., Harness],
) -> None:
    """A client that asks for many blobs and hangs up cannot leave a download behind for each."""
    registry = FakeRegistry()
    blobs = [blob(n) for n in range(fills.DETACHED_FILLS + 3)]
    upstreams = [
        HeldBlob(registry, f"/v2/library/redis/blobs/{digest_of(data)}", data, SIZE // 2)
        for data in blobs
    ]
    harness = cached(registry)
    for data in blobs:
        client = RawClient(harness, f"/v2/redis/blobs/{digest_of(data)}")
        client.read()
        client.leave()
        harness.settle()
    going_on = [u for u in upstreams if not u.closed]
    assert len(going_on) == fills.DETACHED_FILLS
    # Once one ends, its place is free for the next.
    going_on[0].release()
    harness.settle()
    extra = blob(200)
    upstream = HeldBlob(registry, f"/v2/library/redis/blobs/{digest_of(extra)}", extra, SIZE // 2)
    client = RawClient(harness, f"/v2/redis/blobs/{digest_of(extra)}")
    client.read()
    client.leave()
    harness.settle()
    assert upstream.closed == []
