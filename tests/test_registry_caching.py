"""The caching Registry on its own: no HTTP, a fake upstream Registry, storage on a fake clock.

What a tag means never depends on which client asked first; blobs come back as
sources that describe themselves, open for ranges, and say where they lie.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from hyperlink import DecodedURL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.task import Clock
from zope.interface import implementer

from dockermirror.config import CacheSettings, Registry
from dockermirror.errors import MANIFEST_UNKNOWN, RegistryError
from dockermirror.reference import digest_of
from dockermirror.registry.caching import CachingRegistry
from dockermirror.registry.mediatypes import (
    ALL_MANIFESTS,
    DOCKER_LIST,
    DOCKER_SCHEMA2,
    OCI_INDEX,
    acceptable,
)
from dockermirror.registry.model import (
    BlobBody,
    BlobInfo,
    CacheOutcome,
    LocalFile,
    Manifest,
    RangeNotSatisfiable,
    RangeRequest,
    Referrers,
    TagPage,
)
from dockermirror.routing import Target
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.interface import Scope
from dockermirror.storage.workers import InlineWorker
from tests.fakes import result_of

T = TypeVar("T")

AMD64 = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_SCHEMA2, "arch": "amd64"}).encode()
ARM64 = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_SCHEMA2, "arch": "arm64"}).encode()
LIST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"digest": digest_of(AMD64)}, {"digest": digest_of(ARM64)}],
    }
).encode()
BLOB = bytes(range(256)) * 64
TARGET = Target(
    Registry("docker.io", DecodedURL.from_text("http://upstream.test")),
    "library/multiarch",
    "multiarch",
)


@implementer(IConsumer)
class Collect:
    """A consumer that keeps what it is given."""

    def __init__(self) -> None:
        self.data = b""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data += data


class BytesStream:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)


class FakeBlob:
    def __init__(self, upstream: FakeUpstream, digest: str) -> None:
        self.digest = digest
        self._upstream = upstream

    async def stat(self) -> BlobInfo:
        self._upstream.calls.append(("stat", self.digest))
        return BlobInfo(self.digest, len(self._upstream.blobs[self.digest]), "a/b")

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        self._upstream.calls.append(("open", self.digest))
        data = self._upstream.blobs[self.digest]
        return BlobBody(BlobInfo(self.digest, len(data), "a/b"), None, BytesStream(data))

    def local_file(self) -> LocalFile | None:
        return None

    def direct_url(self) -> str | None:
        return None


class FakeUpstream:
    """A Registry with one multi-arch tag; it answers single-manifest clients as distribution
    does, with the amd64 manifest, and records every call."""

    def __init__(self) -> None:
        self.manifests = {digest_of(m): m for m in (AMD64, ARM64, LIST)}
        self.types = {digest_of(AMD64): DOCKER_SCHEMA2, digest_of(ARM64): DOCKER_SCHEMA2}
        self.types[digest_of(LIST)] = DOCKER_LIST
        self.tag_digests = {"latest": digest_of(LIST)}
        self.blobs = {digest_of(BLOB): BLOB}
        self.calls: list[tuple[Any, ...]] = []
        self.failure: RegistryError | None = None

    async def manifest(
        self, target: Target, reference: str, accept: Sequence[str], *, head: bool = False
    ) -> Manifest:
        self.calls.append(("manifest", reference, tuple(accept), head))
        if self.failure is not None:
            raise self.failure
        digest = self.tag_digests.get(reference, reference)
        if digest not in self.manifests:
            raise RegistryError(MANIFEST_UNKNOWN)
        if not acceptable(self.types[digest], accept) and self.types[digest] == DOCKER_LIST:
            digest = digest_of(AMD64)
        body = self.manifests[digest]
        return Manifest(digest, self.types[digest], len(body), None if head else body)

    async def blob(self, target: Target, digest: str) -> FakeBlob:
        return FakeBlob(self, digest)

    async def tags(self, target: Target, n: str | None, last: str | None) -> TagPage:
        return TagPage(target.name, tuple(self.tag_digests))

    async def referrers(self, target: Target, digest: str, artifact_type: str | None) -> Referrers:
        return Referrers(OCI_INDEX, b"{}")


@attrs.define
class Cache:
    registry: CachingRegistry
    upstream: FakeUpstream
    storage: FilesystemStorage
    clock: Clock


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    clock = Clock()
    upstream = FakeUpstream()
    storage = FilesystemStorage(
        tmp_path, clock, 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    storage.open()
    settings = CacheSettings(dir=str(tmp_path), tag_ttl=60)
    return Cache(
        CachingRegistry(upstream, storage, clock, settings, 60.0), upstream, storage, clock
    )


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    result: T = result_of(Deferred.fromCoroutine(coroutine))
    return result


def manifest(cache: Cache, accept: Sequence[str], reference: str = "latest") -> Manifest:
    return run(cache.registry.manifest(TARGET, reference, accept))


SINGLE = [DOCKER_SCHEMA2]
LISTS = [f"{DOCKER_LIST}, {OCI_INDEX}"]


def test_a_single_platform_client_does_not_change_what_a_tag_means(cache: Cache) -> None:
    first = manifest(cache, SINGLE)
    assert (first.body, first.outcome) == (AMD64, CacheOutcome.MISS)
    # The tag was asked for with every type, then the client's own request passed through.
    assert cache.upstream.calls == [
        ("manifest", "latest", ALL_MANIFESTS, False),
        ("manifest", "latest", tuple(SINGLE), False),
    ]
    second = manifest(cache, LISTS)
    assert (second.body, second.media_type, second.outcome) == (
        LIST,
        DOCKER_LIST,
        CacheOutcome.HIT,
    )
    assert len(cache.upstream.calls) == 2
    # And again: a single-platform client is passed through; the tag still means the list.
    assert manifest(cache, SINGLE).body == AMD64
    assert manifest(cache, LISTS).body == LIST


def test_a_client_without_accept_takes_only_schema1_and_is_passed_through(cache: Cache) -> None:
    # Distribution takes a client without Accept for one that knows schema1 only: the tag
    # (a list) is not for it, so its own request goes upstream, every time.
    for _ in range(2):
        answer = manifest(cache, [])
        assert (answer.body, answer.outcome) == (AMD64, CacheOutcome.MISS)
        assert cache.upstream.calls[-1] == ("manifest", "latest", (), False)
    assert cache.upstream.calls[0] == ("manifest", "latest", ALL_MANIFESTS, False)
    assert len(cache.upstream.calls) == 3
    # So does curl's */*, which names no type.  The tag still means the list.
    assert manifest(cache, ["*/*"]).body == AMD64
    assert manifest(cache, LISTS).outcome == CacheOutcome.HIT


def test_head_resolution_binds_the_tag_when_its_manifest_is_stored(cache: Cache) -> None:
    head = run(cache.registry.manifest(TARGET, "latest", LISTS, head=True))
    assert (head.digest, head.body, head.outcome) == (digest_of(LIST), None, CacheOutcome.MISS)
    assert cache.upstream.calls == [("manifest", "latest", ALL_MANIFESTS, True)]
    by_digest = manifest(cache, LISTS, digest_of(LIST))
    assert (by_digest.body, by_digest.outcome) == (LIST, CacheOutcome.MISS)
    calls = len(cache.upstream.calls)
    again = run(cache.registry.manifest(TARGET, "latest", LISTS, head=True))
    assert (again.digest, again.outcome, again.size) == (
        digest_of(LIST),
        CacheOutcome.HIT,
        len(LIST),
    )
    assert len(cache.upstream.calls) == calls


def test_revalidation_asks_with_every_type_and_stale_is_an_outcome(cache: Cache) -> None:
    manifest(cache, LISTS)
    cache.clock.advance(61)
    assert manifest(cache, LISTS).outcome is CacheOutcome.REVALIDATED
    assert cache.upstream.calls[-1] == ("manifest", "latest", ALL_MANIFESTS, True)
    cache.clock.advance(61)
    cache.upstream.failure = RegistryError(MANIFEST_UNKNOWN, status=503)
    stale = manifest(cache, LISTS)
    assert (stale.body, stale.outcome) == (LIST, CacheOutcome.STALE)


def test_blob_sources_describe_themselves_and_say_where_they_lie(cache: Cache) -> None:
    digest = digest_of(BLOB)
    cold = run(cache.registry.blob(TARGET, digest))
    assert cold.local_file() is None
    body = run(cold.open(None))
    assert (body.info.outcome, body.info.size, body.range) == (CacheOutcome.MISS, len(BLOB), None)
    received = Collect()
    result_of(body.stream.deliver(received))
    assert received.data == BLOB
    stored = run(cache.registry.blob(TARGET, digest))
    info = run(stored.stat())
    assert (info.size, info.outcome) == (len(BLOB), CacheOutcome.HIT)
    local = stored.local_file()
    assert local is not None and (local.offset, local.size) == (0, len(BLOB))
    assert Path(local.path).read_bytes() == BLOB
    part = run(stored.open(RangeRequest(suffix=10)))
    assert part.range is not None and (part.range.first, part.length) == (len(BLOB) - 10, 10)
    received = Collect()
    result_of(part.stream.deliver(received))
    assert received.data == BLOB[-10:]
    with pytest.raises(RangeNotSatisfiable) as unsatisfiable:
        run(stored.open(RangeRequest(first=len(BLOB))))
    assert unsatisfiable.value.size == len(BLOB)
    assert cache.upstream.calls == [("open", digest)]


def test_every_tag_a_head_resolved_is_bound_when_the_manifest_is_stored(cache: Cache) -> None:
    cache.upstream.tag_digests["stable"] = digest_of(LIST)
    for tag in ("latest", "stable"):
        run(cache.registry.manifest(TARGET, tag, LISTS, head=True))
    manifest(cache, LISTS, digest_of(LIST))
    calls = len(cache.upstream.calls)
    for tag in ("latest", "stable"):
        again = run(cache.registry.manifest(TARGET, tag, LISTS, head=True))
        assert (again.digest, again.outcome) == (digest_of(LIST), CacheOutcome.HIT), tag
    assert len(cache.upstream.calls) == calls


def test_hot_manifests_are_answered_from_memory(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once read from storage (and re-hashed), a manifest's hits need neither index nor file."""
    manifest(cache, LISTS)  # stored
    reads: list[str] = []
    real = cache.storage.manifest

    def counted(digest: str, scope: Scope) -> Any:
        reads.append(digest)
        return real(digest, scope)

    monkeypatch.setattr(cache.storage, "manifest", counted)
    for _ in range(3):
        assert manifest(cache, LISTS).outcome is CacheOutcome.HIT
        hit = manifest(cache, LISTS, digest_of(LIST))
        assert (hit.body, hit.outcome) == (LIST, CacheOutcome.HIT)
    assert reads == [digest_of(LIST)]
