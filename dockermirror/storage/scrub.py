"""The scrub: stored blobs re-hashed in the background, and dropped when they no longer match.

A disk can rot, and files can be changed behind the mirror's back; a manifest
is re-hashed on each read, but a layer only here (hashing every hit would cost
as much as serving it).  One blob at a time, oldest-checked first (the index
keeps when each was last found good, so a restart goes on where the last run
stopped, and blobs of an older cache, never checked, come first).  Reading is
paced to ``rate`` bytes a second on average, one chunk per call on a thread of
its own, so the index, the reactor and clients' reads are never held up, and
each blob is checked at most once per ``RECHECK_AFTER``: a scrub that never
rested would keep the disk busy and push the blobs clients pull out of the
page cache.  Blobs being read or filled are not skipped: reading beside a client
costs it nothing, and a file stored afresh while it was being checked is never
dropped for what the old one held (see :func:`~dockermirror.storage.verify.drop`).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.verify import FileCheck, Stored
from dockermirror.storage.workers import Worker

log = Logger()

# The first round waits for start-up's own work (clients reconnecting, the first fills).
START_DELAY = 60.0
RECHECK_AFTER = 24 * 3600.0
# After a failure, or while the index cannot be written, the scrub tries again this much later.
RETRY = 60.0
# How far behind its pace the reading may fall and still catch up.
CATCH_UP = 1.0


class Scrub:
    def __init__(
        self, storage: FilesystemStorage, clock: IReactorTime, rate: int, worker: Worker
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._rate = rate
        self._worker = worker
        self._next: IDelayedCall | None = None
        self._check: FileCheck | None = None
        self._running = False
        # When the bytes read so far may have been read at ``rate``: the next read waits for it.
        self._due = 0.0
        self.checked = 0

    def start(self) -> None:
        self._worker.start()
        self._running = True
        log.info(
            "cache scrub: re-hashing cached blobs at {rate} bytes/s, each once per {hours:g}h",
            rate=self._rate,
            hours=RECHECK_AFTER / 3600,
        )
        self._later(START_DELAY, self._choose)

    def stop(self) -> None:
        """Stop; a chunk being read is finished (the worker waits for it), then the file closed."""
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._worker.stop()
        if self._check is not None:
            self._check.close()
            self._check = None

    def _later(self, seconds: float, step: Callable[[], None]) -> None:
        if self._running:
            self._next = self._clock.callLater(max(0.0, seconds), step)

    def _choose(self) -> None:
        if not self._storage.writable():
            # What it found could not be noted: it would check the same blob again and again.
            self._later(RETRY, self._choose)
            return
        d = self._storage.least_recently_verified()
        d.addCallbacks(self._chosen, self._failed)

    def _chosen(self, found: tuple[Stored, float] | None) -> None:
        if not self._running:
            return
        if found is None:
            self._later(RECHECK_AFTER, self._choose)
            return
        stored, verified = found
        wait = verified + RECHECK_AFTER - self._clock.seconds()
        if wait > 0:
            self._later(wait, self._choose)
            return
        self._check = FileCheck(self._storage.path(stored.digest), stored)
        # Opened, then read when the pace allows: the last chunk read may be a moment ago.
        self._worker.run(self._check.open).addCallbacks(lambda _: self._read(0), self._failed)

    def _step(self) -> None:
        assert self._check is not None
        self._worker.run(self._check.step).addCallbacks(self._read, self._failed)

    def _read(self, size: int) -> None:
        check = self._check
        if not self._running or check is None:
            return
        now = self._clock.seconds()
        # Paced from when the read was due, not from when it ended (which would lose the time
        # each read takes); a longer lag (a slow disk, a rest) is forgiven, not made up in a burst.
        if now - self._due > CATCH_UP:
            self._due = now
        self._due += size / self._rate
        if not check.done:
            self._later(self._due - now, self._step)
            return
        self._check = None
        self.checked += 1
        if check.damage is not None:
            d = self._storage.drop_damaged(check.damage)
        else:
            d = self._storage.mark_verified(check.stored.digest)
        d.addCallbacks(lambda _: self._later(0, self._choose), self._failed)

    def _failed(self, failure: Failure) -> None:
        if self._check is not None:
            self._check.close()
            self._check = None
        log.failure("cache scrub failed; trying again in {seconds:.0f}s", failure, seconds=RETRY)
        self._later(RETRY, self._choose)
