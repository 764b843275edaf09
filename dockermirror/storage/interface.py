"""The storage seam: what the cache needs of a place to keep blobs, manifests and tags.

Everything that may wait on the index or on slow filesystem work (scans,
renames of many files, eviction) is asynchronous.  A blob's bytes go through
readers and writers that are synchronous: local, page-cached reads and appends,
as Twisted's static file serving does (a remote backend would stage through
local files, or hand clients a ``direct_url``).  No path shows but the optional
``local_path``, for ``sendfile``.

Failures stay inside the backend: it logs them, reports itself unwritable for
a while, and answers as if the thing were not cached (lookups give None,
writes are dropped), so a broken disk or index turns pulls into pass-through
pulls, never into errors.  Only opening a blob's bytes raises ``OSError``: the
caller then fetches the blob again.

A :class:`Scope` names an upstream identity (URL and user) and a repository:
content is served only to requests for an identity that fetched it, so what was
pulled with one set of credentials never reaches a route without them; and the
cache confirms with the upstream, once, that content stored under one
repository is there under another before serving it there.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from dockermirror.storage.sharing import FillState


@attrs.frozen
class Scope:
    """An upstream identity (URL and user) and a repository at it.

    Content is served to a scope only if it was fetched for the same identity,
    and is known to be there under the repository (``linked``) only if that
    upstream has shown it there.
    """

    upstream: str
    repository: str


@attrs.frozen
class BlobEntry:
    size: int
    linked: bool  # the upstream has shown the blob under the scope's repository


@attrs.frozen
class TagEntry:
    digest: str
    checked: float  # when the upstream last confirmed the tag (clock seconds)


@attrs.frozen
class StoredManifest:
    digest: str
    media_type: str  # as the scope's upstream gave it
    body: bytes
    linked: bool  # the upstream has shown it under the scope's repository


class BlobReader(Protocol):
    """Reads a stored or filling blob (a fast local read, like Twisted's static)."""

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; fewer (or none) at the end of what is there."""

    def fileno(self) -> int | None:
        """The open file, for ``sendfile``; None when the bytes are not in a local file."""

    def close(self) -> None: ...


class ForeignWrite(Protocol):
    """A blob another process sharing the storage is downloading into it."""

    def size(self) -> int | None:
        """The blob's size, once that process knows it."""

    def progress(self) -> tuple[int, FillState]:
        """Bytes written so far, and how the download stands (complete: stored, verified)."""

    def reader(self) -> BlobReader:
        """A reader of the bytes written so far, and of those still to come."""

    def close(self) -> None: ...


class BlobWriter(Protocol):
    """A blob being written.  It becomes visible under its digest only by :meth:`commit`."""

    def write(self, data: bytes) -> None:
        """Append ``data``; ``OSError`` when the storage will not have it."""

    def reader(self) -> BlobReader:
        """A reader of what was written so far, and of what will be; ``OSError`` on failure."""

    def commit(self) -> Deferred[None]:
        """Keep the blob, whose size and digest the caller checked; fires once indexed."""

    def discard(self) -> None:
        """Drop what was written."""


class BlobStorage(Protocol):
    max_size: int

    @property
    def is_open(self) -> bool: ...

    @property
    def total(self) -> int:
        """Bytes stored."""

    @property
    def entries(self) -> int:
        """Files stored: blobs and manifests."""

    @property
    def evicted(self) -> int:
        """Blobs removed by eviction since start."""

    def open(self) -> Deferred[None]: ...

    def when_open(self) -> Deferred[None]:
        """Fires once an open under way has ended, either way; at once when none is."""

    def close(self) -> Deferred[None]: ...

    # Blobs

    def stored_blob(self, digest: str, scope: Scope) -> Deferred[BlobEntry | None]:
        """A stored blob the scope's upstream identity may be served, else None."""

    def open_blob(self, digest: str) -> Deferred[BlobReader]: ...

    def local_path(self, digest: str) -> str | None:
        """Where a stored blob lies on this machine, for backends that keep local files."""

    def claim(self, digest: str, scope: Scope) -> ForeignWrite | None:
        """Claim the download of a blob, against other processes sharing the storage.

        None: claimed; :meth:`begin_write` (or :meth:`release_claim`) follows.  Else
        another process is downloading it, and this is how to follow it.  ``OSError``
        when the storage cannot say.
        """

    def release_claim(self, digest: str, scope: Scope) -> None:
        """Give up a claim without writing (the upstream failed, the blob cannot be kept)."""

    def begin_write(self, digest: str, size: int, scope: Scope) -> BlobWriter:
        """Start storing a blob fetched under ``scope``; ``OSError`` when storage refuses it.

        The claim, if this process holds one, goes with the writer: its commit or
        discard releases it.
        """

    def link(self, digest: str, scope: Scope) -> Deferred[None]:
        """Note that the upstream has shown ``digest`` under the scope's repository."""

    def writable(self) -> bool:
        """Whether new content should be stored now (open, and no recent write failure)."""

    def has_room(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes fits the cache and the disk."""

    # Manifests and tags

    def manifest(self, digest: str, scope: Scope) -> Deferred[StoredManifest | None]: ...

    def put_manifest(
        self, digest: str, media_type: str, body: bytes, scope: Scope
    ) -> Deferred[bool]:
        """Store a manifest fetched under ``scope``; fires with whether it was stored."""

    def tag(self, scope: Scope, tag: str) -> Deferred[TagEntry | None]: ...

    def set_tag(self, scope: Scope, tag: str, digest: str) -> Deferred[None]:
        """Bind the tag to ``digest``, confirmed now (and so link the digest to the scope)."""

    def drop_tag(self, scope: Scope, tag: str) -> Deferred[None]: ...

    # Housekeeping

    def touch(self, digest: str) -> None:
        """Note an access (for LRU); written in batches by :meth:`flush`."""

    def flush(self) -> Deferred[None]: ...

    def evict(self, busy: set[str]) -> Deferred[int]:
        """Remove least recently used blobs (but not ``busy`` ones) while over ``max_size``."""
