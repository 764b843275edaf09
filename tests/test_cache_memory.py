"""The cache in memory: hits with no upstream request, shared fills, revalidation, staleness."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.reference import digest_of
from dockermirror.registry import fills
from dockermirror.storage.interface import Scope
from tests.fakes import (
    WITH_PRIVATE,
    FakeRegistry,
    Harness,
    blob_handler,
    json_error,
    result_of,
    watch,
)

BLOB = bytes(range(256)) * 400  # 100 KiB
DIGEST = digest_of(BLOB)
BLOB_PATH = f"/v2/library/redis/blobs/{DIGEST}"
OCI = "application/vnd.oci.image.manifest.v1+json"
# What a client names; one that names no type takes schema1 only, and is passed through.
CLIENT = {"Accept": [OCI]}


def manifest_body(version: int) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI, "annotations": {"v": str(version)}}
    ).encode()


class Manifests:
    """An upstream tag whose manifest can change."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.body = manifest_body(1)
        self.failure: tuple[int, str] | None = None
        registry.handlers["/v2/library/redis/manifests/7"] = self.handle

    def serve_by_digest(self, registry: FakeRegistry) -> str:
        """Also answer for the current body by its digest; return that digest."""
        digest = digest_of(self.body)
        registry.handlers[f"/v2/library/redis/manifests/{digest}"] = self.handle
        return digest

    def handle(self, request: Request) -> bytes:
        if self.failure is not None:
            return json_error(request, *self.failure)
        request.setHeader(b"content-type", OCI.encode())
        request.setHeader(b"docker-content-digest", digest_of(self.body).encode())
        return self.body


@pytest.fixture(autouse=True)
def wake_readers_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test blobs are smaller than the wake-up batch; wake readers on every write."""
    monkeypatch.setattr(fills, "NOTIFY_EVERY", 1)


@pytest.fixture
def registry() -> FakeRegistry:
    registry = FakeRegistry()
    registry.handlers[BLOB_PATH] = blob_handler(BLOB)
    return registry


@pytest.fixture
def cached(tmp_path: Path) -> Callable[..., Harness]:
    def make(registry: FakeRegistry, **cache: Any) -> Harness:
        toml: dict[str, Any] = {"cache": {"dir": str(tmp_path / "cache"), **cache}}
        return Harness(registry, toml)

    return make


def outcome(response: Any) -> str:
    return str(response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0])


def get(harness: Harness, path: str, **kwargs: Any) -> tuple[Any, bytes]:
    kwargs.setdefault("headers", CLIENT)
    response = harness.request("GET", path, **kwargs)
    return response, harness.body(response)


def test_second_blob_pull_makes_no_upstream_request(
    registry: FakeRegistry, cached: Callable[..., Harness], observe_errors: list[object]
) -> None:
    harness = cached(registry)
    first, body = get(harness, "/v2/redis/blobs/" + DIGEST)
    assert (first.code, outcome(first), body) == (200, "MISS", BLOB)
    before = len(registry.requests)
    second, body = get(harness, "/v2/redis/blobs/" + DIGEST)
    assert (second.code, outcome(second), body) == (200, "HIT", BLOB)
    assert second.length == len(BLOB)
    assert second.headers.getRawHeaders("docker-content-digest") == [DIGEST]
    assert len(registry.requests) == before
    assert harness.caching().stats["hit"] == 1


def test_cached_blob_head_ranges_and_416(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    harness = cached(registry)
    get(harness, BLOB_PATH)
    before = len(registry.requests)
    head = harness.request("HEAD", BLOB_PATH)
    assert head.code == 200
    assert head.headers.getRawHeaders("content-length") == [str(len(BLOB))]
    cases = {
        "bytes=10-19": (206, BLOB[10:20], f"bytes 10-19/{len(BLOB)}"),
        "bytes=-5": (206, BLOB[-5:], f"bytes {len(BLOB) - 5}-{len(BLOB) - 1}/{len(BLOB)}"),
        f"bytes={len(BLOB) - 3}-": (
            206,
            BLOB[-3:],
            f"bytes {len(BLOB) - 3}-{len(BLOB) - 1}/{len(BLOB)}",
        ),
        "bytes=0-99999999": (206, BLOB, f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"),
        "bytes=0-1,5-6": (200, BLOB, None),  # several ranges: the whole blob
    }
    for header, (status, data, content_range) in cases.items():
        response, body = get(harness, BLOB_PATH, headers={"Range": header})
        assert (response.code, body) == (status, data), header
        assert response.headers.getRawHeaders("content-range", [None])[0] == content_range
    response, body = get(harness, BLOB_PATH, headers={"Range": f"bytes={len(BLOB)}-"})
    assert response.code == 416
    assert response.headers.getRawHeaders("content-range") == [f"bytes */{len(BLOB)}"]
    assert len(registry.requests) == before


class SlowBlob:
    """Sends the blob up to ``split``, and the rest (and the end) when told to."""

    def __init__(self, registry: FakeRegistry, data: bytes = BLOB) -> None:
        self.request: Request | None = None
        self.data = data
        registry.handlers[BLOB_PATH] = self.handle

    def handle(self, request: Request) -> int:
        request.setHeader(b"content-length", str(len(self.data)).encode())
        request.write(self.data[: len(self.data) // 2])
        self.request = request
        return NOT_DONE_YET

    def release(self) -> None:
        assert self.request is not None
        self.request.write(self.data[len(self.data) // 2 :])
        self.request.finish()


def test_concurrent_misses_share_one_upstream_download(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    upstream = SlowBlob(registry)
    harness = cached(registry)
    pending = [harness.client.get("http://mirror.test" + BLOB_PATH) for _ in range(5)]
    early = harness.client.get(
        "http://mirror.test" + BLOB_PATH, headers={"Range": "bytes=100-199"}
    )
    late = harness.client.get("http://mirror.test" + BLOB_PATH, headers={"Range": "bytes=-100"})
    late_results = watch(late)
    harness.settle()
    # The early range is served from the growing file before the download ends.
    assert harness.body(early.result) == BLOB[100:200]
    assert late_results == []
    upstream.release()
    harness.settle()
    responses = [d.result for d in pending]
    assert [harness.body(r) for r in responses] == [BLOB] * 5
    assert sorted(outcome(r) for r in responses) == ["COALESCED"] * 4 + ["MISS"]
    assert harness.body(late.result) == BLOB[-100:]
    assert registry.paths("GET").count(BLOB_PATH) == 1


def test_clients_of_a_corrupt_fill_never_see_a_complete_blob(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    """Readers get every byte of a fill but the last, until the digest check passes.

    Here it fails: with a Content-Length, a client that had received every byte
    would take the blob as complete before the abort reached it.
    """
    upstream = SlowBlob(registry, BLOB[:-1] + b"\x00")
    harness = cached(registry)
    pending = [harness.client.get("http://mirror.test" + BLOB_PATH) for _ in range(3)]
    harness.settle()
    bodies = [watch(d.result.content()) for d in pending]
    upstream.release()
    harness.settle()
    for body in bodies:
        assert len(body) == 1 and isinstance(body[0], Failure)
        assert body[0].check(ResponseFailed)
    assert not harness.storage().path(DIGEST).exists()


def test_corrupt_upstream_blob_is_never_stored(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    registry.handlers[BLOB_PATH] = blob_handler(BLOB[:-1] + b"\x00")
    harness = cached(registry)
    for _ in range(2):
        with pytest.raises((ResponseFailed, ResponseNeverReceived)):
            get(harness, BLOB_PATH)
    assert registry.paths("GET").count(BLOB_PATH) >= 2  # nothing was kept to answer the second
    store_dir = Path(harness.config.cache.dir)
    assert not any((store_dir / "blobs").rglob("*"))
    assert not any((store_dir / "tmp").iterdir())


def test_content_pulled_with_credentials_stays_with_them(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    registry.handlers["/v2/private/app/blobs/" + DIGEST] = blob_handler(BLOB)
    toml = {
        "registries": WITH_PRIVATE,
        "cache": {"dir": str(tmp_path / "cache")},
    }
    harness = Harness(registry, toml)
    get(harness, f"/v2/private.test/private/app/blobs/{DIGEST}")
    response, _ = get(harness, f"/v2/private/app/blobs/{DIGEST}")
    assert outcome(response) == "MISS"  # the anonymous route asked the upstream itself
    response, _ = get(harness, f"/v2/private.test/private/app/blobs/{DIGEST}")
    assert outcome(response) == "HIT"


def test_tag_is_trusted_for_its_ttl_then_revalidated_with_head(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    manifests = Manifests(registry)
    harness = cached(registry, tag_ttl=60)
    for expected in ("MISS", "HIT"):
        response, body = get(harness, "/v2/redis/manifests/7")
        assert (outcome(response), body) == (expected, manifests.body)
    assert registry.paths() == ["/v2/library/redis/manifests/7"]
    harness.clock.advance(61)
    response, body = get(harness, "/v2/redis/manifests/7")
    assert (outcome(response), body) == ("REVALIDATED", manifests.body)
    assert registry.paths("HEAD") == ["/v2/library/redis/manifests/7"]
    assert len(registry.paths("GET")) == 1
    # The tag moves: the next revalidation sees a new digest and fetches it.
    manifests.body = manifest_body(2)
    harness.clock.advance(61)
    response, body = get(harness, "/v2/redis/manifests/7")
    assert (outcome(response), body) == ("MISS", manifests.body)
    assert response.headers.getRawHeaders("docker-content-digest") == [digest_of(manifests.body)]
    assert len(registry.paths("GET")) == 2
    # A HEAD from a client is answered from the cache too.
    head = harness.request("HEAD", "/v2/redis/manifests/7", headers=CLIENT)
    assert (head.code, outcome(head)) == (200, "HIT")
    assert head.headers.getRawHeaders("content-length") == [str(len(manifests.body))]


def test_manifest_by_digest_is_immutable(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    manifests = Manifests(registry)
    digest = manifests.serve_by_digest(registry)
    harness = cached(registry)
    get(harness, f"/v2/redis/manifests/{digest}")
    harness.clock.advance(10**6)
    response, body = get(harness, f"/v2/redis/manifests/{digest}")
    assert (outcome(response), body) == ("HIT", manifests.body)
    assert len(registry.paths()) == 1


def test_manifest_a_client_does_not_accept_is_not_served_from_cache(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    Manifests(registry)
    harness = cached(registry)
    get(harness, "/v2/redis/manifests/7")
    response, _ = get(
        harness, "/v2/redis/manifests/7", headers={"Accept": "application/vnd.other+json"}
    )
    assert outcome(response) == "MISS"
    response, _ = get(
        harness, "/v2/redis/manifests/7", headers={"Accept": f"text/plain, {OCI}; q=0.5"}
    )
    assert outcome(response) == "HIT"


@pytest.mark.parametrize(
    "failure", [(503, "UNAVAILABLE"), (500, "UNKNOWN"), (429, "TOOMANYREQUESTS")]
)
def test_stale_manifest_is_served_when_the_upstream_fails(
    registry: FakeRegistry, cached: Callable[..., Harness], failure: tuple[int, str]
) -> None:
    manifests = Manifests(registry)
    harness = cached(registry, tag_ttl=60)
    get(harness, "/v2/redis/manifests/7")
    manifests.failure = failure
    harness.clock.advance(61)
    response, body = get(harness, "/v2/redis/manifests/7")
    assert (response.code, outcome(response), body) == (200, "STALE", manifests.body)
    assert response.headers.getRawHeaders("warning") == ['110 - "Response is Stale"']
    assert harness.caching().stats["stale"] == 1


def test_staleness_is_bounded_by_max_stale(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    manifests = Manifests(registry)
    harness = cached(registry, tag_ttl=60, max_stale=100)
    get(harness, "/v2/redis/manifests/7")
    manifests.failure = (503, "UNAVAILABLE")
    harness.clock.advance(90)
    assert outcome(harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT)) == "STALE"
    harness.clock.advance(20)
    assert harness.error(harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT)) == (
        502,
        "UNAVAILABLE",
    )


@pytest.mark.parametrize(("stale_on_not_found", "expected"), [(False, 404), (True, 200)])
def test_upstream_404_for_a_cached_tag(
    registry: FakeRegistry, cached: Callable[..., Harness], stale_on_not_found: bool, expected: int
) -> None:
    manifests = Manifests(registry)
    harness = cached(registry, tag_ttl=60, stale_on_not_found=stale_on_not_found)
    get(harness, "/v2/redis/manifests/7")
    manifests.failure = (404, "MANIFEST_UNKNOWN")
    harness.clock.advance(61)
    response, _ = get(harness, "/v2/redis/manifests/7")
    assert response.code == expected


def test_cache_survives_a_restart_and_crash_leftovers_are_removed(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    Manifests(registry)
    harness = cached(registry)
    get(harness, BLOB_PATH)
    get(harness, "/v2/redis/manifests/7")
    assert harness.cache is not None
    harness.cache.stopService()
    store_dir = Path(harness.config.cache.dir)
    # What a SIGKILL can leave: a partial download, and a blob renamed but not indexed.
    (store_dir / "tmp" / "partial").write_bytes(BLOB[:100])
    orphan = store_dir / "blobs" / "sha256" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    before = len(registry.requests)
    again = cached(registry)
    assert not (store_dir / "tmp" / "partial").exists()
    assert not orphan.exists()
    response, body = get(again, BLOB_PATH)
    assert (outcome(response), body) == ("HIT", BLOB)
    response, _ = get(again, "/v2/redis/manifests/7")
    assert outcome(response) == "HIT"
    assert len(registry.requests) == before


def test_least_recently_used_blobs_are_evicted(cached: Callable[..., Harness]) -> None:
    registry = FakeRegistry()
    blobs = {}
    for i in range(5):
        data = bytes([i]) * len(BLOB)
        blobs[digest_of(data)] = data
        registry.handlers[f"/v2/library/redis/blobs/{digest_of(data)}"] = blob_handler(data)
    harness = cached(registry, max_size=3 * len(BLOB) + 10, min_free=1)
    order = list(blobs)
    for digest in order[:3]:
        get(harness, f"/v2/redis/blobs/{digest}")
        harness.clock.advance(1)
    get(harness, f"/v2/redis/blobs/{order[0]}")  # the first is used again: it stays
    harness.clock.advance(1)
    for digest in order[3:]:
        get(harness, f"/v2/redis/blobs/{digest}")
        harness.clock.advance(1)  # eviction runs in a later turn, off the request path
    store = harness.storage()
    assert store.total <= 3 * len(BLOB) + 10
    kept = {d for d in blobs if store.path(d).exists()}
    assert order[0] in kept and order[4] in kept
    assert order[1] not in kept and order[2] not in kept
    assert store.evicted >= 2
    response, body = get(harness, f"/v2/redis/blobs/{order[1]}")
    assert (outcome(response), body) == ("MISS", blobs[order[1]])


def test_unwritable_cache_directory_streams_through(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    harness = Harness(registry, {"cache": {"dir": str(blocker / "cache")}})
    for _ in range(2):
        response, body = get(harness, BLOB_PATH)
        assert (response.code, body) == (200, BLOB)
    assert registry.paths("GET").count(BLOB_PATH) == 2


def test_full_disk_streams_through(registry: FakeRegistry, cached: Callable[..., Harness]) -> None:
    harness = cached(registry, min_free="1000TiB")
    response, body = get(harness, BLOB_PATH)
    assert (response.code, outcome(response), body) == (200, "MISS", BLOB)
    assert not harness.storage().path(DIGEST).exists()


def test_write_failure_mid_fill_streams_that_pull_through_then_the_next(
    registry: FakeRegistry, cached: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = SlowBlob(registry)
    harness = cached(registry)
    store = harness.storage()
    real_begin_write = store.begin_write

    def disk_fills_up(digest: str, size: int, scope: Scope) -> Any:
        writer = real_begin_write(digest, size, scope)
        file = writer._file
        real_write = file.write

        def write(data: bytes) -> int:
            if file.tell() > 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(data)

        monkeypatch.setattr(file, "write", write)
        return writer

    monkeypatch.setattr(store, "begin_write", disk_fills_up)
    d = harness.client.get("http://mirror.test" + BLOB_PATH)
    harness.settle()
    upstream.release()
    harness.settle()
    # The disk filled mid-fill: the client still gets every byte, from the upstream.
    assert harness.body(result_of(d)) == BLOB
    assert not store.writable()
    registry.handlers[BLOB_PATH] = blob_handler(BLOB)
    response, body = get(harness, BLOB_PATH)
    assert (response.code, body) == (200, BLOB)
    assert not any((Path(harness.config.cache.dir) / "tmp").iterdir())


def test_blob_missing_from_disk_is_fetched_again(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    harness = cached(registry)
    get(harness, BLOB_PATH)
    harness.storage().path(DIGEST).unlink()
    response, body = get(harness, BLOB_PATH)
    assert (response.code, outcome(response), body) == (200, "MISS", BLOB)
    assert harness.storage().total == len(BLOB)


def test_a_tag_resolved_by_head_is_remembered_from_the_first_pull(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    """Docker's and containerd's way: HEAD the tag, GET by digest; then the tag is a hit."""
    manifests = Manifests(registry)
    digest = manifests.serve_by_digest(registry)
    harness = cached(registry, tag_ttl=60)
    assert outcome(harness.request("HEAD", "/v2/redis/manifests/7", headers=CLIENT)) == "MISS"
    get(harness, f"/v2/redis/manifests/{digest}")
    assert registry.paths("GET") == [f"/v2/library/redis/manifests/{digest}"]  # no GET by tag
    before = len(registry.requests)
    head = harness.request("HEAD", "/v2/redis/manifests/7", headers=CLIENT)
    assert (outcome(head), head.headers.getRawHeaders("docker-content-digest")) == (
        "HIT",
        [digest],
    )
    assert len(registry.requests) == before
    # And served stale when the upstream is down, from the first pull on.
    manifests.failure = (503, "UNAVAILABLE")
    harness.clock.advance(61)
    assert outcome(harness.request("HEAD", "/v2/redis/manifests/7", headers=CLIENT)) == "STALE"


def nothing_stored(harness: Harness) -> bool:
    store_dir = Path(harness.config.cache.dir)
    return not any((store_dir / "tmp").iterdir()) and not harness.storage().path(DIGEST).exists()


def test_a_fill_nobody_reads_stops_at_detached_fill_max(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    """The only client asked for a range past the end: no reader ever joins the fill."""
    SlowBlob(registry)
    harness = cached(registry, detached_fill_max=1000)
    response = harness.request("GET", BLOB_PATH, headers={"Range": f"bytes={len(BLOB)}-"})
    assert response.code == 416
    harness.clock.advance(0)
    harness.settle()
    assert nothing_stored(harness)


def test_a_client_that_leaves_before_the_upstream_answers_leaves_no_fill(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    held: list[Request] = []

    def hold(request: Request) -> int:
        held.append(request)
        return NOT_DONE_YET

    registry.handlers[BLOB_PATH] = hold
    harness = cached(registry, detached_fill_max=1000)
    d = harness.client.get("http://mirror.test" + BLOB_PATH)
    harness.settle()
    d.addErrback(lambda _: None)
    d.cancel()  # the client goes away while the mirror waits for the upstream's headers
    harness.settle()
    (request,) = held
    request.setHeader(b"content-length", str(len(BLOB)).encode())
    request.write(BLOB[:1000])
    harness.settle()
    harness.clock.advance(0)
    harness.settle()
    assert nothing_stored(harness)


def test_a_slow_fill_keeps_its_readers(
    registry: FakeRegistry, cached: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Less than a wake-up batch per idle timeout still counts as progress for readers."""
    monkeypatch.setattr(fills, "NOTIFY_EVERY", 512 * 1024)
    upstream = SlowBlob(registry)
    harness = cached(registry)  # idle_timeout: 60 s, the default
    d = harness.client.get("http://mirror.test" + BLOB_PATH)
    harness.settle()
    assert upstream.request is not None
    half, step = len(BLOB) // 2, 4096
    for offset in range(half, len(BLOB), step):
        harness.clock.advance(20)  # three steps per idle timeout
        upstream.request.write(BLOB[offset : offset + step])
        harness.settle()
    # The last write completed the Content-Length: the body is whole.
    assert harness.body(result_of(d)) == BLOB


def test_a_blob_that_cannot_be_cached_costs_one_upstream_get(
    registry: FakeRegistry, cached: Callable[..., Harness]
) -> None:
    def chunked(request: Request) -> int:  # no Content-Length: nothing to size a fill by
        request.write(BLOB[:1000])
        request.write(BLOB[1000:])
        request.finish()
        return NOT_DONE_YET

    registry.handlers[BLOB_PATH] = chunked
    harness = cached(registry)
    response, body = get(harness, BLOB_PATH)
    assert (response.code, outcome(response), body) == (200, "MISS", BLOB)
    assert registry.paths("GET").count(BLOB_PATH) == 1
    # A range asks the upstream itself (this one ignores ranges); the whole body the
    # attempted fill opened is dropped.
    response, body = get(harness, BLOB_PATH, headers={"Range": "bytes=0-9"})
    assert (response.code, body) == (200, BLOB)
    assert registry.paths("GET").count(BLOB_PATH) == 3


def test_the_cache_summary_is_logged_when_it_changes(
    registry: FakeRegistry, cached: Callable[..., Harness], log_events: list[dict[str, object]]
) -> None:
    harness = cached(registry)

    def summaries() -> list[dict[str, object]]:
        return [e for e in log_events if "cache since start" in str(e.get("log_format"))]

    get(harness, BLOB_PATH)
    harness.clock.advance(61)
    assert [(e["miss"], e["hit"]) for e in summaries()] == [(1, 0)]
    harness.clock.advance(61)  # nothing happened: nothing to say
    assert len(summaries()) == 1
    get(harness, BLOB_PATH)
    harness.clock.advance(61)
    assert [(e["miss"], e["hit"]) for e in summaries()] == [(1, 0), (1, 1)]
