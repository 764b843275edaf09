"""The pull domain's vocabulary: what a registry answers, as plain values, and its interface.

Nothing here knows HTTP requests.  A :class:`Registry` is implemented by the
upstream (:mod:`dockermirror.registry.upstream`) and by the cache that wraps any
Registry (:mod:`dockermirror.registry.caching`); the web layer renders the
values, whichever produced them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer

from dockermirror.routing import Target


class CacheOutcome(enum.Enum):
    """How the cache answered; None where no cache took part."""

    HIT = "HIT"
    MISS = "MISS"
    COALESCED = "COALESCED"  # joined a download or fetch another request started
    REVALIDATED = "REVALIDATED"  # a tag past its TTL, confirmed by an upstream HEAD
    STALE = "STALE"  # the upstream failed; an older cached answer was served


@attrs.frozen
class Manifest:
    digest: str  # "" when an upstream HEAD did not say
    media_type: str
    size: int | None
    body: bytes | None  # None for the answer to a HEAD
    outcome: CacheOutcome | None = None

    def with_outcome(self, outcome: CacheOutcome | None) -> Manifest:
        return attrs.evolve(self, outcome=outcome)


@attrs.frozen
class TagPage:
    name: str
    tags: tuple[str, ...]
    # The query of the upstream's next page (``n``, ``last``), when it has one.
    next_page: tuple[tuple[str, str], ...] | None = None


@attrs.frozen
class Referrers:
    media_type: str
    body: bytes
    filters_applied: str | None = None


@attrs.frozen
class ByteRange:
    first: int
    last: int  # inclusive

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class RangeNotSatisfiable(Exception):
    """No byte of the blob lies in the range asked for; ``size`` when it is known."""

    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size


@attrs.frozen
class RangeRequest:
    """One byte range a client asked for: ``first``-``last``, ``first``-, or a ``suffix``."""

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def resolve(self, size: int) -> ByteRange | None:
        """The bytes of a ``size``-byte blob this range means; None for the whole blob.

        An invalid range (last before first) is ignored, as RFC 9110 says; one
        wholly past the end raises :class:`RangeNotSatisfiable`.
        """
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                raise RangeNotSatisfiable(size)
            return ByteRange(max(0, size - self.suffix), size - 1)
        first = self.first or 0
        if self.last is not None and self.last < first:
            return None
        if first >= size:
            raise RangeNotSatisfiable(size)
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return ByteRange(first, last)


@runtime_checkable
class FileSender(Protocol):
    """A consumer that can send bytes of a local file itself (``sendfile``), besides writing."""

    def send_file(self, fd: int, offset: int, count: int) -> int | None:
        """Send up to ``count`` bytes of ``fd`` from ``offset``; how many went.

        None: not now, write them instead.  Fewer than ``count``: the consumer
        resumes its producer when it can take more.  ``OSError``: it failed.
        """


class ByteStream(Protocol):
    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        """Write every byte to ``consumer``, registered as its streaming producer.

        Fires once the last byte was written and, for a whole blob, its digest
        checked; fails when the bytes cannot be had or are wrong (the consumer
        then must not look complete).  Cancelling it stops the transfer.
        """


@attrs.frozen
class BlobInfo:
    digest: str
    size: int | None  # None when the upstream did not say
    media_type: str
    outcome: CacheOutcome | None = None


@attrs.frozen
class BlobBody:
    """An opened blob: what it is, which of its bytes come, and the stream of them."""

    info: BlobInfo
    range: ByteRange | None  # None: the whole blob
    stream: ByteStream

    @property
    def length(self) -> int | None:
        return self.info.size if self.range is None else self.range.length


@attrs.frozen
class LocalFile:
    """Where a blob's bytes already lie on this machine (for ``sendfile``)."""

    path: str
    offset: int
    size: int


class BlobSource(Protocol):
    """A blob that can be described and opened; nothing is transferred before :meth:`open`."""

    digest: str

    async def stat(self) -> BlobInfo:
        """What the blob is, without its bytes (a HEAD)."""

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        """The blob's bytes, or the range of them a client asked for."""

    def local_file(self) -> LocalFile | None:
        """The blob as a local file, when it is one."""

    def direct_url(self) -> str | None:
        """A URL a client may fetch the bytes from itself, when the storage offers one."""


class Registry(Protocol):
    """What the web layer pulls from: an upstream registry, or a cache in front of one."""

    async def manifest(
        self, target: Target, reference: str, accept: Sequence[str], *, head: bool = False
    ) -> Manifest:
        """A manifest by tag or digest, for a client accepting the ``accept`` media ranges.

        With ``head`` the body is left out (and an upstream is asked with HEAD).
        """

    async def blob(self, target: Target, digest: str) -> BlobSource: ...

    async def tags(self, target: Target, n: str | None, last: str | None) -> TagPage: ...

    async def referrers(
        self, target: Target, digest: str, artifact_type: str | None
    ) -> Referrers: ...
