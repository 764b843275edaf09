"""The HTTP/1.1 channel: what a client may send, and for how long it may take to send it.

Twisted's HTTPChannel answers any limit it enforces with a bare 400, spools a
request body of unknown length or over 100 kB to a temporary file before the
resource sees it, and resets its one idle timeout on every byte, so a client
trickling a header byte at a time holds a connection forever.  This channel
refuses what no registry read needs before reading it, with the OCI error a
client can show, and gives each request head a deadline that bytes do not move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from dockermirror.config import ServerSettings
from dockermirror.errors import REQUEST_TOO_LARGE, UNSUPPORTED, RegistryError
from dockermirror.web.errors import render_closing_response

# No registry read has a body; the token endpoint's OAuth form fits in a fraction of this.
MAX_BODY = 8 * 1024
# Far beyond any registry path, yet small enough that reading one costs nothing.
MAX_REQUEST_LINE = 8 * 1024
# Room for a few large bearer tokens and cookies.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_LINES = 100
_WRITES = frozenset({b"PUT", b"POST", b"PATCH", b"DELETE"})
_TLS_ON_PLAIN_PORT = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTPS request to an HTTP server.\n"
)


class MirrorChannel(HTTPChannel):
    """An HTTP/1.1 channel with size limits, a head deadline and an idle keep-alive timeout.

    The deadline for a request's head (and its small body) counts from when the
    connection opened, or on a kept-alive connection from the first byte after the
    previous answer; until that byte the idle timeout applies.  While a request is
    answered neither runs: a long download to a slow client is the app's to time.
    """

    # LineReceiver drops a longer line silently; the limits below answer it first.
    MAX_LENGTH = max(MAX_REQUEST_LINE, MAX_HEADER_BYTES)
    # Twisted's own limit, which answers a bare 400, sits just past ours.  (Its maxHeaders,
    # 500, counts headers after folding, never more than our line count.)
    totalHeadersSize = MAX_REQUEST_LINE + MAX_HEADER_BYTES
    # Set by the site that builds the channel; Twisted's Request reads it.
    site: Site

    def __init__(
        self, clock: IReactorTime, settings: ServerSettings, closed: Callable[[], None]
    ) -> None:
        super().__init__()
        self._clock = clock
        self._settings = settings
        self._closed = closed
        self._first_data = True
        self._in_head = False  # between a request line and the blank line ending its headers
        # (Not ``_path`` or ``_command``: HTTPChannel keeps those, undocumented.)
        self._method = b""
        self._log_path = b""  # without the query, which may hold secrets
        self._head_bytes = 0
        self._head_lines = 0
        self._body_bytes = 0
        self._refused = False
        self._deadline: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's clock (timeoutConnection's forced abort): ours, not the global one."""
        return self._clock.callLater(period, func)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self._clock.callLater(self._settings.header_timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest of what the client sends is not read
        if self._first_data:
            self._first_data = False
            if data[:1] == b"\x16" and self.transport is not None:
                # A TLS handshake record, which no request line starts with.  Docker, skopeo
                # and containerd try HTTPS first on an "insecure" registry: answered at once,
                # they fall back to HTTP without waiting out Go's 10 s handshake timeout.
                self._refused = True
                self.transport.write(_TLS_ON_PLAIN_PORT)
                self.transport.loseConnection()
                return
        self._request_begins()
        super().dataReceived(data)

    def _request_begins(self) -> None:
        """The next request on a kept-alive connection begins: its head has a deadline."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
            self._deadline = self._clock.callLater(self._settings.header_timeout, self._too_slow)

    def lineReceived(self, line: bytes) -> None:
        if not self._in_head:
            if line:  # (an empty line before a request is Twisted's to eat or refuse)
                # A pipelined request comes from Twisted's buffer, not from dataReceived.
                self._request_begins()
                self._in_head = True
                self._method, _, rest = line.partition(b" ")
                self._log_path = rest.partition(b" ")[0].partition(b"?")[0]
                self._head_bytes = self._head_lines = self._body_bytes = 0
                if len(line) > MAX_REQUEST_LINE:
                    self._refuse(_request_line_too_long())
                    return
        elif line:
            self._head_bytes += len(line)
            self._head_lines += 1
            if self._head_bytes > MAX_HEADER_BYTES or self._head_lines > MAX_HEADER_LINES:
                self._refuse(_headers_too_large())
                return
        else:
            self._in_head = False
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self._refuse(_headers_too_large())
        else:
            self._method = line.partition(b" ")[0]
            self._log_path = b""
            self._refuse(_request_line_too_long())

    def allHeadersReceived(self) -> None:
        # HTTPChannel's ``length`` (undocumented): the Content-Length, or None for a chunked
        # body, which is counted as it arrives.
        if self.length is not None and self.length > MAX_BODY:
            self._refuse(self._body_too_large())
            return  # before Twisted opens a file for the body or sends 100 Continue
        super().allHeadersReceived()

    # HTTPChannel's body (and pipelining) path: "not really a public API", its docstring says.
    def rawDataReceived(self, data: bytes) -> None:
        if self.length is None:  # a chunked body; ``length`` is 0 again once it ended
            # Counted on the wire, framing and all: what matters is what the client sends.
            self._body_bytes += len(data)
            if self._body_bytes > MAX_BODY:
                self._refuse(self._body_too_large())
                return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().allContentReceived()

    def requestDone(self, request: object) -> None:
        if self.persistent:
            # Armed first: Twisted goes on at once with what the client pipelined meanwhile.
            if self._idle is not None and self._idle.active():
                self._idle.cancel()
            self._idle = self._clock.callLater(self._settings.idle_timeout, self._idle_expired)
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        for call in (self._deadline, self._idle):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._idle = None
        super().connectionLost(reason)
        self._closed()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's one answer to a request it cannot parse (a bad header, a bad chunk, an
        # invalid Content-Length): a bare 400, which a client can only show as such.
        if not self._refused:
            self._refuse(
                RegistryError(UNSUPPORTED, status=400, message="the request is malformed")
            )

    def _too_slow(self) -> None:
        self._deadline = None
        assert self.transport is not None
        # Aborted, not closed: a client that does not read must not hold the socket longer.
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _idle_expired(self) -> None:
        self._idle = None
        self.timeoutConnection()  # Twisted's: closes, and aborts if the client does not read

    def _body_too_large(self) -> RegistryError:
        if self._method in _WRITES:
            return RegistryError(
                UNSUPPORTED,
                {"method": self._method.decode("ascii")},
                message="this mirror is read-only: push and delete are unsupported",
            )
        return RegistryError(
            REQUEST_TOO_LARGE, {"limit": MAX_BODY}, message="registry reads have no body"
        )

    def _refuse(self, error: RegistryError) -> None:
        """Answer ``error`` and close, reading nothing more."""
        self._refused = True
        response = render_closing_response(error)
        if self._method == b"HEAD":
            response = response[: response.index(b"\r\n\r\n") + 4]
        assert self.transport is not None
        self.transport.write(response)
        address = self.transport.getPeer()
        site: Any = getattr(self, "site", None)
        if hasattr(site, "log_access"):  # (the mirror's own Site; a bare channel in tests)
            # As every request: one access-log event, counted in the metrics.
            site.log_access(
                client=getattr(address, "host", "-"),
                method=self._method,
                path=self._log_path or b"-",
                status=error.status,
                outcome="refused",
                sent=len(response),
                duration=0.0,
            )
        self.loseConnection()


def _request_line_too_long() -> RegistryError:
    return RegistryError(
        REQUEST_TOO_LARGE, {"limit": MAX_REQUEST_LINE}, status=414, message="request line too long"
    )


def _headers_too_large() -> RegistryError:
    return RegistryError(
        REQUEST_TOO_LARGE,
        {"limit_bytes": MAX_HEADER_BYTES, "limit_lines": MAX_HEADER_LINES},
        status=431,
        message="request headers too large",
    )
