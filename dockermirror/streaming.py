"""Moving upstream response bodies: bounded reads for small bodies, a backpressured pipe for blobs.

The pipe follows Twisted's producer/consumer idiom: the upstream transport is
registered as the client request's streaming producer, so a slow client pauses
the upstream socket and memory stays flat whatever the blob size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.reference import new_hasher

log = Logger()


class BodyTooLarge(Exception):
    pass


class UpstreamBody(Protocol):
    """A protocol that receives a response body; its transport pauses, resumes and stops it."""

    def upstream(self) -> IPushProducer:
        return cast(IPushProducer, self.transport)


class _BoundedCollector(UpstreamBody):
    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self._limit = limit
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self.upstream().stopProducing()
            if not self._done.called:
                self._done.errback(BodyTooLarge(self._limit))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def read_bounded(response: IResponse, limit: int) -> Deferred[bytes]:
    """The whole body, or BodyTooLarge once it passes ``limit`` bytes (the read is aborted)."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_BoundedCollector(limit, done))
    return done


def discard(response: IResponse) -> None:
    """Drop a body nobody needs; small ones are read so the connection can be reused."""
    read_bounded(response, 64 * 1024).addErrback(lambda _: None)


class BodyPipe(UpstreamBody):
    """Write an upstream body to a client request as it arrives.

    Finishes the request only when the upstream body ended cleanly and, when a
    digest is given, the bytes hash to it.  Otherwise the client connection is
    aborted, so a truncated or corrupt layer can never look complete.  When
    verifying, the latest chunk is held back until the digest is known: with a
    Content-Length, the client would otherwise have every byte before the check.
    """

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        idle_timeout: float,
        expected_digest: str | None = None,
    ) -> None:
        self._request = request
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._expected = expected_digest
        self._hasher = new_hasher(expected_digest) if expected_digest else None
        self._client_gone = False
        self._held = b""
        self._timer: IDelayedCall | None = None
        request.notifyFinish().addErrback(self._clientGone)

    def connectionMade(self) -> None:
        if self._client_gone:
            self.upstream().stopProducing()
            return
        self._request.registerProducer(self.upstream(), True)
        self._timer = self._clock.callLater(self._idle_timeout, self._idle)

    def dataReceived(self, data: bytes) -> None:
        if self._client_gone:
            return
        if self._timer is not None:
            self._timer.reset(self._idle_timeout)
        if self._hasher is None:
            self._request.write(data)
            return
        self._hasher.update(data)
        if self._held:
            self._request.write(self._held)
        self._held = data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._client_gone:
            return
        problem = self._problem(reason)
        self._request.unregisterProducer()
        if problem is None:
            self._request.write(self._held)
            self._request.finish()
        else:
            log.warn(
                "aborting response to {client}: {problem}",
                client=_client(self._request),
                problem=problem,
            )
            _abort_client(self._request)

    def _problem(self, reason: Failure) -> str | None:
        if not reason.check(ResponseDone, PotentialDataLoss):
            return f"upstream body failed: {reason.getErrorMessage()}"
        if self._hasher is not None and self._expected is not None:
            actual = f"{self._expected.partition(':')[0]}:{self._hasher.hexdigest()}"
            if actual != self._expected:
                return f"upstream sent bytes with digest {actual}, expected {self._expected}"
        return None

    def _clientGone(self, reason: Failure) -> None:
        self._client_gone = True
        if self.transport is not None:
            self.upstream().stopProducing()

    def _idle(self) -> None:
        log.warn(
            "no progress for {seconds}s streaming to {client}; giving up",
            seconds=self._idle_timeout,
            client=_client(self._request),
        )
        self._timer = None
        self.upstream().stopProducing()


def _abort_client(request: Request) -> None:
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.forceAbortClient()


def _client(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class StreamResource(Resource):
    """A leaf resource that answers with an upstream response's status, headers and body."""

    isLeaf = True

    def __init__(
        self,
        response: IResponse,
        headers: list[tuple[bytes, list[bytes]]],
        make_pipe: Callable[[Request], BodyPipe],
    ) -> None:
        super().__init__()
        self._response = response
        self._headers = headers
        self._make_pipe = make_pipe

    def render(self, request: Request) -> bytes | int:
        request.setResponseCode(self._response.code)
        for name, values in self._headers:
            request.responseHeaders.setRawHeaders(name, values)
        if request.method == b"HEAD":
            discard(self._response)
            return b""
        self._response.deliverBody(self._make_pipe(request))
        return NOT_DONE_YET
