"""Streaming a domain byte stream into a client's response, and ending the response honestly."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.errors import UNAVAILABLE, RegistryError
from dockermirror.registry.model import ByteStream
from dockermirror.registry.streams import ConsumerStalled
from dockermirror.web.errors import render_error
from dockermirror.web.sendfile import SendfileConsumer

log = Logger()

# Headers that describe the blob, set before its first byte: wrong on an error.
_CONTENT_HEADERS = (b"docker-content-digest", b"etag", b"accept-ranges", b"content-range")


class StreamResource(Resource):
    """A leaf resource that sends a byte stream as the body of an already-prepared response.

    The response ends cleanly only when the stream does; a failed stream (the
    upstream died, a digest did not match, a client stopped reading) aborts the
    connection, so a client can never take a truncated or corrupt blob for a
    complete one; if no byte was sent yet, the client gets the error itself.
    A client that leaves stops the stream.
    """

    isLeaf = True

    def __init__(self, stream: ByteStream) -> None:
        super().__init__()
        self._stream = stream

    def render(self, request: Request) -> int:
        d = self._stream.deliver(SendfileConsumer.wrap(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(lambda _: request.finish(), self._failed, errbackArgs=(request,))
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError):
            return  # the client went away: nobody to tell
        answer = not request.startedWriting
        log.warn(
            "{action} to {client} for {path}: {problem}",
            action="answering with an error" if answer else "aborting response",
            client=getattr(request.getClientAddress(), "host", "-"),
            path=request.path.decode("utf-8", "replace"),
            problem=failure.getErrorMessage(),
        )
        if answer:
            error = failure.value
            if not isinstance(error, RegistryError):
                # Nothing sent and nothing moving: the download it waits for has stalled.
                stalled = failure.check(ConsumerStalled) is not None
                error = RegistryError(
                    UNAVAILABLE,
                    {"problem": failure.getErrorMessage()},
                    status=504 if stalled else 502,
                    message="the blob could not be fetched",
                )
            for name in _CONTENT_HEADERS:
                request.responseHeaders.removeHeader(name)
            request.write(render_error(request, error))
            request.finish()
        elif request.channel is not None:
            request.channel.forceAbortClient()
