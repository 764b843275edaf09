"""The cache index in SQLite: blob sizes, access and check times, sources, links, types, tags.

Plain blocking calls on one connection; :mod:`dockermirror.storage.filesystem`
runs them on worker threads.  WAL mode lets a reading connection go on while
another (ours, or another process's) writes, and synchronous=NORMAL makes a
commit durable against a process crash without an fsync on each.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from dockermirror.storage.interface import BlobEntry, Scope, TagEntry
from dockermirror.storage.verify import Stored

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    accessed REAL NOT NULL,
    -- When its bytes were last found to match its digest (0: never), for the scrub.
    verified REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS blobs_by_access ON blobs (accessed);
-- The upstream identities a blob was fetched for: only they may be served it.
CREATE TABLE IF NOT EXISTS sources (
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    PRIMARY KEY (digest, upstream)
);
-- The repositories an upstream has shown a blob or manifest under.
CREATE TABLE IF NOT EXISTS links (
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, upstream, repository)
);
-- A manifest's media type, as each upstream gave it.
CREATE TABLE IF NOT EXISTS manifest_types (
    digest TEXT NOT NULL,
    upstream TEXT NOT NULL,
    media_type TEXT NOT NULL,
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
# Content cached before links existed was served under any repository; it still is.
ANY_REPOSITORY = "*"
_MIGRATE_LINKS = (
    f"INSERT OR IGNORE INTO links SELECT digest, upstream, '{ANY_REPOSITORY}' FROM sources"
)
# Caches made before manifest_types kept one media type per blob, in blobs.media_type.
_MIGRATE_MEDIA_TYPES = """
INSERT OR IGNORE INTO manifest_types
    SELECT digest, upstream, media_type FROM blobs JOIN sources USING (digest)
    WHERE media_type IS NOT NULL
"""
# Caches made before the scrub have no check times: their blobs are checked first.
_MIGRATE_VERIFIED = "ALTER TABLE blobs ADD COLUMN verified REAL NOT NULL DEFAULT 0"
_VERIFIED_INDEX = "CREATE INDEX IF NOT EXISTS blobs_by_verified ON blobs (verified)"
# Whether the upstream has shown ?1 under repository ?3 (or it was cached before links).
_LINKED = (
    "EXISTS (SELECT 1 FROM links WHERE digest = ?1 AND upstream = ?2 AND repository IN (?3, ?4))"
)
# How long a call waits for a lock another connection holds before it fails.  SQLite's own
# wait cannot be interrupted, so it waits briefly and the wait is retried here, where
# abandon() can end it: shutdown never waits out the whole timeout.
BUSY_TIMEOUT = 5.0
_SQLITE_WAIT = 0.1


class Index:
    def __init__(self, path: Path, *, writer: bool) -> None:
        self._path = path
        self._writer = writer
        self._db: sqlite3.Connection | None = None
        self._abandoned = False

    def connect(self) -> None:
        # Connected on the worker thread that will use it; closed there or at shutdown.
        self.close()
        self._abandoned = False
        db = sqlite3.connect(self._path, timeout=_SQLITE_WAIT, check_same_thread=False)
        try:
            if self._writer:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
                db.executescript(_SCHEMA)
                if "sources" in tables and "links" not in tables:
                    with db:
                        db.execute(_MIGRATE_LINKS)
                columns = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
                if "media_type" in columns:
                    with db:
                        db.execute(_MIGRATE_MEDIA_TYPES)
                if "verified" not in columns:
                    with db:
                        db.execute(_MIGRATE_VERIFIED)
                db.execute(_VERIFIED_INDEX)
            else:
                db.execute("PRAGMA query_only=1")
        except sqlite3.Error:
            db.close()
            raise
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def abandon(self) -> None:
        """Make calls waiting for a lock, and calls not begun yet, fail at once (any thread)."""
        self._abandoned = True

    def retrying(self, f: Callable[..., T], *args: Any) -> T:
        """``f(*args)``, tried again while another connection holds a lock, up to BUSY_TIMEOUT."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            if self._abandoned:
                raise sqlite3.OperationalError("the cache index is closing")
            try:
                return f(*args)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the cache index is not open")
        return self._db

    # Reading

    def blob(self, digest: str, scope: Scope) -> BlobEntry | None:
        row = self.db.execute(
            f"SELECT size, {_LINKED} FROM blobs JOIN sources USING (digest)"
            " WHERE digest = ?1 AND upstream = ?2",
            (digest, scope.upstream, scope.repository, ANY_REPOSITORY),
        ).fetchone()
        return None if row is None else BlobEntry(int(row[0]), bool(row[1]))

    def manifest_type(self, digest: str, scope: Scope) -> tuple[str, bool] | None:
        """The media type the scope's upstream gave, and whether it showed it under the scope."""
        row = self.db.execute(
            f"SELECT manifest_types.media_type, {_LINKED} FROM manifest_types JOIN blobs"
            " USING (digest) WHERE digest = ?1 AND upstream = ?2",
            (digest, scope.upstream, scope.repository, ANY_REPOSITORY),
        ).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]))

    def tag(self, scope: Scope, tag: str) -> TagEntry | None:
        row = self.db.execute(
            "SELECT digest, checked FROM tags WHERE upstream = ? AND repository = ? AND tag = ?",
            (scope.upstream, scope.repository, tag),
        ).fetchone()
        return None if row is None else TagEntry(row[0], row[1])

    def totals(self) -> tuple[int, int]:
        """How many files the cache holds (blobs and manifests), and their bytes."""
        count, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs"
        ).fetchone()
        return int(count), int(size)

    def digests(self) -> set[str]:
        return {digest for (digest,) in self.db.execute("SELECT digest FROM blobs")}

    def least_recently_used(self) -> Iterator[tuple[str, int]]:
        yield from self.db.execute("SELECT digest, size FROM blobs ORDER BY accessed")

    def least_recently_verified(self) -> tuple[Stored, float] | None:
        """The blob checked longest ago, and when that was."""
        row = self.db.execute(
            "SELECT digest, size, verified FROM blobs ORDER BY verified LIMIT 1"
        ).fetchone()
        return None if row is None else (self._stored(row[0], int(row[1])), float(row[2]))

    def stored(self) -> list[Stored]:
        """Every stored blob."""
        types: dict[str, list[str]] = {}
        for digest, media_type in self.db.execute("SELECT digest, media_type FROM manifest_types"):
            types.setdefault(digest, []).append(media_type)
        return [
            Stored(digest, int(size), tuple(types.get(digest, ())))
            for digest, size in self.db.execute("SELECT digest, size FROM blobs ORDER BY digest")
        ]

    def _stored(self, digest: str, size: int) -> Stored:
        rows = self.db.execute(
            "SELECT DISTINCT media_type FROM manifest_types WHERE digest = ?", (digest,)
        )
        return Stored(digest, size, tuple(media_type for (media_type,) in rows))

    # Writing

    def add_blob(
        self, digest: str, size: int, scope: Scope, media_type: str | None, now: float
    ) -> bool:
        """Index a stored blob, fetched under ``scope``; True when it was not stored before."""
        with self.db:
            existed = self.db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone()
            # Stored only once its digest was checked: verified now.
            self.db.execute(
                "INSERT INTO blobs (digest, size, accessed, verified) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET accessed = excluded.accessed",
                (digest, size, now, now),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO sources VALUES (?, ?)", (digest, scope.upstream)
            )
            self._link(digest, scope)
            if media_type is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO manifest_types VALUES (?, ?, ?)",
                    (digest, scope.upstream, media_type),
                )
        return existed is None

    def link(self, digest: str, scope: Scope) -> None:
        with self.db:
            self._link(digest, scope)

    def _link(self, digest: str, scope: Scope) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO links VALUES (?, ?, ?)",
            (digest, scope.upstream, scope.repository),
        )

    def set_tag(self, scope: Scope, tag: str, digest: str, now: float) -> None:
        """Bind a tag; the upstream showed ``digest`` under the scope's repository."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?, ?)",
                (scope.upstream, scope.repository, tag, digest, now),
            )
            self._link(digest, scope)

    def drop_tag(self, scope: Scope, tag: str) -> None:
        with self.db:
            self.db.execute(
                "DELETE FROM tags WHERE upstream = ? AND repository = ? AND tag = ?",
                (scope.upstream, scope.repository, tag),
            )

    def touch(self, accesses: Iterable[tuple[str, float]]) -> None:
        with self.db:
            self.db.executemany(
                "UPDATE blobs SET accessed = ? WHERE digest = ?",
                [(when, digest) for digest, when in accesses],
            )

    def mark_verified(self, digest: str, now: float) -> None:
        with self.db:
            self.db.execute("UPDATE blobs SET verified = ? WHERE digest = ?", (now, digest))

    def forget(self, digests: Iterable[str]) -> dict[str, int]:
        """Drop blobs' rows; the sizes of those that had rows (another caller may have won)."""
        rows = [(digest,) for digest in digests]
        sizes: dict[str, int] = {}
        with self.db:
            for (digest,) in rows:
                found = self.db.execute("SELECT size FROM blobs WHERE digest = ?", (digest,))
                for (size,) in found:
                    sizes[digest] = int(size)
            for table in ("blobs", "sources", "links", "manifest_types"):
                self.db.executemany(f"DELETE FROM {table} WHERE digest = ?", rows)
        return sizes
