"""The Site: a typed request, one access-log event per request, quick answers to TLS probes."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

log = Logger(namespace="dockermirror.access")

_TLS_ON_PLAIN_PORT = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTPS request to an HTTP server.\n"
)


class MirrorRequest(Request):
    """A request that carries what its access-log event reports, set by the app as it answers."""

    # The upstream registry and repository that served it (``docker.io/library/redis``).
    route: str | None = None
    # The mirror user it was made as (None: anonymous); Twisted's own ``user`` is Basic auth's.
    account: str | None = None
    # How the cache answered (HIT, MISS, ...).
    cache: str | None = None


class PlainHTTPChannel(HTTPChannel):
    """An HTTP channel that answers a TLS handshake at once instead of waiting for a line.

    Docker, skopeo and containerd try HTTPS first on an "insecure" registry; a
    plain-HTTP port that waits for a request line makes each of them stall for
    Go's 10 s TLS handshake timeout before falling back to HTTP.
    """

    _first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first and data[:1] == b"\x16" and self.transport is not None:
            # A TLS handshake record: no HTTP request line starts with this byte.
            self.transport.write(_TLS_ON_PLAIN_PORT)
            self.transport.loseConnection()
            return
        self._first = False
        super().dataReceived(data)


class MirrorSite(Site):
    """A Site whose access log is a ``twisted.logger`` event rather than a log-file line.

    Twisted's own ``Site.log`` runs only for requests that finished; an aborted
    pull is exactly what an operator needs to see, so the event hangs on
    ``notifyFinish`` instead.  Query strings are left out: they may carry accounts.
    """

    noisy = False
    requestFactory = MirrorRequest
    # HTTP/1.1 only: HTTP/2 needs TLS with ALPN and the h2 package, neither of which a mirror
    # port needs; the plain channel is what Twisted's generic protocol wraps anyway.
    protocol = PlainHTTPChannel  # type: ignore[assignment]  # the stubs name the generic wrapper

    def getResourceFor(self, request: Request) -> IResource:
        started = self.reactor.seconds()
        request.notifyFinish().addBoth(self._log_request, request, started)
        return super().getResourceFor(request)

    def log(self, request: http.Request) -> None:
        """Replaced by :meth:`_log_request`."""

    def _log_request(self, result: Failure | None, request: Request, started: float) -> None:
        assert isinstance(request, MirrorRequest)  # our requestFactory
        log.info(
            "{client} {method} {path} -> {status} {outcome} ({bytes} bytes, {duration:.3f}s)"
            " route={route} user={user} cache={cache}",
            client=getattr(request.getClientAddress(), "host", "-"),
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            # 499, as nginx logs it: the client left before any answer was sent.
            status=request.code if request.startedWriting else 499,
            outcome="aborted" if isinstance(result, Failure) else "complete",
            bytes=request.sentLength,
            duration=self.reactor.seconds() - started,
            route=request.route or "-",
            user=request.account or "-",
            cache=request.cache or "-",
        )
