"""Blob storage on the local filesystem, indexed in SQLite.

The layout, and what opening a directory may delete, is :mod:`~dockermirror.storage.layout`'s.
A blob becomes visible only by a rename after its digest was checked, so a
crash (even SIGKILL) can leave temp files, which the next start removes, but
never a partial blob under its digest.  The index row is written after the
rename; a file without one is removed at start.

Files changed behind the mirror's back are found and dropped, so that they are
fetched again: a manifest is re-hashed on every read (4 MiB at most), a blob's
file is checked for its size on every lookup, and the scrub
(:mod:`~dockermirror.storage.scrub`) re-hashes blobs in the background.  A
deleted ``tmp/`` or ``blobs/`` directory is made again when next needed.

The index has two connections on two worker threads: lookups on one, writes on
the other, so a write waiting for a lock (held by another process, say) never
holds up a lookup, and neither holds up the reactor.  Access times are
collected in memory and written in batches, so a cache hit costs no write.
Reading and writing blob bytes stays on the reactor thread: local file reads
and appends, as Twisted's own static file serving does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dockermirror.storage import layout, sharing
from dockermirror.storage.index import Index
from dockermirror.storage.interface import (
    BlobEntry,
    BlobReader,
    ForeignWrite,
    Scope,
    StoredManifest,
    TagEntry,
)
from dockermirror.storage.layout import FileIdentity
from dockermirror.storage.verify import Damage, Stored, drop, manifest_matches
from dockermirror.storage.workers import Worker

log = Logger()

T = TypeVar("T")

# After a failed write, blobs stream through uncached for this long before the disk is tried again.
WRITE_RETRY = 60.0
# Eviction frees space down to this share of max_size, so it does not run on every fill.
_LOW_WATER = 0.9
_STORAGE_ERRORS = (OSError, sqlite3.Error)
# How long closing waits for index calls held up by a lock another process holds.
CLOSE_GRACE = 2.0


class FilesystemStorage:
    def __init__(
        self,
        directory: Path,
        clock: IReactorTime,
        max_size: int,
        min_free: int,
        *,
        lookups: Worker,
        writes: Worker,
        owner: bool = True,
    ) -> None:
        """``owner`` False: another process (a running mirror) may own the directory."""
        self.directory = directory
        self._owner = owner
        self.max_size = max_size
        self.min_free = min_free
        self._clock = clock
        self._lookups = lookups
        self._writes = writes
        self._lookup_index = Index(directory / layout.INDEX, writer=False)
        self._write_index = Index(directory / layout.INDEX, writer=True)
        self._open = False
        # Requests that came while the index was being opened wait for it.
        self._opening: list[Deferred[None]] | None = None
        self._total = 0
        self._entries = 0
        # Downloads this process has claimed and not begun writing yet.
        self._claims: dict[tuple[str, str], sharing.FillClaim] = {}
        self._evicted = 0
        self._touched: dict[str, float] = {}
        self._unwritable_until = 0.0
        self._evicting = False
        # Blobs being read right now: eviction leaves them alone.
        self._readers: Counter[str] = Counter()

    # Life cycle

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def total(self) -> int:
        return self._total

    @property
    def entries(self) -> int:
        """Files stored: blobs and manifests."""
        return self._entries

    @property
    def evicted(self) -> int:
        return self._evicted

    def open(self) -> Deferred[None]:
        """Create the layout, drop leftovers of a crash, load the index; fails if it cannot."""
        self._lookups.start()
        self._writes.start()
        self._opening = []
        d = self._writes.run(self._write_index.retrying, self._prepare)
        d.addCallback(self._prepared)
        d.addCallback(lambda _: self._lookups.run(self._lookup_index.connect))
        return d.addCallback(self._opened).addBoth(self._open_ended)

    def when_open(self) -> Deferred[None]:
        """Fires once an open under way has ended, either way; at once when none is."""
        if self._opening is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._opening.append(waiter)
        return waiter

    def _open_ended(self, result: T) -> T:
        waiters, self._opening = self._opening or [], None
        for waiter in waiters:
            waiter.callback(None)
        return result

    def _prepare(self) -> tuple[int, tuple[int, int]]:
        layout.claim(self.directory)  # before anything is deleted
        (self.directory / layout.BLOBS).mkdir(exist_ok=True)
        if not self._owner:
            # What the owner left in tmp/ are its downloads under way, and a file without an
            # index row may be one it renamed an instant before writing the row.
            (self.directory / layout.TMP).mkdir(exist_ok=True)
            self._write_index.connect()
            return 0, self._write_index.totals()
        layout.clear_temp(self.directory)
        self._write_index.connect()
        orphans = self._reconcile()
        return orphans, self._write_index.totals()

    def _prepared(self, result: tuple[int, tuple[int, int]]) -> None:
        orphans, (self._entries, self._total) = result
        log.info(
            "cache index: {count} blobs, {total} bytes; removed {orphans} stale rows",
            count=self._entries,
            total=self._total,
            orphans=orphans,
        )

    def _opened(self, _: object) -> None:
        self._open = True

    def close(self) -> Deferred[None]:
        """Flush and close; calls still waiting for a lock after CLOSE_GRACE are given up."""
        was_open, self._open = self._open, False
        grace = self._clock.callLater(CLOSE_GRACE, self._abandon)
        d = self._flush() if was_open else succeed(None)
        d.addBoth(lambda _: self._writes.run(self._write_index.close))
        d.addBoth(lambda _: self._lookups.run(self._lookup_index.close))

        def stop(_: object) -> None:
            if grace.active():
                grace.cancel()
            self._lookups.stop()
            self._writes.stop()

        d.addBoth(stop)
        return d

    def _abandon(self) -> None:
        log.warn("the cache index is locked elsewhere; closing without waiting for it")
        self._write_index.abandon()
        self._lookup_index.abandon()

    def _reconcile(self) -> int:
        """Files and index rows agree: drop files without rows and rows (counted) without files."""
        indexed = self._write_index.digests()
        on_disk = set()
        for digest, path in layout.blob_files(self.directory):
            if digest in indexed:
                on_disk.add(digest)
            else:
                os.unlink(path)
        missing = indexed - on_disk
        if missing:
            self._write_index.forget(missing)
        return len(missing)

    # Blobs

    def path(self, digest: str) -> Path:
        return layout.blob_path(self.directory, digest)

    def local_path(self, digest: str) -> str | None:
        return str(self.path(digest))

    def stored_blob(self, digest: str, scope: Scope) -> Deferred[BlobEntry | None]:
        def look() -> BlobEntry | Damage | None:
            entry = self._lookup_index.blob(digest, scope)
            if entry is None:
                return None
            # Truncated, grown or removed behind our back: never served, fetched again.
            found = layout.identity(self.path(digest))
            if found is None:
                return Damage(digest, "the file is missing", None)
            if found.size != entry.size:
                return Damage(digest, f"the file has {found.size} bytes, not {entry.size}", found)
            return entry

        def found(result: BlobEntry | Damage | None) -> BlobEntry | None:
            if isinstance(result, Damage):
                self.drop_damaged(result)
                return None
            return result

        return self._lookup(look, None).addCallback(found)

    def open_blob(self, digest: str) -> Deferred[BlobReader]:
        try:
            return succeed(self._reader(self.path(digest), digest))
        except OSError as e:
            return fail(e)

    def claim(self, digest: str, scope: Scope) -> ForeignWrite | None:
        try:
            found = sharing.claim(self.directory, scope.upstream, digest)
        except OSError as e:
            self.report_write_failure(e)
            raise
        if isinstance(found, sharing.ForeignFill):
            return _ForeignWrite(self, found, digest)
        self._claims[(scope.upstream, digest)] = found
        return None

    def release_claim(self, digest: str, scope: Scope) -> None:
        held = self._claims.pop((scope.upstream, digest), None)
        if held is not None:
            held.release()

    def begin_write(self, digest: str, size: int, scope: Scope) -> _PendingBlob:
        held = self._claims.pop((scope.upstream, digest), None)
        try:
            if held is not None:
                held.announce(size)
            return _PendingBlob(self, digest, size, scope, held)
        except OSError as e:
            if held is not None:
                held.release()
            self.report_write_failure(e)
            raise

    def writable(self) -> bool:
        return self._open and self._clock.seconds() >= self._unwritable_until

    def report_write_failure(self, error: Exception) -> None:
        """Stop storing for a while; pulls stream through until the disk recovers."""
        log.error(
            "cannot write to the cache in {directory} ({error}); streaming through for {seconds}s",
            directory=str(self.directory),
            error=str(error),
            seconds=WRITE_RETRY,
        )
        self._unwritable_until = self._clock.seconds() + WRITE_RETRY

    def has_room(self, size: int) -> bool:
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return False
        return size <= self.max_size and free - size >= self.min_free

    def _reader(self, path: Path, digest: str) -> _FileReader:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._readers[digest] += 1
        return _FileReader(fd, lambda: self._reader_closed(digest))

    def _reader_closed(self, digest: str) -> None:
        self._readers[digest] -= 1
        if not self._readers[digest]:
            del self._readers[digest]

    def link(self, digest: str, scope: Scope) -> Deferred[None]:
        return self._write(self._write_index.link, digest, scope).addCallback(lambda _: None)

    def _index_blob(
        self, digest: str, size: int, scope: Scope, new_file: Path | None
    ) -> Deferred[None]:
        def indexed(new: bool | None) -> None:
            if new:
                self._total += size
                self._entries += 1
            elif new is None and new_file is not None:
                # Not indexed (the disk is full, say): a file the index does not know would
                # escape max_size.  Readers that opened it keep their bytes.
                new_file.unlink(missing_ok=True)

        d = self._write(self._write_index.add_blob, digest, size, scope, None, self._now())
        return d.addCallback(indexed)

    # Manifests and tags

    def manifest(self, digest: str, scope: Scope) -> Deferred[StoredManifest | None]:
        def look() -> StoredManifest | Damage | None:
            found = self._lookup_index.manifest_type(digest, scope)
            if found is None:
                return None
            media_type, linked = found
            try:
                with open(self.path(digest), "rb") as file:
                    body = file.read()
                    checked = FileIdentity.of(os.fstat(file.fileno()))
            except FileNotFoundError:
                return Damage(digest, "the file is missing", None)
            # Re-hashed on every read: a manifest is small, and a wrong one breaks a whole pull.
            if not manifest_matches(body, digest, (media_type,)):
                return Damage(digest, "its bytes do not match the manifest's digest", checked)
            return StoredManifest(digest, media_type, body, linked)

        def found(stored: StoredManifest | Damage | None) -> StoredManifest | None:
            if isinstance(stored, Damage):
                self.drop_damaged(stored)
                return None
            if stored is not None:
                self.touch(digest)
            return stored

        return self._lookup(look, None).addCallback(found)

    def put_manifest(
        self, digest: str, media_type: str, body: bytes, scope: Scope
    ) -> Deferred[bool]:
        def store() -> bool:
            temp, file = layout.new_temp(self.directory)
            try:
                with file:
                    layout.write_all(file, body)
            except OSError:
                temp.unlink()  # a partial file (the disk filled) is never left behind
                raise
            final = self.path(digest)
            existed = final.exists()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
            try:
                return self._write_index.add_blob(digest, len(body), scope, media_type, now)
            except sqlite3.Error:
                if not existed:  # a file the index does not know would escape max_size
                    final.unlink(missing_ok=True)
                raise

        def stored(new: bool | None) -> bool:
            if new:
                self._total += len(body)
                self._entries += 1
            return new is not None

        now = self._now()
        return self._write(store).addCallback(stored)

    def tag(self, scope: Scope, tag: str) -> Deferred[TagEntry | None]:
        return self._lookup(lambda: self._lookup_index.tag(scope, tag), None)

    def set_tag(self, scope: Scope, tag: str, digest: str) -> Deferred[None]:
        d = self._write(self._write_index.set_tag, scope, tag, digest, self._now())
        return d.addCallback(lambda _: None)

    def drop_tag(self, scope: Scope, tag: str) -> Deferred[None]:
        return self._write(self._write_index.drop_tag, scope, tag).addCallback(lambda _: None)

    # Housekeeping

    def touch(self, digest: str) -> None:
        self._touched[digest] = self._now()

    def flush(self) -> Deferred[None]:
        if not self._open:
            return succeed(None)
        return self._flush()

    def _flush(self) -> Deferred[None]:
        touched, self._touched = self._touched, {}
        if not touched:
            return succeed(None)
        # Access times are advisory: a batch lost to an error only ages those blobs.
        d = self._write(self._write_index.touch, list(touched.items()))
        return d.addCallback(lambda _: None)

    def evict(self, busy: set[str]) -> Deferred[int]:
        """Remove least recently used blobs until the cache is below its low-water mark."""
        if not self._open or self._evicting or not self._owner:
            # One run at a time: a second, sized from the same total, would remove as much again.
            # And in the directory's owner only: it alone knows what all its readers hold.
            return succeed(0)
        self._evicting = True
        keep = busy | set(self._readers)

        def remove() -> tuple[tuple[int, int], dict[str, int]]:
            # Counted afresh: other workers stored blobs, `dockermirror cache verify` may have
            # dropped some.
            totals = self._write_index.totals()
            total = totals[1]
            if total <= self.max_size:
                return totals, {}
            excess = total - int(self.max_size * _LOW_WATER)
            victims: list[str] = []
            freed = 0
            for digest, size in self._write_index.least_recently_used():
                if freed >= excess:
                    break
                if digest not in keep:
                    victims.append(digest)
                    freed += size
            for digest in victims:
                # A reader that opened the file before keeps its bytes: unlink does not touch them.
                self.path(digest).unlink(missing_ok=True)
            return totals, self._write_index.forget(victims)

        def removed(result: tuple[tuple[int, int], dict[str, int]] | None) -> int:
            if result is None:
                return 0
            (self._entries, self._total), victims = result
            if not victims:
                return 0
            freed = self._dropped(victims)
            self._evicted += len(victims)
            log.info(
                "cache eviction: removed {count} blobs, {freed} bytes; {total} bytes cached",
                count=len(victims),
                freed=freed,
                total=self._total,
            )
            return len(victims)

        def done(result: T) -> T:
            self._evicting = False
            return result

        d = self._flush().addCallback(lambda _: self._write(remove)).addCallback(removed)
        return d.addBoth(done)

    # Damage, and the scrub

    def drop_damaged(self, damage: Damage) -> Deferred[None]:
        """Drop a file found damaged, file and rows, so that it is fetched again."""

        def dropped(sizes: dict[str, int] | None) -> None:
            if sizes:
                self._dropped(sizes)
                log.warn(
                    "cache damage: dropped {digest} ({problem}); it will be fetched again",
                    digest=damage.digest,
                    problem=damage.problem,
                )

        d = self._write(drop, self._write_index, self.path(damage.digest), damage)
        return d.addCallback(dropped)

    def least_recently_verified(self) -> Deferred[tuple[Stored, float] | None]:
        """The stored blob checked longest ago, and when (clock seconds; 0 for never)."""
        return self._lookup(self._lookup_index.least_recently_verified, None)

    def mark_verified(self, digest: str) -> Deferred[None]:
        d = self._write(self._write_index.mark_verified, digest, self._now())
        return d.addCallback(lambda _: None)

    def _dropped(self, sizes: dict[str, int]) -> int:
        for digest in sizes:
            self._touched.pop(digest, None)
        freed = sum(sizes.values())
        self._total -= freed
        self._entries -= len(sizes)
        return freed

    # Running blocking work off the reactor

    def _now(self) -> float:
        return self._clock.seconds()

    def _lookup(self, f: Callable[[], T], default: T) -> Deferred[T]:
        """A lookup on the lookup thread; a failing disk or index answers ``default``."""
        if not self._open:
            return succeed(default)

        def failed(failure: Failure) -> T:
            failure.trap(*_STORAGE_ERRORS)
            log.error("cache lookup failed: {error}", error=failure.getErrorMessage())
            return default

        return self._lookups.run(self._lookup_index.retrying, f).addErrback(failed)

    def _write(self, f: Callable[..., T], *args: object) -> Deferred[T | None]:
        """A write on the write thread; a failure is reported and the write dropped."""
        if not self._open:
            return succeed(None)

        def failed(failure: Failure) -> None:
            failure.trap(*_STORAGE_ERRORS)
            error = failure.value
            assert isinstance(error, Exception)
            if _locked(error):
                # Another process held the index past the busy timeout: the disk is fine,
                # so only this write is lost, not a minute of caching.
                log.warn("cache index busy; a write was dropped: {error}", error=str(error))
                return
            self.report_write_failure(error)

        d: Deferred[T | None] = self._writes.run(self._write_index.retrying, f, *args)
        return d.addErrback(failed)


def _locked(error: Exception) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


class _FileReader:
    """Positional reads (no shared file position), so ``sendfile`` and reads can take turns."""

    def __init__(self, fd: int, on_close: Callable[[], None]) -> None:
        self._fd = fd
        self._on_close = on_close
        self._closed = False

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def fileno(self) -> int | None:
        return self._fd

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            self._on_close()


class _PendingBlob:
    """A blob being downloaded into ``tmp/``; renamed under its digest on commit.

    With a claim, the file is the one other processes follow (``tmp/KEY.part``),
    and the claim is released once the blob is renamed (or dropped).
    """

    def __init__(
        self,
        storage: FilesystemStorage,
        digest: str,
        size: int,
        scope: Scope,
        claim: sharing.FillClaim | None = None,
    ) -> None:
        self._storage = storage
        self._digest = digest
        self._size = size
        self._scope = scope
        self._claim = claim
        if claim is None:
            self._path, self._file = layout.new_temp(storage.directory)
        else:
            self._path, self._file = layout.new_temp(storage.directory, claim.part.name)
        self._committed = False

    def write(self, data: bytes) -> None:
        try:
            # Unbuffered: readers open the file by name and must see every byte written.
            layout.write_all(self._file, data)
        except OSError as e:
            self._storage.report_write_failure(e)
            raise

    def reader(self) -> BlobReader:
        # After the rename, _path names the final file: later readers open that.
        return self._storage._reader(self._path, self._digest)

    def commit(self) -> Deferred[None]:
        final = self._storage.path(self._digest)
        try:
            self._file.close()
            final.parent.mkdir(parents=True, exist_ok=True)
            existed = final.exists()
            os.replace(self._path, final)
        except OSError as e:
            self._storage.report_write_failure(e)
            self.discard()
            return fail(e)
        self._path, self._committed = final, True
        self._release()
        return self._storage._index_blob(
            self._digest, self._size, self._scope, None if existed else final
        )

    def discard(self) -> None:
        # Closing flushes what a full disk refused before, and fails again; the file goes anyway.
        with contextlib.suppress(OSError):
            self._file.close()
        if not self._committed:
            self._path.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None


class _ForeignWrite:
    """Another process's download, with readers from this storage."""

    def __init__(self, storage: FilesystemStorage, fill: sharing.ForeignFill, digest: str) -> None:
        self._storage = storage
        self._fill = fill
        self._digest = digest

    def size(self) -> int | None:
        return self._fill.size()

    def progress(self) -> tuple[int, sharing.FillState]:
        return self._fill.progress()

    def reader(self) -> BlobReader:
        fd = self._fill.open()
        if fd is None:
            raise FileNotFoundError(f"no file of {self._digest} yet")
        self._storage._readers[self._digest] += 1
        return _FileReader(os.dup(fd), lambda: self._storage._reader_closed(self._digest))

    def close(self) -> None:
        self._fill.close()
