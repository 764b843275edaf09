"""The caching pull path: answer from the local store when it can, else fetch once and keep.

- Blobs are served from disk with no upstream request at all.  A miss starts
  one :class:`~dockermirror.fills.Fill`; every concurrent request for the blob
  streams from it at once.
- Manifests by digest are immutable and served from disk.  A tag's digest is
  trusted for ``tag_ttl``; then an upstream HEAD (free on Docker Hub)
  revalidates it, and only a changed digest costs a GET.
- When revalidation or a fetch fails (unreachable, timeout, 5xx, 429), a
  cached manifest is served stale, up to ``max_stale``.
- Every upstream fetch is shared by the requests that want the same thing at
  the same time (:class:`~dockermirror.coalesce.Coalescer`).

Content is keyed by upstream identity (URL and user, see
:func:`upstream_key`): what was pulled with credentials is never served to a
route without them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.coalesce import Coalescer
from dockermirror.config import CacheSettings, Registry, UpstreamSettings
from dockermirror.errors import UNAVAILABLE, RegistryError, render_error
from dockermirror.fills import ByteRange, FileStream, Fill, Unsatisfiable, parse_range
from dockermirror.pull import Manifest, Puller, respond_manifest
from dockermirror.reference import is_digest
from dockermirror.routing import Target
from dockermirror.site import note_cache
from dockermirror.storage import BlobStorage, StoredManifest
from dockermirror.streaming import discard
from dockermirror.upstream import UpstreamClient

log = Logger()

CACHE_HEADER = b"x-dockermirror-cache"
# Failures of the upstream that a stale manifest may paper over.
_STALE_STATUSES = {429, 502, 503, 504}


def upstream_key(registry: Registry) -> str:
    """The identity content is cached under: the registry's URL and the user it pulls as."""
    return f"{registry.url.to_text()}#{registry.username or ''}"


class CachingPuller(Puller):
    def __init__(
        self,
        clients: Mapping[str, UpstreamClient],
        clock: IReactorTime,
        settings: UpstreamSettings,
        store: BlobStorage,
        cache: CacheSettings,
    ) -> None:
        super().__init__(clients, clock, settings)
        self._store = store
        self._cache = cache
        self._fills: dict[tuple[str, str], Fill] = {}
        self._coalescer = Coalescer()
        self.stats: Counter[str] = Counter()

    # Manifests

    async def manifest(self, request: Request, target: Target, reference: str) -> bytes:
        if not self._store.is_open:
            return await super().manifest(request, target, reference)
        accept = request.requestHeaders.getRawHeaders(b"accept", [])
        key = upstream_key(target.registry)
        if is_digest(reference):
            stored = self._store.manifest(reference, key)
            if stored is not None and _acceptable(stored.media_type, accept):
                return self._answer(request, stored, "HIT")
            return await self._fetch_manifest(request, target, reference, accept, None)
        entry = self._store.tag(key, target.name, reference)
        stored = self._store.manifest(entry.digest, key) if entry else None
        if entry is None or stored is None or not _acceptable(stored.media_type, accept):
            if request.method == b"HEAD":
                return await self._head_miss(request, target, reference, accept)
            return await self._fetch_manifest(request, target, reference, accept, None)
        age = self._clock.seconds() - entry.checked
        if age < self._cache.tag_ttl:
            return self._answer(request, stored, "HIT")
        try:
            head = await self._shared_manifest(target, reference, b"HEAD", accept)
        except RegistryError as error:
            return self._stale_or_raise(request, target, reference, stored, age, error)
        if head.digest == stored.digest:
            self._store.set_tag(key, target.name, reference, stored.digest)
            return self._answer(request, stored, "REVALIDATED")
        return await self._fetch_manifest(request, target, reference, accept, (stored, age))

    async def _fetch_manifest(
        self,
        request: Request,
        target: Target,
        reference: str,
        accept: Sequence[bytes],
        fallback: tuple[StoredManifest, float] | None,
    ) -> bytes:
        try:
            manifest = await self._shared_manifest(target, reference, b"GET", accept)
        except RegistryError as error:
            if fallback is None:
                raise
            return self._stale_or_raise(request, target, reference, *fallback, error)
        assert manifest.body is not None
        key = upstream_key(target.registry)
        if self._store.writable():
            try:
                self._store.put_manifest(manifest.digest, manifest.media_type, manifest.body, key)
                if not is_digest(reference):
                    self._store.set_tag(key, target.name, reference, manifest.digest)
            except OSError as e:
                self._store.report_write_failure(e)
            self._evict_soon()
        self._count(request, "MISS")
        return respond_manifest(request, manifest)

    async def _head_miss(
        self, request: Request, target: Target, reference: str, accept: Sequence[bytes]
    ) -> bytes:
        """Pass a HEAD on (free on Docker Hub); remember the tag if its manifest is stored.

        containerd resolves tags with HEAD only, then GETs by digest: from its
        second pull on, the tag is known, served locally, and served stale when
        the upstream is down.
        """
        manifest = await self._shared_manifest(target, reference, b"HEAD", accept)
        key = upstream_key(target.registry)
        if manifest.digest and self._store.manifest(manifest.digest, key) is not None:
            self._store.set_tag(key, target.name, reference, manifest.digest)
        self._count(request, "MISS")
        return respond_manifest(request, manifest)

    def _shared_manifest(
        self, target: Target, reference: str, method: bytes, accept: Sequence[bytes]
    ) -> Deferred[Manifest]:
        key = (upstream_key(target.registry), target.name, reference, method, tuple(accept))
        d, joined = self._coalescer.run(
            key, lambda: self.fetch_manifest(target, reference, method, accept)
        )
        if joined:
            self.stats["coalesced"] += 1
        return d

    def _stale_or_raise(
        self,
        request: Request,
        target: Target,
        reference: str,
        stored: StoredManifest,
        age: float,
        error: RegistryError,
    ) -> bytes:
        not_found = error.status == 404
        usable = error.status in _STALE_STATUSES or (not_found and self._cache.stale_on_not_found)
        if not usable or (self._cache.max_stale is not None and age > self._cache.max_stale):
            if not_found:
                self._store.drop_tag(upstream_key(target.registry), target.name, reference)
            raise error
        log.warn(
            "serving {name}:{reference} from cache, {age:.0f}s old: the upstream failed ({code})",
            name=target.label,
            reference=reference,
            age=age,
            code=error.status,
        )
        request.responseHeaders.setRawHeaders(b"warning", [b'110 - "Response is Stale"'])
        return self._answer(request, stored, "STALE")

    def _answer(self, request: Request, stored: StoredManifest, outcome: str) -> bytes:
        self._count(request, outcome)
        manifest = Manifest(stored.digest, stored.media_type, len(stored.body), stored.body)
        return respond_manifest(request, manifest)

    # Blobs

    async def blob(self, request: Request, target: Target, digest: str) -> IResource:
        if not self._store.is_open:
            return await super().blob(request, target, digest)
        key = upstream_key(target.registry)
        size = self._store.blob_size(digest, key)
        if size is not None:
            self._count(request, "HIT")
            self._store.touch(digest)
            return self._serve(digest, size, None)
        fill = self._fills.get((key, digest))
        if fill is None and (request.method == b"HEAD" or not self._store.writable()):
            self._count(request, "MISS")
            return await super().blob(request, target, digest)
        if fill is None:
            d, joined = self._coalescer.run(
                ("blob", key, digest), lambda: self._start_fill(target, digest, key)
            )
            fill = await d
            # None: the blob cannot be cached (no room, no length); or its fill failed already.
            if fill is None or fill.state == Fill.FAILED:
                self._count(request, "MISS")
                return await super().blob(request, target, digest)
            self._count(request, "COALESCED" if joined else "MISS")
        else:
            self._count(request, "COALESCED")
        return self._serve(digest, fill.size, fill)

    async def _start_fill(self, target: Target, digest: str, key: str) -> Fill | None:
        response = await self.fetch_blob(target, digest, b"GET", [])
        size = response.length
        if response.code != 200 or size is UNKNOWN_LENGTH or not self._store.has_room(size):
            discard(response)
            return None
        try:
            fill = Fill(
                self._store,
                digest,
                key,
                size,
                self._clock,
                self._settings.idle_timeout,
                self._cache.detached_fill_max,
            )
        except OSError as e:
            self._store.report_write_failure(e)
            discard(response)
            return None
        self._fills[(key, digest)] = fill
        fill.when_ended(self._fill_ended)
        fill.start(response)
        return fill

    def _fill_ended(self, fill: Fill) -> None:
        self._fills.pop((fill.upstream, fill.digest), None)
        if fill.state == Fill.COMPLETE:
            self._evict_soon()

    def _serve(self, digest: str, size: int, fill: Fill | None) -> IResource:
        return _CachedBlob(self, digest, size, fill)

    def open_stream(
        self, request: Request, digest: str, byte_range: ByteRange, fill: Fill | None
    ) -> FileStream:
        """A stream of a stored blob, or of the file a fill is writing."""
        path = self._store.path(digest)
        if fill is not None and fill.state != Fill.COMPLETE:
            path = fill.temp

        def closed() -> None:
            self._store.readers[digest] -= 1

        stream = FileStream(
            request, path, byte_range, fill, self._clock, self._settings.idle_timeout, closed
        )
        self._store.readers[digest] += 1  # only once the file is open: closed() will undo it
        return stream

    # Housekeeping

    def _evict_soon(self) -> None:
        """Eviction runs off the request path, in a later turn of the reactor."""
        if self._store.total > self._store.max_size:
            self._clock.callLater(0, self.evict)

    def evict(self) -> None:
        self._store.evict(busy={digest for _, digest in self._fills})

    def _count(self, request: Request, outcome: str) -> None:
        self.stats[outcome.lower()] += 1
        request.responseHeaders.setRawHeaders(CACHE_HEADER, [outcome.encode()])
        note_cache(request, outcome)

    def log_stats(self) -> None:
        log.info(
            "cache: {hit} hits, {miss} misses, {coalesced} coalesced, {stale} stale,"
            " {revalidated} revalidated, {evicted} evicted; {total} bytes stored",
            hit=self.stats["hit"],
            miss=self.stats["miss"],
            coalesced=self.stats["coalesced"],
            stale=self.stats["stale"],
            revalidated=self.stats["revalidated"],
            evicted=self._store.evicted,
            total=self._store.total,
        )


class _CachedBlob(Resource):
    """A blob answered from the store or a running fill: HEAD, Range and 416 from local data."""

    isLeaf = True

    def __init__(self, puller: CachingPuller, digest: str, size: int, fill: Fill | None) -> None:
        super().__init__()
        self._puller = puller
        self._digest = digest
        self._size = size
        self._fill = fill

    def render(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", self._digest.encode())
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", f'"{self._digest}"'.encode())
        try:
            byte_range = parse_range(request.getHeader(b"range"), self._size)
        except Unsatisfiable:
            request.setResponseCode(416)
            request.setHeader(b"content-range", f"bytes */{self._size}".encode())
            return b""
        if byte_range is None:
            byte_range = ByteRange(0, self._size - 1)
        else:
            request.setResponseCode(206)
            content_range = f"bytes {byte_range.first}-{byte_range.last}/{self._size}"
            request.setHeader(b"content-range", content_range.encode())
        if request.method == b"HEAD" or byte_range.length == 0:
            request.setHeader(b"content-length", str(byte_range.length).encode())
            return b""
        try:
            stream = self._puller.open_stream(request, self._digest, byte_range, self._fill)
        except OSError as e:
            detail = {"digest": self._digest, "error": str(e)}
            return render_error(request, RegistryError(UNAVAILABLE, detail, status=503))
        request.setHeader(b"content-length", str(byte_range.length).encode())
        stream.start()
        return NOT_DONE_YET


def _acceptable(media_type: str, accept: Sequence[bytes]) -> bool:
    """Whether a client that sent these Accept headers takes this manifest type."""
    if not accept:
        return True
    types = {t.split(b";")[0].strip() for value in accept for t in value.split(b",")}
    return bool(types & {media_type.encode(), b"*/*"})
