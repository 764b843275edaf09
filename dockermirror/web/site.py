"""The Site: a typed request, one access-log event per request, caps on client connections."""

from __future__ import annotations

import os
from io import BytesIO
from urllib.parse import urlsplit

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from dockermirror.config import ServerSettings
from dockermirror.errors import UNSUPPORTED, RegistryError
from dockermirror.metrics import Metrics
from dockermirror.web.channel import MirrorChannel
from dockermirror.web.connections import ConnectionCaps, RefusedConnection, client_of
from dockermirror.web.errors import render_error

log = Logger(namespace="dockermirror.access")
_DEFAULTS = ServerSettings()


class MirrorRequest(Request):
    """A request that carries what its access-log event reports, set by the app as it answers."""

    # The upstream registry and repository that served it (``docker.io/library/redis``).
    route: str | None = None
    # The mirror user it was made as (None: anonymous); Twisted's own ``user`` is Basic auth's.
    account: str | None = None
    # How the cache answered (HIT, MISS, ...).
    cache: str | None = None
    # The client's address, scheme and host, through trusted proxies (set before the app runs).
    client: str | None = None
    scheme: str = "http"
    forwarded_host: str | None = None

    def gotLength(self, length: int | None) -> None:
        # In memory whatever the length: the channel refuses a body over a few KiB before
        # reading it, where Twisted would spool a long or chunked one to a temporary file.
        self.content = BytesIO()

    def process(self) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, MirrorSite):
            # Every request, whatever answers it: one access-log event once it ends.
            self.notifyFinish().addBoth(site.log_request, self, site.reactor.seconds())
        if self.path == b"*":
            # (Twisted would answer "*" itself, with an HTML page.)
            error = RegistryError(UNSUPPORTED, message="a registry has no server-wide methods")
            body = render_error(self, error)
            self.setHeader(b"allow", b"GET, HEAD")
            self.setHeader(b"content-length", str(len(body)).encode())
            self.write(body)
            self.finish()
            return
        super().process()


class MirrorSite(Site):
    """A Site whose access log is a ``twisted.logger`` event rather than a log-file line.

    Twisted's own ``Site.log`` runs only for requests that finished; an aborted
    pull is exactly what an operator needs to see, so the event hangs on
    ``notifyFinish`` instead.  Query strings are left out: they may carry accounts.
    """

    noisy = False
    requestFactory = MirrorRequest

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime,
        settings: ServerSettings = _DEFAULTS,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.settings = settings
        self._metrics = metrics
        self.connections = ConnectionCaps(
            reactor, settings.max_connections, settings.max_connections_per_client
        )

    # The stubs promise Twisted's wrapper that can switch to HTTP/2: HTTP/2 needs TLS with
    # ALPN and the h2 package, neither of which a mirror port needs.
    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # type: ignore[override]
        client = client_of(addr)
        if not self.connections.admit(client):
            return RefusedConnection()
        # Built here, not by Twisted's factory: the channel keeps its own time, so Twisted's
        # idle timeout, which every byte resets, is never set.
        channel = MirrorChannel(
            self.reactor, self.settings, lambda: self.connections.release(client)
        )
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        return channel

    def log(self, request: http.Request) -> None:
        """Replaced by :meth:`log_request`."""

    def log_request(self, result: Failure | None, request: Request, started: float) -> None:
        assert isinstance(request, MirrorRequest)  # our requestFactory
        self.log_access(
            client=request.client or getattr(request.getClientAddress(), "host", None) or "-",
            method=request.method,
            path=request.path,
            # 499, as nginx logs it: the client left before any answer was sent.
            status=request.code if request.startedWriting else 499,
            outcome="aborted" if isinstance(result, Failure) else "complete",
            sent=request.sentLength,
            duration=self.reactor.seconds() - started,
            route=request.route,
            user=request.account,
            cache=request.cache,
        )

    def log_access(
        self,
        *,
        client: str,
        method: bytes,
        path: bytes,
        status: int,
        outcome: str,
        sent: int,
        duration: float,
        route: str | None = None,
        user: str | None = None,
        cache: str | None = None,
    ) -> None:
        """One request's access-log event and metrics (also for one refused unparsed)."""
        method_text = method[:16].decode("ascii", "replace") or "-"
        if self._metrics is not None:
            self._metrics.request_done(route_of(path), method_text, status, sent, cache)
        log.info(
            "{client} {method} {path} -> {status} {outcome} ({bytes} bytes, {duration:.3f}s)"
            " route={route} user={user} cache={cache} pid={pid}",
            client=client,
            method=method_text,
            path=_logged_path(path[:2000]),
            status=status,
            outcome=outcome,
            bytes=sent,
            duration=duration,
            route=route or "-",
            user=user or "-",
            cache=cache or "-",
            # Which process served it, with --workers.
            pid=os.getpid(),
        )


def _logged_path(path: bytes) -> str:
    """The path, without what an absolute-form target puts before it (user:password@host)."""
    text = path.decode("utf-8", "replace")
    return text if text.startswith("/") else urlsplit(text).path or "-"


_NAMED_ROUTES = {
    b"/": "home",
    b"/healthz": "health",
    b"/readyz": "health",
    b"/v2": "base",
    b"/v2/": "base",
    b"/v2/auth": "auth",
    b"/v1/search": "search",
}
_API_ROUTES = {b"manifests": "manifests", b"blobs": "blobs", b"referrers": "referrers"}


def route_of(path: bytes) -> str:
    """The kind of endpoint a path is, for metrics: a few values, never a repository name."""
    named = _NAMED_ROUTES.get(path)
    if named is not None:
        return named
    if not path.startswith(b"/v2/"):
        return "other"
    segments = path.rstrip(b"/").split(b"/")
    if segments[-2:] == [b"tags", b"list"]:
        return "tags"
    return _API_ROUTES.get(segments[-2], "other") if len(segments) >= 5 else "other"
