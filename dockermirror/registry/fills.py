"""Filling the cache: one upstream download of a blob, read by every client that wants it.

A :class:`Fill` consumes the upstream's verified byte stream into a storage
writer.  Every client that wants the blob, the first one included, reads what
was written through its own :class:`~dockermirror.registry.streams.FileStream`,
at its own pace, starting at once.  The upstream is never paused for a slow
client: bytes go to storage, so one slow client cannot slow the others, and the
download goes on when clients leave (up to ``detached_fill_max``).

Nothing unverified looks complete: readers get a blob's last byte only once
the upstream stream has checked the digest, and are aborted if it fails.
Storing (the rename and the index row) happens after that and makes no client
wait.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dockermirror.registry.model import ByteStream
from dockermirror.storage.interface import BlobReader, BlobWriter, Scope

log = Logger()

# Readers following a fill are woken once per this many new bytes, not once per network read:
# with many readers, per-read wake-ups cost more than the copying.  On a slow upstream, at
# least this often, so that a reader's no-progress timer sees the progress.
NOTIFY_EVERY = 512 * 1024
NOTIFY_SECONDS = 1.0


class FillFailed(Exception):
    pass


@implementer(IConsumer)
class Fill:
    """One download of ``digest`` (``size`` bytes) into ``writer``, fetched under ``scope``."""

    RUNNING, COMPLETE, FAILED = "running", "complete", "failed"

    def __init__(
        self,
        writer: BlobWriter,
        digest: str,
        scope: Scope,
        size: int,
        detached_max: int,
        clock: IReactorTime,
    ) -> None:
        self.digest = digest
        self.scope = scope
        self.size = size
        self.state = self.RUNNING
        self.problem: str | None = None
        self.written = 0
        self._writer = writer
        self._detached_max = detached_max
        self._clock = clock
        self._announced = 0
        self._announced_at = clock.seconds()
        self._readers = 0
        self._listeners: list[Callable[[], None]] = []
        self._ended: list[Callable[[Fill], None]] = []
        self._transfer: Deferred[None] | None = None

    def start(self, stream: ByteStream) -> None:
        self._transfer = stream.deliver(self)
        self._transfer.addCallbacks(self._received, self._failed)
        # The clients that asked join in this turn of the reactor; if none did (the range they
        # asked for is past the end, they left while the upstream answered), none will.
        self._clock.callLater(0, self._check_detached)

    def reader(self, offset: int) -> BlobReader:
        return self._writer.reader(offset)

    @property
    def announced(self) -> int:
        """Bytes in storage that readers have been told of."""
        return self._announced

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever bytes arrive or the fill ends."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def when_ended(self, callback: Callable[[Fill], None]) -> None:
        """Call ``callback`` once the fill failed, or its blob is stored (or could not be)."""
        self._ended.append(callback)

    def reader_joined(self) -> None:
        self._readers += 1

    def reader_left(self) -> None:
        self._readers -= 1
        self._check_detached()

    def _check_detached(self) -> None:
        if not self._readers and self.state == self.RUNNING and self.size > self._detached_max:
            self._abort(f"no client left and the blob is larger than {self._detached_max} bytes")

    # IConsumer: the upstream stream writes here.  It is never paused: bytes go to storage.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        if self.state != self.RUNNING:
            return
        try:
            self._writer.write(data)
        except OSError as e:
            self._abort(f"cannot write to the cache: {e.strerror}")
            return
        self.written += len(data)
        if (
            self.written - self._announced >= NOTIFY_EVERY
            or self._clock.seconds() - self._announced_at >= NOTIFY_SECONDS
        ):
            self._notify()

    def _received(self, _: None) -> None:
        if self.state != self.RUNNING:
            return
        if self.written != self.size:
            self._fail(f"upstream sent {self.written} of {self.size} bytes")
            return
        self.state = self.COMPLETE
        self._notify()
        self._writer.commit().addBoth(self._stored)

    def _stored(self, result: Failure | None) -> None:
        for callback in self._ended:
            callback(self)

    def _failed(self, failure: Failure) -> None:
        if self.state == self.RUNNING:
            self._fail(failure.getErrorMessage())

    def _abort(self, problem: str) -> None:
        self._fail(problem)
        if self._transfer is not None:
            self._transfer.cancel()

    def _fail(self, problem: str) -> None:
        self.state, self.problem = self.FAILED, problem
        log.warn("cache fill of {digest} failed: {problem}", digest=self.digest, problem=problem)
        self._writer.discard()
        self._notify()
        for callback in self._ended:
            callback(self)

    def _notify(self) -> None:
        self._announced, self._announced_at = self.written, self._clock.seconds()
        for callback in list(self._listeners):
            callback()
