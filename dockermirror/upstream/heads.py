"""Bounds on a response's status line and headers, which Twisted's HTTP client does not have.

Also: a connection whose response ran past its end is not reused.

Twisted's parser keeps every header line it is sent: an upstream that sends
headers without end (or one header continued without end) grows the process
until it dies, and the memory stays.  Past the bounds the connection is given
up as an invalid response, which the client reports as a 502.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IResponse

MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_LINES = 100
# Bytes asked of the socket per read (Twisted's default is 64 KiB): each read goes through
# a dozen layers of Python before its bytes reach the cache, so fewer, larger reads pay.
READ_SIZE = 256 * 1024


class HeadTooLarge(Exception):
    """The upstream's status line and headers passed a bound."""


class _CountedLines:
    """Wraps a parser's ``lineReceived``; counts lines and bytes until the head ends."""

    def __init__(self, line_received: Callable[[bytes], object]) -> None:
        self._line_received = line_received
        self._lines = 0
        self._bytes = 0

    def __call__(self, line: bytes) -> object:
        # The parser switches to raw mode after the head, so only head lines come here
        # (a 100 Continue's head and the final one, which together share the bounds).
        self._lines += bool(line.strip())  # the empty line that ends a head is free
        self._bytes += len(line) + 2
        # The status line is not a header.
        if self._lines > MAX_HEAD_LINES + 1 or self._bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"over {MAX_HEAD_LINES} header lines or {MAX_HEAD_BYTES} bytes")
        return self._line_received(line)


class BoundedClientProtocol(HTTP11ClientProtocol):
    def connectionMade(self) -> None:
        super().connectionMade()
        transport: Any = self.transport
        if hasattr(transport, "bufferSize"):  # a TCP transport (TLS reads its own records)
            transport.bufferSize = READ_SIZE

    def request(self, request: Any) -> Deferred[IResponse]:
        result = super().request(request)
        # Twisted makes one parser per response and has no hook for it; an exception from
        # the parser is how it treats any invalid response (the response fails, the
        # connection is dropped).
        parser = getattr(self, "_parser", None)
        if parser is not None:
            parser.lineReceived = _CountedLines(parser.lineReceived)
        return result

    def _finishResponse_WAITING(self, rest: bytes) -> None:
        # Twisted ignores bytes past the end of a response and pools the connection; the
        # next request would read them as its answer.  Such a connection is not reused.
        if rest and self._currentRequest is not None:
            self._currentRequest.persistent = False
        super()._finishResponse_WAITING(rest)


class _BoundedFactory(_HTTP11ClientFactory):
    noisy = False  # a "Starting factory" line for every upstream connection says nothing

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return BoundedClientProtocol(self._quiescentCallback)


class BoundedConnectionPool(HTTPConnectionPool):
    """A connection pool whose connections bound every response head."""

    # The pool's documented-as-private factory attribute is its only protocol hook.
    _factory = _BoundedFactory
