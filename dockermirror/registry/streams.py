"""Sending a stored or filling blob to a consumer, with backpressure and a no-progress timer."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from zope.interface import implementer

from dockermirror.registry.fills import Fill, FillFailed, FillView
from dockermirror.registry.model import ByteRange, FileSender
from dockermirror.storage.interface import BlobReader
from dockermirror.timers import IdleTimer

CHUNK = 64 * 1024


class ConsumerStalled(Exception):
    """The consumer read nothing for the idle timeout."""


@implementer(IPushProducer)
class FileStream:
    """Bytes ``[first, last]`` of a blob from a storage reader, following a fill when given one."""

    def __init__(
        self,
        reader: BlobReader,
        byte_range: ByteRange,
        fill: FillView | None,
        clock: IReactorTime,
        idle_timeout: float,
    ) -> None:
        self._reader = reader
        self._position = byte_range.first
        self._end = byte_range.last + 1
        self._fill = fill
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._consumer: IConsumer | None = None
        # The consumer's sendfile, when it has one and the blob is a local file.
        self._send_file: Callable[[int, int, int], int | None] | None = None
        self._idle: IdleTimer | None = None
        self._done: Deferred[None] = Deferred(lambda _: self._close())
        self._paused = False
        self._closed = False

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        if isinstance(consumer, FileSender) and self._reader.fileno() is not None:
            self._send_file = consumer.send_file
        consumer.registerProducer(self, True)
        if self._fill is not None:
            self._fill.reader_joined(self, self._position)
            self._fill.listen(self._pump)
        self._idle = IdleTimer(
            self._clock,
            self._idle_timeout,
            lambda: self._fail(ConsumerStalled(f"no progress for {self._idle_timeout:g}s")),
        )
        self._pump()
        return self._done

    def _available(self) -> int:
        fill = self._fill
        if fill is None or fill.state == Fill.COMPLETE:
            return self._end
        # The last byte waits for the digest check: with it, a client would have it all.
        return min(self._end, fill.announced, fill.size - 1)

    def _pump(self) -> None:
        while not self._paused and not self._closed:
            if self._fill is not None and self._fill.state == Fill.FAILED:
                self._fail(FillFailed(self._fill.problem))
                return
            if self._position >= self._end:
                self._finish()
                return
            available = self._available()
            if self._position >= available:
                return  # the fill will call again when bytes arrive
            sent = self._send(available)
            if sent is not None:
                if sent:
                    self._moved(sent)
                continue
            chunk = self._read(min(CHUNK, available - self._position))
            if not chunk:
                self._fail(FillFailed("the stored blob is shorter than its size"))
                return
            assert self._consumer is not None
            self._consumer.write(chunk)
            self._moved(len(chunk))

    def _moved(self, count: int) -> None:
        assert self._idle is not None
        self._position += count
        self._idle.progress()
        if self._fill is not None:
            self._fill.reader_moved(self, self._position)

    def _send(self, available: int) -> int | None:
        """Bytes sent by the consumer's sendfile, straight from the file; None: read instead.

        When the socket takes fewer than were there, this stream pauses until the
        consumer resumes it.
        """
        fill = self._fill
        end = available
        if fill is not None and fill.on_disk is not None:
            end = min(end, fill.on_disk)  # the rest is in the fill's memory, not the file
        fd = self._reader.fileno()
        if self._send_file is None or fd is None or self._position >= end:
            return None
        try:
            sent = self._send_file(fd, self._position, end - self._position)
        except OSError as e:
            self._fail(e)
            return 0
        if sent is not None and sent < end - self._position:
            self._paused = True
        return sent

    def _read(self, size: int) -> bytes:
        fill = self._fill
        # Once a fill streams through, what reached the disk is in the (dropped) file this
        # reader opened, and the rest in the fill's memory.
        if fill is None or fill.on_disk is None or self._position < fill.on_disk:
            return self._reader.read(self._position, size)
        return fill.read_held(self._position, size)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._close()

    def _finish(self) -> None:
        assert self._consumer is not None
        self._consumer.unregisterProducer()
        self._close()
        self._done.callback(None)

    def _fail(self, problem: Exception) -> None:
        assert self._consumer is not None
        self._consumer.unregisterProducer()
        self._close()
        self._done.errback(problem)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
        self._reader.close()
        if self._fill is not None:
            self._fill.unlisten(self._pump)
            self._fill.reader_left(self)
