"""Sending a local file's bytes to a plain TCP client with ``os.sendfile``: no copy through Python.

Twisted has no sendfile, so this works beside its transport rather than through
it, and only where that is sound: a plain TCP connection (``tcp:``, ``unix:``,
``systemd:``; never TLS, whose bytes must be encrypted in user space), a
response with a Content-Length (not chunked), and only while the transport's
own buffer is empty, so that bytes never overtake the response head or
anything written before.  When the socket is full, the transport is asked to
wait for it to drain and then resume its producer, exactly as after a full
buffer of written bytes: the channel then resumes the request's producer,
which sends again.
"""

from __future__ import annotations

import os

from twisted.internet import tcp
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.web.server import Request
from zope.interface import implementer

# Bytes per sendfile(2) call: large enough to make each call count, small enough that one
# client cannot hold the reactor for long.
MAX_SEND = 4 * 1024 * 1024


@implementer(IConsumer)
class SendfileConsumer:
    """A request as a consumer that can also send ranges of a local file itself."""

    def __init__(self, request: Request, transport: tcp.Connection) -> None:
        self._request = request
        self._transport = transport

    @classmethod
    def wrap(cls, request: Request) -> IConsumer:
        """The request itself, or a SendfileConsumer where sendfile is sound for it."""
        transport = request.channel.transport if request.channel is not None else None
        if (
            isinstance(transport, tcp.Connection)
            and not transport.TLS
            and request.responseHeaders.hasHeader(b"content-length")
            and hasattr(transport, "_tempDataLen")  # the buffer this module must see empty
        ):
            return cls(request, transport)
        return request

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def send_file(self, fd: int, offset: int, count: int) -> int | None:
        """Send up to ``count`` bytes of file ``fd`` from ``offset``: how many were sent.

        None when written bytes are still waiting in the transport (write instead,
        for now).  Fewer than ``count`` when the socket is full: the producer is
        resumed once it drains.  ``OSError`` when the connection failed.
        """
        request, transport = self._request, self._transport
        if not request.startedWriting:
            request.write(b"")  # the response head, into the transport's buffer
        if _buffered(transport) or not transport.connected or transport.disconnecting:
            return None
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(transport.fileno(), fd, offset + sent, min(count - sent, MAX_SEND))
            except BlockingIOError:
                break
            if n == 0:
                raise OSError("the file is shorter than its size")
            sent += n
            if n < min(count - sent + n, MAX_SEND):
                break  # the socket took what it could: wait for it rather than ask again
        request.sentLength += sent
        if sent < count:
            # Wait for the socket as after a full buffer: its drain resumes the producer.
            transport.producerPaused = True
            transport.startWriting()
        return sent


def _buffered(transport: tcp.Connection) -> int:
    """Bytes the transport holds that were not sent yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
