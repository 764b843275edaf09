"""Filling the cache from the upstream, and serving cached or still-filling blobs to clients.

A :class:`Fill` is the one upstream download of a blob.  It writes to a
temporary file and hashes as it goes; every client that wants the blob, the
first one included, reads that file through its own :class:`FileStream`, at
its own pace, starting at once.  The upstream is never paused for a slow
client: bytes go to disk, so one slow client cannot slow the others, and the
download goes on when clients leave (up to ``detached_fill_max``).

Nothing unverified looks complete: a stream holds back a blob's last byte
until the fill's digest check passed, and is aborted if it fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from dockermirror.reference import new_hasher
from dockermirror.storage import BlobStorage
from dockermirror.streaming import UpstreamBody

log = Logger()

CHUNK = 64 * 1024
# Readers following a fill are woken once per this many new bytes, not once per network read:
# with many readers, per-read wake-ups cost more than the copying.
NOTIFY_EVERY = 512 * 1024


class Fill:
    """One upstream download of ``digest`` into the store, for ``upstream`` (an identity)."""

    RUNNING, COMPLETE, FAILED = "running", "complete", "failed"

    def __init__(
        self,
        store: BlobStorage,
        digest: str,
        upstream: str,
        size: int,
        clock: IReactorTime,
        idle_timeout: float,
        detached_max: int,
    ) -> None:
        self.store = store
        self.digest = digest
        self.upstream = upstream
        self.size = size
        self.written = 0
        self._announced = 0
        self.state = self.RUNNING
        self.readers = 0
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._detached_max = detached_max
        self.temp, self._file = store.new_temp()
        self._hasher = new_hasher(digest)
        self._listeners: list[Callable[[], None]] = []
        self._receiver: _Receiver | None = None
        self._timer: IDelayedCall | None = None
        self._ended: list[Callable[[Fill], None]] = []

    def start(self, response: IResponse) -> None:
        self._receiver = _Receiver(self)
        self._timer = self._clock.callLater(self._idle_timeout, self._idle)
        response.deliverBody(self._receiver)

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever bytes arrive or the fill ends."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def when_ended(self, callback: Callable[[Fill], None]) -> None:
        self._ended.append(callback)

    @property
    def announced(self) -> int:
        """Bytes on disk that readers have been told of."""
        return self._announced

    def reader_joined(self) -> None:
        self.readers += 1

    def reader_left(self) -> None:
        self.readers -= 1
        if self.readers == 0 and self.state == self.RUNNING and self.size > self._detached_max:
            self._abort(f"no client left and the blob is larger than {self._detached_max} bytes")

    def _write(self, data: bytes) -> None:
        if self.state != self.RUNNING:
            return
        try:
            self._file.write(data)
            # Readers open the file by name and must see every byte written so far.
            self._file.flush()
        except OSError as e:
            self.store.report_write_failure(e)
            self._abort(f"cannot write to the cache: {e.strerror}")
            return
        self._hasher.update(data)
        self.written += len(data)
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        if self.written - self._announced >= NOTIFY_EVERY:
            self._notify()

    def _finished(self, reason: Failure) -> None:
        if self.state != self.RUNNING:
            return
        problem = None
        actual = f"{self.digest.partition(':')[0]}:{self._hasher.hexdigest()}"
        if not reason.check(ResponseDone, PotentialDataLoss):
            problem = f"upstream body failed: {reason.getErrorMessage()}"
        elif self.written != self.size:
            problem = f"upstream sent {self.written} of {self.size} bytes"
        elif actual != self.digest:
            problem = f"upstream bytes have digest {actual}"
        if problem is not None:
            self._end(self.FAILED, problem)
            return
        try:
            self._file.close()
            self.store.commit(self.temp, self.digest, self.size, self.upstream)
        except (OSError, ValueError) as e:
            self.store.report_write_failure(e)
            self._end(self.FAILED, f"cannot store the blob: {e}")
            return
        self._end(self.COMPLETE, None)

    def _abort(self, problem: str) -> None:
        self._end(self.FAILED, problem)
        if self._receiver is not None and self._receiver.transport is not None:
            self._receiver.upstream().stopProducing()

    def _idle(self) -> None:
        self._timer = None
        self._abort(f"no progress from the upstream for {self._idle_timeout}s")

    def _end(self, state: str, problem: str | None) -> None:
        self.state = state
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if state == self.FAILED:
            log.warn(
                "cache fill of {digest} failed: {problem}", digest=self.digest, problem=problem
            )
            self._file.close()
            self.temp.unlink(missing_ok=True)
        self._notify()
        for callback in self._ended:
            callback(self)

    def _notify(self) -> None:
        self._announced = self.written
        for callback in list(self._listeners):
            callback()


class _Receiver(UpstreamBody):
    def __init__(self, fill: Fill) -> None:
        self._fill = fill

    def dataReceived(self, data: bytes) -> None:
        self._fill._write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._fill._finished(reason)


@attrs.frozen
class ByteRange:
    first: int
    last: int  # inclusive

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class Unsatisfiable(Exception):
    pass


_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


def parse_range(header: bytes | None, size: int) -> ByteRange | None:
    """A single byte range of a ``size``-byte blob; None for the whole blob.

    Several ranges, or a header this does not understand, give the whole blob, as
    RFC 9110 allows.  A range wholly past the end raises :class:`Unsatisfiable`.
    """
    if header is None:
        return None
    match = _RANGE.match(header.decode("latin-1").strip())
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:  # the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if match[2] and last < first:
        return None  # invalid: RFC 9110 says to ignore it
    if first >= size:
        raise Unsatisfiable()
    return ByteRange(first, min(last, size - 1))


@implementer(IPushProducer)
class FileStream:
    """Writes bytes ``[first, last]`` of a stored or filling blob to one client request."""

    def __init__(
        self,
        request: Request,
        path: Path,
        byte_range: ByteRange,
        fill: Fill | None,
        clock: IReactorTime,
        idle_timeout: float,
        on_close: Callable[[], None],
    ) -> None:
        self._request = request
        self._file: BinaryIO = open(path, "rb")
        self._file.seek(byte_range.first)
        self._position = byte_range.first
        self._end = byte_range.last + 1
        self._fill = fill
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._on_close = on_close
        self._paused = False
        self._closed = False
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        self._request.notifyFinish().addErrback(lambda _: self._close())
        self._request.registerProducer(self, True)
        if self._fill is not None:
            self._fill.reader_joined()
            self._fill.listen(self._pump)
        self._timer = self._clock.callLater(self._idle_timeout, self._idle)
        self._pump()

    def _available(self) -> int:
        fill = self._fill
        if fill is None or fill.state == Fill.COMPLETE:
            return self._end
        # The last byte waits for the digest check: with it, a client would have it all.
        return min(self._end, fill.announced, fill.size - 1)

    def _pump(self) -> None:
        while not self._paused and not self._closed:
            if self._fill is not None and self._fill.state == Fill.FAILED:
                self._abort()
                return
            if self._position >= self._end:
                self._finish()
                return
            available = self._available()
            if self._position >= available:
                return  # the fill will call again when bytes arrive
            chunk = self._file.read(min(CHUNK, available - self._position))
            if not chunk:
                self._abort()
                return
            self._position += len(chunk)
            if self._timer is not None and self._timer.active():
                self._timer.reset(self._idle_timeout)
            self._request.write(chunk)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._close()

    def _finish(self) -> None:
        self._request.unregisterProducer()
        self._request.finish()
        self._close()

    def _abort(self) -> None:
        self._request.unregisterProducer()
        channel = self._request.channel
        if channel is not None:
            channel.forceAbortClient()
        self._close()

    def _idle(self) -> None:
        self._timer = None
        log.warn(
            "no progress for {seconds}s sending a cached blob; giving up",
            seconds=self._idle_timeout,
        )
        self._abort()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._file.close()
        if self._fill is not None:
            self._fill.unlisten(self._pump)
            self._fill.reader_left()
        self._on_close()
