"""The Registry that asks the upstream: manifests, blobs, tag lists and referrers, checked.

Manifests are small and read whole (bounded, digest-checked, bytes untouched);
blobs are streamed by :class:`UpstreamStream`, which holds back the last chunk
of a whole blob until its digest matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence

from hyperlink import DecodedURL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from dockermirror.config import UpstreamSettings
from dockermirror.errors import (
    BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    TOOMANYREQUESTS,
    RegistryError,
)
from dockermirror.reference import is_digest, new_hasher
from dockermirror.registry.mediatypes import OCTET_STREAM
from dockermirror.registry.model import (
    BlobBody,
    BlobInfo,
    ByteRange,
    LocalFile,
    Manifest,
    RangeNotSatisfiable,
    RangeRequest,
    Referrers,
    TagPage,
)
from dockermirror.registry.quota import HubQuota
from dockermirror.registry.schema1 import MalformedSignature, manifest_digest
from dockermirror.routing import Target
from dockermirror.storage.workers import InlineWorker, Worker
from dockermirror.upstream.body import BodyTooLarge
from dockermirror.upstream.client import UpstreamClient
from dockermirror.upstream.errors import failure_of, upstream_error
from dockermirror.upstream.response import UpstreamResponse

# A blob's bytes are hashed in batches of this size, and the upstream paused while more than
# MAX_UNHASHED bytes of one blob wait for the hashing thread.
HASH_BATCH = 1024 * 1024
MAX_UNHASHED = 16 * 1024 * 1024
# Tag lists are not paginated by every registry; a long one (tens of thousands of tags) is
# still below this, and parsing it costs many times its size in memory.
_MAX_LIST_BYTES = 2 * 1024 * 1024
# ASCII digits only (\d takes any script's) and few enough for int() and any real size.
_CONTENT_RANGE = re.compile(r"bytes (?:([0-9]{1,18})-([0-9]{1,18})|\*)/([0-9]{1,18}|\*)\Z")


class UpstreamRegistry:
    """:class:`~dockermirror.registry.model.Registry` answered by the upstream registries."""

    def __init__(
        self,
        clients: Mapping[str, UpstreamClient],
        settings: UpstreamSettings,
        quotas: Mapping[str, HubQuota] | None = None,
        hashing: Worker | None = None,
    ) -> None:
        """``hashing``: where blobs' digests are computed (default: at once, in line)."""
        self._clients = clients
        self._settings = settings
        self._hashing = hashing or InlineWorker()
        # Docker Hub's quota by registry name (not for a client's own account: that is its own).
        self._quotas = quotas or {}

    async def manifest(
        self, target: Target, reference: str, accept: Sequence[str], *, head: bool = False
    ) -> Manifest:
        quota = self._quotas.get(target.registry.name) if target.account is None else None
        wait = quota.refusing() if quota is not None else None
        if wait is not None:
            raise RegistryError(
                TOOMANYREQUESTS,
                {"registry": target.registry.name, "name": target.name},
                message="the upstream's pull limit is reached; the mirror waits as it asked",
                retry_after=str(math.ceil(wait)),
            )
        response = await self._client(target).request(
            b"HEAD" if head else b"GET",
            target.name,
            ("manifests", reference),
            headers={b"accept": [a.encode("latin-1") for a in accept]} if accept else None,
            account=target.account,
        )
        if quota is not None:
            quota.observe(
                response.header("ratelimit-limit"),
                response.header("ratelimit-remaining"),
                response.header("docker-ratelimit-source"),
            )
            if response.code == 429:
                quota.refused(response.header("retry-after"))
        if response.code != 200:
            raise await failure_of(response, target.name, MANIFEST_UNKNOWN)
        media_type = response.header("content-type") or ""
        if head:
            response.discard()
            digest = response.header("docker-content-digest") or ""
            if digest and not is_digest(digest):
                raise upstream_error(response.registry, 502, "an invalid Docker-Content-Digest")
            return Manifest(digest, media_type, response.length, None)
        body = await self._read(response, self._settings.max_manifest_bytes, "manifest")
        digest = _checked_digest(response, body, media_type, reference)
        return Manifest(digest, media_type, len(body), body)

    async def blob(self, target: Target, digest: str) -> UpstreamBlob:
        return UpstreamBlob(self._client(target), target, digest, self._hashing)

    async def tags(self, target: Target, n: str | None, last: str | None) -> TagPage:
        query = [(key, value) for key, value in (("n", n), ("last", last)) if value is not None]
        response = await self._client(target).request(
            b"GET", target.name, ("tags", "list"), query=query, account=target.account
        )
        if response.code != 200:
            raise await failure_of(response, target.name, NAME_UNKNOWN)
        body = await self._read(response, _MAX_LIST_BYTES, "tag list")
        try:
            document = json.loads(body)
            tags = tuple(str(tag) for tag in document.get("tags") or ())
            name = str(document.get("name") or target.name)
        except (ValueError, AttributeError, TypeError):
            raise upstream_error(response.registry, 502, "invalid tag list") from None
        return TagPage(name, tags, _next_page(response.header_values("link")))

    async def referrers(self, target: Target, digest: str, artifact_type: str | None) -> Referrers:
        query = [("artifactType", artifact_type)] if artifact_type else []
        response = await self._client(target).request(
            b"GET", target.name, ("referrers", digest), query=query, account=target.account
        )
        if response.code != 200:
            raise await failure_of(response, target.name, MANIFEST_UNKNOWN)
        body = await self._read(response, self._settings.max_manifest_bytes, "referrers list")
        return Referrers(
            response.header("content-type") or "application/vnd.oci.image.index.v1+json",
            body,
            response.header("oci-filters-applied"),
        )

    def _client(self, target: Target) -> UpstreamClient:
        return self._clients[target.registry.name]

    async def _read(self, response: UpstreamResponse, limit: int, what: str) -> bytes:
        try:
            return await response.collect(limit)
        except BodyTooLarge:
            raise RegistryError(
                MANIFEST_INVALID,
                {"registry": response.registry, "limit": limit},
                status=502,
                message=f"the upstream {what} is larger than the mirror accepts",
            ) from None


class UpstreamBlob:
    """A blob at the upstream: a HEAD describes it, a GET (with the client's range) opens it."""

    def __init__(
        self, client: UpstreamClient, target: Target, digest: str, hashing: Worker
    ) -> None:
        self.digest = digest
        self._client = client
        self._target = target
        self._hashing = hashing

    async def stat(self) -> BlobInfo:
        response = await self._request(b"HEAD", None)
        if response.code != 200:
            raise await failure_of(response, self._target.name, BLOB_UNKNOWN)
        response.discard()
        return BlobInfo(self.digest, response.length, _media_type(response))

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        response = await self._request(b"GET", wanted)
        if response.code == 200:
            info = BlobInfo(self.digest, response.length, _media_type(response))
            # Only a whole body can be checked against its digest.
            return BlobBody(info, None, UpstreamStream(response, self.digest, self._hashing))
        content_range = _CONTENT_RANGE.match(response.header("content-range") or "")
        size = int(content_range[3]) if content_range and content_range[3] != "*" else None
        if response.code == 416:
            response.discard()
            raise RangeNotSatisfiable(size)
        if response.code == 206:
            byte_range = _answered_range(wanted, content_range, size)
            if byte_range is None:
                response.discard()
                raise upstream_error(
                    response.registry, 502, "a partial answer that is not the range asked for"
                )
            info = BlobInfo(self.digest, size, _media_type(response))
            return BlobBody(info, byte_range, UpstreamStream(response, None, self._hashing))
        raise await failure_of(response, self._target.name, BLOB_UNKNOWN)

    def local_file(self) -> LocalFile | None:
        return None

    def direct_url(self) -> str | None:
        return None

    async def _request(self, method: bytes, wanted: RangeRequest | None) -> UpstreamResponse:
        headers = {b"range": [_range_header(wanted).encode()]} if wanted else None
        return await self._client.request(
            method,
            self._target.name,
            ("blobs", self.digest),
            headers=headers,
            account=self._target.account,
        )


class _Digest:
    """A whole blob's digest, computed off the reactor thread, in order, in batches.

    hashlib lets go of the GIL for large buffers, so a worker thread hashes while
    the reactor reads, writes and sends.  ``behind`` is told when more than
    MAX_UNHASHED bytes wait for the thread (the stream then pauses the upstream)
    and when the thread has caught up again.
    """

    def __init__(self, expected: str, worker: Worker, behind: Callable[[bool], None]) -> None:
        self._hasher = new_hasher(expected)
        self._worker = worker
        self._behind = behind
        self._batch: list[bytes] = []
        self._batched = 0
        self._waiting = 0
        self._late = False

    def update(self, data: bytes) -> None:
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= HASH_BATCH:
            self._submit()

    def result(self) -> Deferred[str]:
        self._submit()
        return self._worker.run(self._hasher.hexdigest)

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        self._waiting += size
        self._worker.run(_update, self._hasher, batch).addCallback(self._hashed, size)
        if self._waiting > MAX_UNHASHED and not self._late:
            self._late = True
            self._behind(True)

    def _hashed(self, _: object, size: int) -> None:
        self._waiting -= size
        if self._late and self._waiting <= MAX_UNHASHED // 2:
            self._late = False
            self._behind(False)


def _update(hasher: hashlib._Hash, batch: list[bytes]) -> None:
    for data in batch:
        hasher.update(data)


@implementer(IPushProducer)
class UpstreamStream:
    """An upstream body on its way to a consumer, which pauses and resumes the upstream.

    With an ``expected`` digest, the last byte received is held back until the
    digest is known: with a Content-Length, a client would otherwise have every
    byte before the check, and take a corrupt blob for a complete one.  The digest
    is computed on ``hashing`` (a worker thread in the mirror); the upstream is
    paused while the consumer wants it or while hashing lags far behind.
    """

    def __init__(self, response: UpstreamResponse, expected: str | None, hashing: Worker) -> None:
        self._response = response
        self._expected = expected
        self._digest = _Digest(expected, hashing, self._hash_behind) if expected else None
        # Bytes to come, when the upstream said: only the chunk that ends the body is split.
        self._left = response.length
        self._held = b""
        self._consumer: IConsumer | None = None
        self._producer: IPushProducer | None = None
        self._paused_by = {"consumer": False, "hashing": False}
        self._done: Deferred[None] = Deferred(lambda _: self._stop())

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        # Registered before the first byte can arrive (Twisted may deliver buffered bytes at
        # once); the upstream's own producer is driven from here.
        consumer.registerProducer(self, True)
        self._producer = self._response.stream(self, _NoConsumer())
        return self._done

    # IPushProducer, for the consumer

    def pauseProducing(self) -> None:
        self._pause("consumer", True)

    def resumeProducing(self) -> None:
        self._pause("consumer", False)

    def stopProducing(self) -> None:
        self._stop()

    def _hash_behind(self, behind: bool) -> None:
        self._pause("hashing", behind)

    def _pause(self, by: str, paused: bool) -> None:
        before = any(self._paused_by.values())
        self._paused_by[by] = paused
        after = any(self._paused_by.values())
        if self._producer is not None and before != after:
            if after:
                self._producer.pauseProducing()
            else:
                self._producer.resumeProducing()

    # The upstream body (a BodySink)

    def body_data(self, data: bytes) -> None:
        assert self._consumer is not None
        if self._digest is None:
            self._consumer.write(data)
            return
        self._digest.update(data)
        if self._left is not None and len(data) < self._left:
            # The last byte is still to come: these go as they are, with no copy.
            self._left -= len(data)
            self._consumer.write(data)
            return
        if data:
            ready, self._held = self._held + data[:-1], data[-1:]
            if ready:
                self._consumer.write(ready)

    def body_end(self, problem: Exception | None) -> None:
        if self._done.called:
            return
        assert self._consumer is not None
        self._consumer.unregisterProducer()
        if problem is None and self._digest is not None:
            self._digest.result().addCallback(self._verify)
            return
        self._end(problem)

    def _verify(self, hexdigest: str) -> None:
        assert self._expected is not None
        actual = f"{self._expected.partition(':')[0]}:{hexdigest}"
        problem = None
        if actual != self._expected:
            problem = upstream_error(
                self._response.registry, 502, f"blob bytes have digest {actual}"
            )
        self._end(problem)

    def _end(self, problem: Exception | None) -> None:
        if self._done.called:
            return  # the consumer went away meanwhile
        assert self._consumer is not None
        if problem is not None:
            self._done.errback(problem)
            return
        if self._held:
            self._consumer.write(self._held)
        self._done.callback(None)

    def _stop(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()


@implementer(IConsumer)
class _NoConsumer:
    """Where the upstream's body would register itself: the stream drives it instead."""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        raise AssertionError("the body goes to the stream, not here")


def _media_type(response: UpstreamResponse) -> str:
    return response.header("content-type") or OCTET_STREAM


def _answered_range(
    wanted: RangeRequest | None, content_range: re.Match[str] | None, size: int | None
) -> ByteRange | None:
    """The range a 206 holds, if it is exactly the one asked for (else its bytes are not)."""
    if wanted is None or content_range is None or content_range[1] is None or size is None:
        return None
    answered = ByteRange(int(content_range[1]), int(content_range[2]))
    try:
        expected = wanted.resolve(size)
    except RangeNotSatisfiable:
        return None
    return answered if answered == expected else None


def _range_header(wanted: RangeRequest) -> str:
    if wanted.suffix is not None:
        return f"bytes=-{wanted.suffix}"
    return f"bytes={wanted.first or 0}-{'' if wanted.last is None else wanted.last}"


def _checked_digest(
    response: UpstreamResponse, body: bytes, media_type: str, reference: str
) -> str:
    """The manifest's digest; the bytes must match the reference and the upstream's claim.

    The digest is the registries' own: over the payload for signed schema1
    (see :mod:`~dockermirror.registry.schema1`), over the whole body otherwise.
    """
    algorithm = reference.partition(":")[0] if is_digest(reference) else "sha256"
    try:
        digest = manifest_digest(body, media_type, algorithm)
    except MalformedSignature as e:
        raise RegistryError(
            MANIFEST_INVALID,
            {"registry": response.registry, "problem": str(e)},
            status=502,
            message="the upstream's signed schema1 manifest is malformed",
        ) from None
    claimed = response.header("docker-content-digest")
    expected = reference if is_digest(reference) else claimed
    if expected and expected.partition(":")[0] == algorithm and expected != digest:
        raise RegistryError(
            MANIFEST_INVALID,
            {"expected": expected, "actual": digest},
            status=502,
            message="the upstream manifest does not match its digest",
        )
    return digest


def _next_page(links: list[str]) -> tuple[tuple[str, str], ...] | None:
    """The query of an RFC 8288 ``rel="next"`` link, as registries paginate tag lists."""
    for link in links:
        start, end = link.find("<"), link.find(">")
        if start < 0 or end < start or "next" not in link[end:]:
            continue
        try:
            url = DecodedURL.from_text(link[start + 1 : end])
        except ValueError:
            continue
        return tuple((key, value or "") for key, value in url.query)
    return None
