"""One structured log event per request, including requests whose client went away."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

log = Logger(namespace="dockermirror.access")

_ROUTE_ATTRIBUTE = "_dockermirror_route"


def note_route(request: Request, label: str) -> None:
    """Record which upstream and repository served ``request``, for its log event."""
    setattr(request, _ROUTE_ATTRIBUTE, label)


class MirrorSite(Site):
    """A Site whose access log is a ``twisted.logger`` event rather than a log-file line.

    Twisted's own ``Site.log`` runs only for requests that finished; an aborted
    pull is exactly what an operator needs to see, so the event hangs on
    ``notifyFinish`` instead.  Query strings are left out: they may carry accounts.
    """

    noisy = False

    def getResourceFor(self, request: Request) -> IResource:
        started = self.reactor.seconds()
        request.notifyFinish().addBoth(self._logRequest, request, started)
        return super().getResourceFor(request)

    def log(self, request: http.Request) -> None:
        """Replaced by :meth:`_logRequest`."""

    def _logRequest(self, result: Failure | None, request: Request, started: float) -> None:
        log.info(
            "{client} {method} {path} -> {status} {outcome} ({bytes} bytes, {duration:.3f}s)"
            " route={route}",
            client=getattr(request.getClientAddress(), "host", "-"),
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=request.code,
            outcome="aborted" if isinstance(result, Failure) else "complete",
            bytes=request.sentLength,
            duration=self.reactor.seconds() - started,
            route=getattr(request, _ROUTE_ATTRIBUTE, "-"),
        )
