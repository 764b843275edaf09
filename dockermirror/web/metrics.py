"""The private listener (``--metrics-port``): ``/metrics`` for Prometheus, and the health checks.

Kept off the main port so that who pulls through the mirror cannot read what
it does; it has no access log (a scrape every few seconds would drown it).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from dockermirror.errors import NAME_UNKNOWN, UNSUPPORTED, RegistryError
from dockermirror.metrics import Metrics
from dockermirror.registry.model import Registry
from dockermirror.status import LiveStatus
from dockermirror.web.errors import render_error
from dockermirror.web.health import render_healthz, render_readyz


class MetricsResource(Resource):
    isLeaf = True

    def __init__(
        self, metrics: Metrics, registry: Registry, status: Callable[[], LiveStatus]
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._registry = registry
        self._status = status

    def render(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return render_error(request, RegistryError(UNSUPPORTED))
        if request.path == b"/metrics":
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return bytes(generate_latest(self._metrics.registry))
        if request.path == b"/healthz":
            return render_healthz(request, self._status())
        if request.path == b"/readyz":
            return render_readyz(request, self._registry)
        return render_error(
            request,
            RegistryError(NAME_UNKNOWN, message="this port serves /metrics, /healthz, /readyz"),
        )


class MetricsSite(Site):
    noisy = False

    def log(self, request: object) -> None:
        """No access log for scrapes."""
