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

When storage fails mid-download (the disk filled), the clients go on streaming
from the upstream, as an uncached pull would: the partial file is dropped (the
readers' open files keep what they still need of it), and the rest of the
download is held in memory until the slowest reader has it, the upstream
paused while more than ``THROUGH_BUFFER`` bytes wait.  Clients that come later
fetch the blob themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol, Self, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dockermirror.registry.model import ByteStream
from dockermirror.storage.interface import BlobReader, BlobWriter, ForeignWrite, Scope
from dockermirror.storage.sharing import FillState

log = Logger()

# Readers following a fill are woken once per this many new bytes, not once per network read:
# with many readers, per-read wake-ups cost more than the copying.  On a slow upstream, at
# least this often, so that a reader's no-progress timer sees the progress.
NOTIFY_EVERY = 512 * 1024
NOTIFY_SECONDS = 1.0
# Streaming through after a storage failure: the upstream pauses while this much waits in memory.
THROUGH_BUFFER = 1024 * 1024
# Fills that go on with no client at once (see DetachedSlots).
DETACHED_FILLS = 16
# How often another worker's download is looked at (its file's size, its claim).
POLL_INTERVAL = 0.05


class FillFailed(Exception):
    pass


class DetachedSlots:
    """How many fills may go on with no client at once.

    A fill whose clients left goes on to fill the cache; without a bound, a
    client that asks for many blobs and hangs up at once would start as many
    downloads, each holding a file and an upstream connection, past every
    connection cap.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> bool:
        if self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def give(self) -> None:
        self.taken -= 1


class _Followed:
    """What readers follow of a download of ``digest`` (``size`` bytes) for ``scope``: its
    state, bytes announced as they arrive, and its end."""

    RUNNING, COMPLETE, FAILED = "running", "complete", "failed"

    def __init__(self, digest: str, scope: Scope, size: int) -> None:
        self.digest = digest
        self.scope = scope
        self.size = size
        self.state = self.RUNNING
        self.problem: str | None = None
        self._announced = 0
        self._listeners: list[Callable[[], None]] = []
        self._ended: list[Callable[[Self], None]] | None = []

    @property
    def announced(self) -> int:
        """Bytes readers were told of (in storage, or held when streaming through)."""
        return self._announced

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever bytes arrive or the download ends."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def when_ended(self, callback: Callable[[Self], None]) -> None:
        """Call ``callback`` once the download failed, or its blob is stored (or cannot be)."""
        if self._ended is not None:
            self._ended.append(callback)

    def _tell_listeners(self) -> None:
        for callback in list(self._listeners):
            callback()

    def _end(self: Self) -> None:
        ended, self._ended = self._ended, None
        for callback in ended or ():
            callback(self)


@implementer(IConsumer)
class Fill(_Followed):
    """One download of ``digest`` (``size`` bytes) into ``writer``, fetched under ``scope``."""

    def __init__(
        self,
        writer: BlobWriter,
        digest: str,
        scope: Scope,
        size: int,
        detached_max: int,
        clock: IReactorTime,
        slots: DetachedSlots,
    ) -> None:
        super().__init__(digest, scope, size)
        self.written = 0
        self._writer = writer
        self._detached_max = detached_max
        self._slots = slots
        self._detached = False  # holding one of the slots
        self._clock = clock
        self._announced_at = clock.seconds()
        # Each reader's position: after a storage failure, memory is freed up to the lowest.
        self._readers: dict[Hashable, int] = {}
        self._transfer: Deferred[None] | None = None
        self._producer: IPushProducer | None = None
        self._paused = False
        # Streaming through: the bytes on disk (readable by readers who opened the file), then
        # those held in memory, from offset _held_from on.
        self.on_disk: int | None = None
        self._held = bytearray()
        self._held_from = 0

    def start(self, stream: ByteStream) -> None:
        self._transfer = stream.deliver(self)
        self._transfer.addCallbacks(self._received, self._failed)
        # The clients that asked join in this turn of the reactor; if none did (the range they
        # asked for is past the end, they left while the upstream answered), none will.
        self._clock.callLater(0, self._check_detached)

    def reader(self) -> BlobReader:
        return self._writer.reader()

    def reader_joined(self, reader: Hashable, position: int) -> None:
        self._readers[reader] = position
        self._attached()

    def reader_moved(self, reader: Hashable, position: int) -> None:
        self._readers[reader] = position
        self._release()

    def reader_left(self, reader: Hashable) -> None:
        self._readers.pop(reader, None)
        self._release()
        self._check_detached()

    @property
    def held(self) -> int:
        """Bytes held in memory for readers (only while streaming through)."""
        return len(self._held)

    def read_held(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position``, past ``on_disk``, of those held in memory."""
        start = position - self._held_from
        return bytes(self._held[start : start + size]) if start >= 0 else b""

    def _check_detached(self) -> None:
        if self._readers or self.state != self.RUNNING:
            return
        if self.on_disk is not None:
            self._abort("no client left, and the blob cannot be stored")
        elif self.size > self._detached_max:
            self._abort(f"no client left and the blob is larger than {self._detached_max} bytes")
        elif not self._detached:
            if not self._slots.take():
                self._abort(f"no client left and {self._slots.limit} such downloads go on")
                return
            self._detached = True

    def _attached(self) -> None:
        """A client follows the fill again, or it ended: it gives its slot back."""
        if self._detached:
            self._detached = False
            self._slots.give()

    # IConsumer: the upstream stream writes here.  It is paused only when streaming through.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if streaming:
            self._producer = cast(IPushProducer, producer)

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        if self.state != self.RUNNING:
            return
        if self.on_disk is None:
            try:
                self._writer.write(data)
            except OSError as e:
                self._stream_through(e)
        if self.on_disk is not None:
            self._hold(data)
            return
        self.written += len(data)
        if (
            self.written - self._announced >= NOTIFY_EVERY
            or self._clock.seconds() - self._announced_at >= NOTIFY_SECONDS
        ):
            self._notify()

    def _stream_through(self, error: OSError) -> None:
        """Storage failed: drop the partial file; readers go on with the upstream's bytes."""
        self.on_disk = self._held_from = self.written
        log.warn(
            "cache fill of {digest} cannot be stored ({problem}) after {written} of {size}"
            " bytes; its {readers} clients go on streaming from the upstream",
            digest=self.digest,
            problem=error.strerror or str(error),
            written=self.written,
            size=self.size,
            readers=len(self._readers),
        )
        self._writer.discard()
        self._end()  # later clients fetch the blob themselves
        # As at the start: the readers that asked may not have joined yet.
        self._clock.callLater(0, self._check_detached)

    def _hold(self, data: bytes) -> None:
        self._held += data
        self.written += len(data)
        if len(self._held) > THROUGH_BUFFER and self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        self._notify()

    def _release(self) -> None:
        """Free held bytes every reader has; resume the upstream once few are left."""
        if self.on_disk is None:
            return
        lowest = min(self._readers.values(), default=self.written)
        if lowest > self._held_from:
            del self._held[: lowest - self._held_from]
            self._held_from = lowest
        if self._paused and len(self._held) <= THROUGH_BUFFER and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()

    def _received(self, _: None) -> None:
        if self.state != self.RUNNING:
            return
        if self.written != self.size:
            self._fail(f"upstream sent {self.written} of {self.size} bytes")
            return
        self.state = self.COMPLETE
        self._attached()
        self._notify()
        if self.on_disk is None:
            self._writer.commit().addBoth(lambda _: self._end())

    def _failed(self, failure: Failure) -> None:
        if self.state == self.RUNNING:
            self._fail(failure.getErrorMessage())

    def _abort(self, problem: str) -> None:
        self._fail(problem)
        if self._transfer is not None:
            self._transfer.cancel()

    def _fail(self, problem: str) -> None:
        self.state, self.problem = self.FAILED, problem
        self._attached()
        log.warn("cache fill of {digest} failed: {problem}", digest=self.digest, problem=problem)
        self._writer.discard()
        self._held = bytearray()
        self._notify()
        self._end()

    def _notify(self) -> None:
        self._announced, self._announced_at = self.written, self._clock.seconds()
        self._tell_listeners()


class FillView(Protocol):
    """What a reader (:class:`~dockermirror.registry.streams.FileStream`) follows of a fill."""

    state: str
    size: int
    problem: str | None
    on_disk: int | None

    @property
    def announced(self) -> int: ...

    def listen(self, callback: Callable[[], None]) -> None: ...

    def unlisten(self, callback: Callable[[], None]) -> None: ...

    def reader_joined(self, reader: Hashable, position: int) -> None: ...

    def reader_moved(self, reader: Hashable, position: int) -> None: ...

    def reader_left(self, reader: Hashable) -> None: ...

    def read_held(self, position: int, size: int) -> bytes: ...


class RemoteFill(_Followed):
    """Another process's download of a blob into the shared cache (``--workers``), followed.

    Its file is polled: new bytes are announced to readers as they reach the
    disk, and the blob is complete once that process renamed it under its digest
    (which it does only when the digest matched).  Nothing is held in memory.
    """

    on_disk: int | None = None  # never streams through memory

    def __init__(
        self, foreign: ForeignWrite, digest: str, scope: Scope, size: int, clock: IReactorTime
    ) -> None:
        super().__init__(digest, scope, size)
        self._foreign = foreign
        self._poll = LoopingCall(self._check)
        self._poll.clock = clock
        self._poll.start(POLL_INTERVAL, now=True)

    def reader(self) -> BlobReader:
        return self._foreign.reader()

    # The other process downloads whatever readers do here: nothing to account for.

    def reader_joined(self, reader: Hashable, position: int) -> None:
        pass

    def reader_moved(self, reader: Hashable, position: int) -> None:
        pass

    def reader_left(self, reader: Hashable) -> None:
        pass

    def read_held(self, position: int, size: int) -> bytes:
        raise AssertionError("a remote fill holds nothing in memory")

    def _check(self) -> None:
        try:
            on_disk, state = self._foreign.progress()
        except OSError as e:
            on_disk, state = self._announced, FillState.FAILED
            self.problem = f"cannot follow the download in another worker: {e}"
        if on_disk > self._announced:
            self._announced = min(on_disk, self.size)
        if state is FillState.COMPLETE and on_disk == self.size:
            self.state = self.COMPLETE
        elif state is not FillState.RUNNING:
            self.state = self.FAILED
            self.problem = self.problem or "the download in another worker failed"
        self._tell_listeners()
        if self.state != self.RUNNING:
            if self._poll.running:
                self._poll.stop()
            self._foreign.close()
            self._end()
