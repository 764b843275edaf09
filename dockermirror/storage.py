"""The cache's storage: verified blobs on the local filesystem, indexed in SQLite.

Layout under the cache directory::

    blobs/sha256/ab/abcdef...   verified content, named by digest (layers, configs, manifests)
    tmp/                        downloads in progress; wiped at start
    index.sqlite                sizes, access times, manifest media types, tags, sources

A blob becomes visible only by a rename after its digest was checked, so a
crash (even SIGKILL) can leave temp files, which the next start removes, but
never a partial blob under its digest.  The index row is written after the
rename; a file without one is removed at start.

The index is the standard library's sqlite3 in WAL mode, used on the reactor
thread: every query is a primary-key lookup or a small write, and WAL with
synchronous=NORMAL makes a commit durable against a process crash without an
fsync on each one.  Access times are collected in memory and written in
batches, so a cache hit costs no disk write.

``upstream`` strings name an upstream identity (URL and user): a blob is served
from the cache only to requests for an identity that fetched it, so content
pulled with one set of credentials never reaches a route without them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    accessed REAL NOT NULL,
    media_type TEXT
);
CREATE INDEX IF NOT EXISTS blobs_by_access ON blobs (accessed);
CREATE TABLE IF NOT EXISTS sources (
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    PRIMARY KEY (digest, upstream)
);
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked REAL NOT NULL,
    PRIMARY KEY (upstream, repository, tag)
);
"""
# After a failed write, blobs stream through uncached for this long before the disk is tried again.
_WRITE_RETRY = 60.0
# Eviction frees space down to this share of max_size, so it does not run on every fill.
_LOW_WATER = 0.9


class BlobStorage(Protocol):
    """What the cache needs of its storage: the seam another backend plugs into.

    Downloads are staged in local temporary files (``new_temp``) and read back
    from local paths (``path``) while they fill; an object-storage backend keeps
    that staging and moves verified blobs on ``commit``.
    """

    directory: Path
    max_size: int
    total: int
    evicted: int
    readers: Counter[str]

    @property
    def is_open(self) -> bool: ...
    def open(self) -> None: ...
    def close(self) -> None: ...
    def path(self, digest: str) -> Path: ...
    def blob_size(self, digest: str, upstream: str) -> int | None: ...
    def manifest(self, digest: str, upstream: str) -> StoredManifest | None: ...
    def tag(self, upstream: str, repository: str, tag: str) -> TagEntry | None: ...
    def touch(self, digest: str) -> None: ...
    def flush(self) -> None: ...
    def writable(self) -> bool: ...
    def report_write_failure(self, error: Exception) -> None: ...
    def has_room(self, size: int) -> bool: ...
    def new_temp(self) -> tuple[Path, BinaryIO]: ...
    def commit(
        self, temp: Path, digest: str, size: int, upstream: str, media_type: str | None = None
    ) -> None: ...
    def put_manifest(self, digest: str, media_type: str, body: bytes, upstream: str) -> None: ...
    def set_tag(self, upstream: str, repository: str, tag: str, digest: str) -> None: ...
    def drop_tag(self, upstream: str, repository: str, tag: str) -> None: ...
    def evict(self, busy: set[str]) -> int: ...


@attrs.frozen
class TagEntry:
    digest: str
    checked: float


@attrs.frozen
class StoredManifest:
    digest: str
    media_type: str
    body: bytes


class BlobStore:
    """:class:`BlobStorage` on the local filesystem, indexed in SQLite."""

    def __init__(self, directory: Path, clock: IReactorTime, max_size: int, min_free: int) -> None:
        self.directory = directory
        self.max_size = max_size
        self.min_free = min_free
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._touched: dict[str, float] = {}
        self.total = 0
        self.evicted = 0
        self._unwritable_until = 0.0
        # Blobs being read right now: eviction leaves them alone.
        self.readers: Counter[str] = Counter()

    # Life cycle

    def open(self) -> None:
        """Create the layout, drop leftovers of a crash, load the index."""
        (self.directory / "blobs").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.directory / "tmp", ignore_errors=True)
        (self.directory / "tmp").mkdir()
        db = sqlite3.connect(self.directory / "index.sqlite")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        self._reconcile()
        self.total = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the blob store is not open")
        return self._db

    def _reconcile(self) -> None:
        """Files and index rows agree: drop files without rows and rows without files."""
        indexed = {d for (d,) in self.db.execute("SELECT digest FROM blobs")}
        on_disk = set()
        for algorithm in os.scandir(self.directory / "blobs"):
            for prefix in os.scandir(algorithm.path):
                for entry in os.scandir(prefix.path):
                    digest = f"{algorithm.name}:{entry.name}"
                    if digest in indexed:
                        on_disk.add(digest)
                    else:
                        os.unlink(entry.path)
        missing = indexed - on_disk
        if missing:
            self._forget(missing)
        log.info(
            "cache index: {count} blobs; removed {orphans} stale rows",
            count=len(on_disk),
            orphans=len(missing),
        )

    # Reading

    def path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.directory / "blobs" / algorithm / hexdigest[:2] / hexdigest

    def blob_size(self, digest: str, upstream: str) -> int | None:
        """The size of a stored blob that ``upstream`` may be served, else None."""
        row = self.db.execute(
            "SELECT size FROM blobs JOIN sources USING (digest) WHERE digest = ? AND upstream = ?",
            (digest, upstream),
        ).fetchone()
        if row is None:
            return None
        if not self.path(digest).exists():  # removed behind our back: forget it, fetch again
            log.warn("cached blob {digest} is missing from disk", digest=digest)
            self._forget({digest})
            self.total -= row[0]
            return None
        return int(row[0])

    def manifest(self, digest: str, upstream: str) -> StoredManifest | None:
        row = self.db.execute(
            "SELECT media_type FROM blobs JOIN sources USING (digest)"
            " WHERE digest = ? AND upstream = ? AND media_type IS NOT NULL",
            (digest, upstream),
        ).fetchone()
        if row is None:
            return None
        try:
            body = self.path(digest).read_bytes()
        except OSError:
            return None
        self.touch(digest)
        return StoredManifest(digest, row[0], body)

    def tag(self, upstream: str, repository: str, tag: str) -> TagEntry | None:
        row = self.db.execute(
            "SELECT digest, checked FROM tags WHERE upstream = ? AND repository = ? AND tag = ?",
            (upstream, repository, tag),
        ).fetchone()
        return None if row is None else TagEntry(row[0], row[1])

    def touch(self, digest: str) -> None:
        """Note an access; written to the index by the next :meth:`flush`."""
        self._touched[digest] = self._clock.seconds()

    def flush(self) -> None:
        if self._touched and self._db is not None:
            with self.db:
                self.db.executemany(
                    "UPDATE blobs SET accessed = ? WHERE digest = ?",
                    [(t, d) for d, t in self._touched.items()],
                )
            self._touched.clear()

    # Writing

    def writable(self) -> bool:
        return self.is_open and self._clock.seconds() >= self._unwritable_until

    def report_write_failure(self, error: Exception) -> None:
        """Stop filling for a while; pulls stream through until the disk recovers."""
        log.error(
            "cannot write to the cache in {directory} ({error}); streaming through for {seconds}s",
            directory=str(self.directory),
            error=str(error),
            seconds=_WRITE_RETRY,
        )
        self._unwritable_until = self._clock.seconds() + _WRITE_RETRY

    def has_room(self, size: int) -> bool:
        """Whether a blob of ``size`` may be stored: it fits the cache and the disk."""
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return False
        return size <= self.max_size and free - size >= self.min_free

    def new_temp(self) -> tuple[Path, BinaryIO]:
        """A fresh temporary file for a download; OSError when the disk will not have it."""
        path = self.directory / "tmp" / uuid.uuid4().hex
        return path, open(path, "xb")

    def commit(
        self, temp: Path, digest: str, size: int, upstream: str, media_type: str | None = None
    ) -> None:
        """Move a verified temporary file into place and index it."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        now = self._clock.seconds()
        with self.db:
            existed = self.db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone()
            self.db.execute(
                "INSERT INTO blobs (digest, size, accessed, media_type) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET accessed = excluded.accessed,"
                " media_type = COALESCE(excluded.media_type, blobs.media_type)",
                (digest, size, now, media_type),
            )
            self.db.execute("INSERT OR IGNORE INTO sources VALUES (?, ?)", (digest, upstream))
        if not existed:
            self.total += size

    def put_manifest(self, digest: str, media_type: str, body: bytes, upstream: str) -> None:
        temp, file = self.new_temp()
        with file:
            file.write(body)
        self.commit(temp, digest, len(body), upstream, media_type)

    def set_tag(self, upstream: str, repository: str, tag: str, digest: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?, ?)",
                (upstream, repository, tag, digest, self._clock.seconds()),
            )

    def drop_tag(self, upstream: str, repository: str, tag: str) -> None:
        with self.db:
            self.db.execute(
                "DELETE FROM tags WHERE upstream = ? AND repository = ? AND tag = ?",
                (upstream, repository, tag),
            )

    # Eviction

    def evict(self, busy: set[str]) -> int:
        """Remove least recently used blobs until the cache is below its low-water mark."""
        if self.total <= self.max_size:
            return 0
        self.flush()
        target = int(self.max_size * _LOW_WATER)
        victims: list[tuple[str, int]] = []
        freed = 0
        for digest, size in self.db.execute("SELECT digest, size FROM blobs ORDER BY accessed"):
            if self.total - freed <= target:
                break
            if digest in busy or self.readers[digest]:
                continue
            victims.append((digest, size))
            freed += size
        for digest, _ in victims:
            # A reader that opened the file before keeps its bytes: unlink does not touch them.
            self.path(digest).unlink(missing_ok=True)
        self._forget({d for d, _ in victims})
        self.total -= freed
        self.evicted += len(victims)
        if victims:
            log.info(
                "cache eviction: removed {count} blobs, {freed} bytes; {total} bytes cached",
                count=len(victims),
                freed=freed,
                total=self.total,
            )
        return len(victims)

    def _forget(self, digests: set[str]) -> None:
        rows = [(d,) for d in digests]
        with self.db:
            self.db.executemany("DELETE FROM blobs WHERE digest = ?", rows)
            self.db.executemany("DELETE FROM sources WHERE digest = ?", rows)
        for digest in digests:
            self._touched.pop(digest, None)
