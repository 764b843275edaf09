"""The one way an upstream body is read: a no-progress timer, an optional deadline, a stop.

:class:`TimedBody` receives a response body and hands it to a :class:`BodySink`.
Bounded reads (manifests, tokens, error bodies: :func:`collect`) and streams
(blobs to a client or into the cache) are both sinks, so a stalled, truncated
or abandoned body ends the same way everywhere: the sink hears of it once, as a
:class:`~dockermirror.errors.RegistryError` (504 for a stall, 502 for a body cut
short), and the upstream connection is closed.

The body is also an ``IPushProducer``: a stream registers it with its consumer,
so a slow client pauses the upstream socket and memory stays flat.
"""

from __future__ import annotations

from typing import Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from dockermirror.timers import IdleTimer
from dockermirror.upstream.errors import upstream_error


class BodyTooLarge(Exception):
    """A bounded body passed its limit; the caller words the error for the client."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class BodySink(Protocol):
    def body_data(self, data: bytes) -> None: ...

    def body_end(self, problem: Exception | None) -> None:
        """The body ended: cleanly (None), or with the reason it did not."""


@implementer(IPushProducer)
class TimedBody(TwistedProtocol):
    """Receives one upstream response body for a sink; gives up when it stops moving.

    ``idle_timeout`` counts time without a byte, whether the upstream is silent
    or a paused consumer stopped reading; ``deadline`` (for small bodies) bounds
    the whole read.  :meth:`stopProducing` ends the read without telling the
    sink: the sink asked for it.
    """

    def __init__(
        self,
        sink: BodySink,
        clock: IReactorTime,
        registry: str,
        idle_timeout: float,
        deadline: float | None = None,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._registry = registry
        self._idle_timeout = idle_timeout
        self._deadline_seconds = deadline
        self._idle: IdleTimer | None = None
        self._deadline: IDelayedCall | None = None
        self._ended = False

    def connectionMade(self) -> None:
        if self._ended:  # stopped before the body began
            self._upstream().stopProducing()
            return
        self._idle = IdleTimer(
            self._clock,
            self._idle_timeout,
            lambda: self._give_up(504, f"no progress for {self._idle_timeout:g}s"),
        )
        if self._deadline_seconds is not None:
            self._deadline = self._clock.callLater(
                self._deadline_seconds,
                self._give_up,
                504,
                f"body not complete after {self._deadline_seconds:g}s",
            )

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        if self._idle is not None:
            self._idle.progress()
        self._sink.body_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        if self._ended:
            return
        self._ended = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self._sink.body_end(None)
        else:
            problem = "the connection ended before the body did"
            self._sink.body_end(upstream_error(self._registry, 502, problem))

    def fail(self, problem: Exception) -> None:
        """End the read with ``problem`` for the sink, and close the upstream connection."""
        if self._ended:
            return
        self._ended = True
        self._cancel_timers()
        self._sink.body_end(problem)
        if self.transport is not None:
            self._upstream().stopProducing()

    # IPushProducer, for the consumer the sink writes to.

    def pauseProducing(self) -> None:
        if self.transport is not None and not self._ended:
            self._upstream().pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None and not self._ended:
            self._upstream().resumeProducing()

    def stopProducing(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_timers()
        if self.transport is not None:
            self._upstream().stopProducing()

    def _give_up(self, status: int, problem: str) -> None:
        self._idle = self._deadline = None
        self.fail(upstream_error(self._registry, status, problem))

    def _cancel_timers(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._idle = self._deadline = None

    def _upstream(self) -> IPushProducer:
        return cast(IPushProducer, self.transport)


class Collector:
    """A sink that keeps a whole body of at most ``limit`` bytes; ``done`` fires with it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done: Deferred[bytes] = Deferred()
        self.body: TimedBody | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def body_data(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            assert self.body is not None
            self.body.fail(BodyTooLarge(self.limit))
            return
        self._parts.append(data)

    def body_end(self, problem: Exception | None) -> None:
        if problem is None:
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(problem)
