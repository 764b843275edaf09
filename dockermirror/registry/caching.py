"""The caching Registry: wraps any Registry and a storage, and answers locally when it can.

- Blobs are served from storage with no upstream request at all.  A miss starts
  one :class:`~dockermirror.registry.fills.Fill`; every concurrent request for
  the blob streams from it at once.
- Manifests by digest are immutable and served from storage.  A tag is asked of
  the upstream with every manifest type, so what it means never depends on
  which client asked first; whether a client takes the stored type is decided
  here, and a client that does not is passed through without touching the tag.
- A tag's digest is trusted for ``tag_ttl``; then an upstream HEAD (free on
  Docker Hub) revalidates it, and only a changed digest costs a GET.
- When revalidation or a fetch fails (unreachable, timeout, 5xx, 429), a cached
  manifest is served stale, up to ``max_stale``.
- Every upstream fetch is shared by the requests that want the same thing at
  the same time (:class:`~dockermirror.coalesce.Coalescer`).
- Writes to storage happen in the background: no client waits for the index.

Content is keyed by upstream identity (URL and user, see :func:`upstream_key`):
what was pulled with credentials is never served to a route without them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IConsumer, IProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from dockermirror.coalesce import Coalescer
from dockermirror.config import CacheSettings, Registry
from dockermirror.errors import RegistryError
from dockermirror.reference import is_digest
from dockermirror.registry.fills import (
    DETACHED_FILLS,
    POLL_INTERVAL,
    DetachedSlots,
    Fill,
    FillView,
    RemoteFill,
)
from dockermirror.registry.mediatypes import ALL_MANIFESTS, OCTET_STREAM, acceptable
from dockermirror.registry.model import (
    BlobBody,
    BlobInfo,
    BlobSource,
    ByteRange,
    CacheOutcome,
    LocalFile,
    Manifest,
    RangeRequest,
    Referrers,
    TagPage,
)
from dockermirror.registry.model import Registry as RegistryInterface
from dockermirror.registry.quota import HubQuota
from dockermirror.registry.streams import FileStream
from dockermirror.routing import Target
from dockermirror.storage.interface import (
    BlobReader,
    BlobStorage,
    ForeignWrite,
    Scope,
    StoredManifest,
)
from dockermirror.storage.sharing import FillState

log = Logger()

# Failures of the upstream that a stale manifest may paper over.
_STALE_STATUSES = {429, 502, 503, 504}
_COUNTS = ("hit", "miss", "coalesced", "stale", "revalidated")
# How long an upstream's yes to a client's own account is trusted.
CONFIRMED_FOR = 60.0
_MAX_CONFIRMED = 10_000
# Memory for the hottest manifests (each at most a 64th of it).
HOT_MANIFEST_BYTES = 32 * 1024 * 1024
# HEAD resolutions waiting for their manifest; past this many, the oldest are forgotten.
_MAX_RESOLUTIONS = 10_000

HIT, MISS, COALESCED = CacheOutcome.HIT, CacheOutcome.MISS, CacheOutcome.COALESCED


def upstream_key(registry: Registry, account: tuple[str, str] | None = None) -> str:
    """The identity content is cached under: the registry's URL and the user it pulls as.

    For a registry whose credentials are passed through, the user is the client's.
    """
    if registry.passthrough:
        return f"{registry.url.to_text()}#passthrough:{account[0] if account else ''}"
    return f"{registry.url.to_text()}#{registry.username or ''}"


def scope_of(target: Target) -> Scope:
    return Scope(upstream_key(target.registry, target.account), target.name)


def _account_key(target: Target) -> str:
    """The client's account as far as sharing goes: its password counts, as a hash."""
    if target.account is None:
        return ""
    return hashlib.sha256("\0".join(target.account).encode()).hexdigest()


class CachingRegistry:
    def __init__(
        self,
        inner: RegistryInterface,
        storage: BlobStorage,
        clock: IReactorTime,
        settings: CacheSettings,
        idle_timeout: float,
        quotas: Mapping[str, HubQuota] | None = None,
    ) -> None:
        self._inner = inner
        self._quotas = quotas or {}
        self._storage = storage
        self._clock = clock
        self._settings = settings
        self._idle_timeout = idle_timeout
        self._fills: dict[tuple[str, str], Fill | RemoteFill] = {}
        self._detached = DetachedSlots(DETACHED_FILLS)
        # Accounts and repositories the upstream said a passed-through client may read.
        self._confirmed: dict[tuple[str, str, str], float] = {}
        # Tags a HEAD resolved to a manifest not stored yet, by scope and digest: bound when
        # a GET by that digest stores the manifest.
        self._resolved: dict[tuple[Scope, str], set[str]] = {}
        self._coalescer = Coalescer()
        # Manifests by scope and digest, most recently used last: hits without the index.
        self._hot: OrderedDict[tuple[Scope, str], StoredManifest] = OrderedDict()
        self._hot_bytes = 0
        self.stats: Counter[str] = Counter()
        self._logged_stats: dict[str, int] = {}

    # Manifests

    async def manifest(
        self, target: Target, reference: str, accept: Sequence[str], *, head: bool = False
    ) -> Manifest:
        await self._confirm(
            target, lambda: self._inner.manifest(target, reference, ALL_MANIFESTS, head=True)
        )
        if not await self._storage_open():
            return await self._inner.manifest(target, reference, accept, head=head)
        scope = scope_of(target)
        if is_digest(reference):
            stored = await self._stored_manifest(reference, scope)
            if stored is not None and acceptable(stored.media_type, accept):
                if not stored.linked:
                    # Stored from another repository: is it in this one?  One HEAD says.
                    await self._shared_manifest(target, reference, ALL_MANIFESTS, True)
                    self.link(reference, scope)
                return self._answer(stored, head, HIT)
            manifest = await self._shared_manifest(target, reference, accept, head)
            if manifest.body is not None:
                self._keep(scope, manifest, self._resolved.pop((scope, reference), set()))
            return self._count(manifest, MISS)
        entry = await self._storage.tag(scope, reference)
        stored = await self._stored_manifest(entry.digest, scope) if entry else None
        if entry is None or stored is None:
            return await self._resolve(target, reference, accept, head, None)
        if not acceptable(stored.media_type, accept):
            return await self._pass_through(target, reference, accept, head)
        age = self._clock.seconds() - entry.checked
        if age < self._settings.tag_ttl:
            return self._answer(stored, head, HIT)
        max_stale = self._settings.max_stale
        if self._holding(target) and (max_stale is None or age <= max_stale):
            # Docker Hub's quota is at its floor or spent: the cached tag stands in (logged
            # once, by the quota, rather than once per request).
            return self._answer(stored, head, CacheOutcome.STALE)
        try:
            current = await self._shared_manifest(target, reference, ALL_MANIFESTS, True)
        except RegistryError as error:
            return self._stale_or_raise(target, reference, stored, age, error, head)
        if current.digest != stored.digest:
            return await self._resolve(target, reference, accept, head, (stored, age))
        self._background(self._storage.set_tag(scope, reference, stored.digest))
        return self._answer(stored, head, CacheOutcome.REVALIDATED)

    async def _stored_manifest(self, digest: str, scope: Scope) -> StoredManifest | None:
        """A stored manifest, from memory when it is a hot one (no thread, no file, no hash)."""
        key = (scope, digest)
        hot = self._hot.get(key)
        if hot is not None:
            self._hot.move_to_end(key)
            return hot
        stored = await self._storage.manifest(digest, scope)
        # Only once shown under this repository (and re-hashed as it was read): immutable.
        if stored is not None and stored.linked and len(stored.body) <= HOT_MANIFEST_BYTES // 64:
            self._hot[key] = stored
            self._hot_bytes += len(stored.body)
            while self._hot_bytes > HOT_MANIFEST_BYTES:
                _, dropped = self._hot.popitem(last=False)
                self._hot_bytes -= len(dropped.body)
        return stored

    def _holding(self, target: Target) -> bool:
        quota = self._quotas.get(target.registry.name)
        return quota is not None and target.account is None and quota.holding()

    async def _resolve(
        self,
        target: Target,
        tag: str,
        accept: Sequence[str],
        head: bool,
        fallback: tuple[StoredManifest, float] | None,
    ) -> Manifest:
        """Ask the upstream what ``tag`` means, with every manifest type; keep it; answer."""
        scope = scope_of(target)
        if head and fallback is None:
            # containerd and Docker resolve a tag with HEAD, then GET by digest; a HEAD is
            # free on Docker Hub.  The tag is bound once its manifest is stored: now, or
            # when that GET stores it.
            manifest = await self._shared_manifest(target, tag, ALL_MANIFESTS, True)
            if manifest.digest and await self._storage.manifest(manifest.digest, scope):
                self._background(self._storage.set_tag(scope, tag, manifest.digest))
            elif manifest.digest:
                self._remember_resolution(scope, tag, manifest.digest)
        else:
            try:
                manifest = await self._shared_manifest(target, tag, ALL_MANIFESTS, False)
            except RegistryError as error:
                if fallback is None:
                    raise
                return self._stale_or_raise(target, tag, *fallback, error, head)
            self._keep(scope, manifest, [tag])
        if not acceptable(manifest.media_type, accept):
            return await self._pass_through(target, tag, accept, head)
        return self._count(_without_body(manifest) if head else manifest, MISS)

    async def _pass_through(
        self, target: Target, reference: str, accept: Sequence[str], head: bool
    ) -> Manifest:
        """The client's own request, as the upstream answers it; the tag keeps its meaning."""
        return self._count(await self._shared_manifest(target, reference, accept, head), MISS)

    def _shared_manifest(
        self, target: Target, reference: str, accept: Sequence[str], head: bool
    ) -> Deferred[Manifest]:
        # A client's own account shares its upstream answers with nobody else.
        scope, account = scope_of(target), _account_key(target)
        key = (scope.upstream, account, target.name, reference, head, tuple(accept))
        d, joined = self._coalescer.run(
            key, lambda: self._inner.manifest(target, reference, accept, head=head)
        )
        if joined:
            self.stats["coalesced"] += 1
        return d

    def _remember_resolution(self, scope: Scope, tag: str, digest: str) -> None:
        if (scope, digest) not in self._resolved and len(self._resolved) >= _MAX_RESOLUTIONS:
            del self._resolved[next(iter(self._resolved))]  # the oldest
        self._resolved.setdefault((scope, digest), set()).add(tag)

    def _keep(self, scope: Scope, manifest: Manifest, tags: Iterable[str] = ()) -> None:
        """Store a fetched manifest (and bind tags to it) in the background."""
        if manifest.body is None or not self._storage.writable():
            return

        def stored(done: bool) -> Deferred[Any] | None:
            self._evict_soon()
            if not done:  # never a tag that names a manifest not stored
                return None
            bindings = [self._storage.set_tag(scope, tag, manifest.digest) for tag in tags]
            return gatherResults(bindings) if bindings else None

        d = self._storage.put_manifest(manifest.digest, manifest.media_type, manifest.body, scope)
        self._background(d.addCallback(stored))

    def _stale_or_raise(
        self,
        target: Target,
        tag: str,
        stored: StoredManifest,
        age: float,
        error: RegistryError,
        head: bool,
    ) -> Manifest:
        not_found = error.status == 404
        usable = error.status in _STALE_STATUSES or (
            not_found and self._settings.stale_on_not_found
        )
        max_stale = self._settings.max_stale
        if not usable or (max_stale is not None and age > max_stale):
            if not_found:
                self._background(self._storage.drop_tag(scope_of(target), tag))
            raise error
        log.warn(
            "serving {name}:{tag} from cache, {age:.0f}s old: the upstream failed ({code})",
            name=target.label,
            tag=tag,
            age=age,
            code=error.status,
        )
        return self._answer(stored, head, CacheOutcome.STALE)

    def _answer(self, stored: StoredManifest, head: bool, outcome: CacheOutcome) -> Manifest:
        body = None if head else stored.body
        return self._count(
            Manifest(stored.digest, stored.media_type, len(stored.body), body), outcome
        )

    # Blobs

    async def blob(self, target: Target, digest: str) -> BlobSource:
        inner = await self._inner.blob(target, digest)
        await self._confirm(target, inner.stat)
        if not await self._storage_open():
            return inner
        scope = scope_of(target)
        entry = await self._storage.stored_blob(digest, scope)
        cold = _ColdBlob(self, inner, scope)
        if entry is None:
            return cold
        if not entry.linked:
            await cold.confirm()
        return _StoredBlob(self, cold, entry.size)

    async def _confirm(self, target: Target, ask: Callable[[], Awaitable[object]]) -> None:
        """A client's own account reads a repository from the cache once the upstream said so.

        One HEAD with the client's credentials, remembered briefly: the upstream,
        not the mirror, knows who may read a private repository (and the cache
        is shared by everyone with the same user name, whatever their password).
        """
        if not target.registry.passthrough or target.account is None:
            return
        key = (_account_key(target), target.registry.name, target.name)
        now = self._clock.seconds()
        if self._confirmed.get(key, float("-inf")) > now:
            return
        await ask()  # the upstream's refusal, as an OCI error
        if len(self._confirmed) >= _MAX_CONFIRMED:
            self._confirmed = {k: t for k, t in self._confirmed.items() if t > now}
        self._confirmed[key] = now + CONFIRMED_FOR

    async def tags(self, target: Target, n: str | None, last: str | None) -> TagPage:
        return await self._inner.tags(target, n, last)

    async def referrers(self, target: Target, digest: str, artifact_type: str | None) -> Referrers:
        return await self._inner.referrers(target, digest, artifact_type)

    def running_fill(self, scope: Scope, digest: str) -> Fill | RemoteFill | None:
        """A fill of ``digest`` for the scope's upstream identity, from any repository."""
        fill = self._fills.get((scope.upstream, digest))
        return None if fill is None or fill.state == Fill.FAILED else fill

    def start_fill(
        self, scope: Scope, source: BlobSource
    ) -> tuple[Deferred[Fill | RemoteFill | _Unstored], bool]:
        """The fill of ``source``'s blob, started once for all concurrent callers.

        An :class:`_Unstored` body when the blob cannot be cached (no length, no
        room, storage failing); and whether this caller joined a start under way.
        """
        return self._coalescer.run(
            ("blob", scope.upstream, source.digest), lambda: self._start_fill(scope, source)
        )

    async def _start_fill(self, scope: Scope, source: BlobSource) -> Fill | RemoteFill | _Unstored:
        try:
            foreign = self._storage.claim(source.digest, scope)
        except OSError:
            return self._unstored(await source.open(None))  # the storage is failing
        if foreign is not None:
            remote = await self._follow(foreign, source.digest, scope)
            if remote is not None:
                return remote
            # The other worker gave up before it began: this one tries.
            return await self._start_fill(scope, source)
        try:
            body = await source.open(None)
        except BaseException:
            self._storage.release_claim(source.digest, scope)
            raise
        size = body.length
        if body.range is not None or size is None or not self._storage.has_room(size):
            self._storage.release_claim(source.digest, scope)
            return self._unstored(body)
        try:
            writer = self._storage.begin_write(source.digest, size, scope)
        except OSError:
            return self._unstored(body)
        fill = Fill(
            writer,
            source.digest,
            scope,
            size,
            self._settings.detached_fill_max,
            self._clock,
            self._detached,
        )
        self._fills[(scope.upstream, source.digest)] = fill
        fill.when_ended(self._fill_ended)
        fill.start(body.stream)
        return fill

    async def _follow(self, foreign: ForeignWrite, digest: str, scope: Scope) -> RemoteFill | None:
        """Another worker's download of the blob, once it knows the size; None if it gave up."""
        deadline = self._clock.seconds() + self._idle_timeout
        while (size := foreign.size()) is None:
            if foreign.progress()[1] is not FillState.RUNNING or self._clock.seconds() > deadline:
                foreign.close()
                return None
            await deferLater(self._clock, POLL_INTERVAL, lambda: None)
        # Its repository is not known here: readers for this one confirm it with the upstream.
        remote = RemoteFill(foreign, digest, Scope(scope.upstream, ""), size, self._clock)
        if remote.state == RemoteFill.FAILED:
            return None
        self._fills[(scope.upstream, digest)] = remote
        remote.when_ended(self._fill_ended)
        return remote

    def _unstored(self, body: BlobBody) -> _Unstored:
        unstored = _Unstored(body)
        # The callers waiting for it resume in this turn of the reactor; if none took it
        # (they all left), its upstream connection must not stay open.
        self._clock.callLater(0, unstored.drop)
        return unstored

    def link(self, digest: str, scope: Scope) -> None:
        self._background(self._storage.link(digest, scope))

    def _fill_ended(self, fill: Fill | RemoteFill) -> None:
        self._fills.pop((fill.scope.upstream, fill.digest), None)
        if fill.state == Fill.COMPLETE:
            self._evict_soon()

    def file_stream(
        self, reader: BlobReader, byte_range: ByteRange, fill: FillView | None
    ) -> FileStream:
        return FileStream(reader, byte_range, fill, self._clock, self._idle_timeout)

    async def _storage_open(self) -> bool:
        """Whether the storage can be used; a request that comes while it opens waits for it."""
        if not self._storage.is_open:
            await self._storage.when_open()
        return self._storage.is_open

    # Housekeeping

    @property
    def storage(self) -> BlobStorage:
        return self._storage

    @property
    def fills_in_flight(self) -> int:
        return len(self._fills)

    def _evict_soon(self) -> None:
        """Eviction runs off the request path, in a later turn of the reactor."""
        if self._storage.total > self._storage.max_size:
            self._clock.callLater(0, self.evict)

    def evict(self) -> Deferred[int]:
        return self._storage.evict(busy={digest for _, digest in self._fills})

    def count(self, outcome: CacheOutcome) -> CacheOutcome:
        self.stats[outcome.value.lower()] += 1
        return outcome

    def _count(self, manifest: Manifest, outcome: CacheOutcome) -> Manifest:
        return manifest.with_outcome(self.count(outcome))

    def _background(self, d: Deferred[Any]) -> None:
        d.addErrback(lambda f: log.failure("cache housekeeping failed", f))

    def log_stats(self) -> None:
        """Log the counts since start, when they changed since the last time."""
        counts = {name: self.stats[name] for name in _COUNTS}
        counts.update(evicted=self._storage.evicted, total=self._storage.total)
        if counts == self._logged_stats:
            return
        self._logged_stats = counts
        log.info(
            "cache since start: {hit} hits, {miss} misses, {coalesced} coalesced, {stale} stale,"
            " {revalidated} revalidated, {evicted} evicted; {total} bytes stored",
            **counts,
        )


class _ColdBlob:
    """A blob not in storage: a HEAD goes upstream, a GET fills the cache (or joins a fill)."""

    def __init__(self, cache: CachingRegistry, inner: BlobSource, scope: Scope) -> None:
        self.digest = inner.digest
        self._cache = cache
        self._inner = inner
        self._scope = scope

    async def confirm(self) -> None:
        """Make sure the upstream has the blob under this repository (one HEAD); link it."""
        await self._inner.stat()
        self._cache.link(self.digest, self._scope)

    async def stat(self) -> BlobInfo:
        fill = self._cache.running_fill(self._scope, self.digest)
        if fill is not None and fill.scope == self._scope:
            return BlobInfo(self.digest, fill.size, OCTET_STREAM, self._cache.count(COALESCED))
        info = await self._inner.stat()
        return attrs.evolve(info, outcome=self._cache.count(MISS))

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        outcome = COALESCED
        fill = self._cache.running_fill(self._scope, self.digest)
        if fill is None and self._cache.storage.writable():
            d, joined = self._cache.start_fill(self._scope, self._inner)
            started = await d
            if isinstance(started, _Unstored):
                # Not cacheable: the body already asked for serves the first client that
                # wants it whole; anyone else asks the upstream for what they want.
                body = started.take() if wanted is None else None
                if body is not None:
                    return self._missed(body)
            else:
                fill, outcome = started, COALESCED if joined else MISS
        if fill is not None and fill.scope != self._scope:
            await self.confirm()  # a download for another repository of the same upstream
        if fill is not None and fill.state != Fill.FAILED:
            try:
                return self._from_fill(fill, wanted, outcome)
            except OSError:
                pass  # the fill's file is gone (storing it failed): ask the upstream
        return self._missed(await self._inner.open(wanted))

    def _missed(self, body: BlobBody) -> BlobBody:
        return attrs.evolve(body, info=attrs.evolve(body.info, outcome=self._cache.count(MISS)))

    def _from_fill(
        self, fill: Fill | RemoteFill, wanted: RangeRequest | None, outcome: CacheOutcome
    ) -> BlobBody:
        byte_range = wanted.resolve(fill.size) if wanted else None
        whole = byte_range or ByteRange(0, fill.size - 1)
        stream = self._cache.file_stream(fill.reader(), whole, fill)
        info = BlobInfo(self.digest, fill.size, OCTET_STREAM, self._cache.count(outcome))
        return BlobBody(info, byte_range, stream)

    def local_file(self) -> LocalFile | None:
        return None

    def direct_url(self) -> str | None:
        return None


class _StoredBlob:
    """A blob in storage: described and read with no upstream request at all."""

    def __init__(self, cache: CachingRegistry, cold: _ColdBlob, size: int) -> None:
        self.digest = cold.digest
        self._cache = cache
        self._cold = cold
        self._size = size

    async def stat(self) -> BlobInfo:
        return BlobInfo(self.digest, self._size, OCTET_STREAM, self._cache.count(HIT))

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        byte_range = wanted.resolve(self._size) if wanted else None
        whole = byte_range or ByteRange(0, self._size - 1)
        try:
            reader = await self._cache.storage.open_blob(self.digest)
        except OSError:
            return await self._cold.open(wanted)  # removed since the lookup: fetch it again
        self._cache.storage.touch(self.digest)
        info = BlobInfo(self.digest, self._size, OCTET_STREAM, self._cache.count(HIT))
        return BlobBody(info, byte_range, self._cache.file_stream(reader, whole, None))

    def local_file(self) -> LocalFile | None:
        path = self._cache.storage.local_path(self.digest)
        return None if path is None else LocalFile(path, 0, self._size)

    def direct_url(self) -> str | None:
        return None


class _Unstored:
    """An opened upstream body the cache could not keep: one caller may take it."""

    def __init__(self, body: BlobBody) -> None:
        self._body: BlobBody | None = body

    def take(self) -> BlobBody | None:
        body, self._body = self._body, None
        return body

    def drop(self) -> None:
        body = self.take()
        if body is not None:
            _close_unread(body)


@implementer(IConsumer)
class _Discard:
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


def _close_unread(body: BlobBody) -> None:
    """Drop a body that will not be read (and with it, its upstream connection)."""
    d = body.stream.deliver(_Discard())
    d.addErrback(lambda _: None)
    d.cancel()


def _without_body(manifest: Manifest) -> Manifest:
    return attrs.evolve(manifest, body=None)
