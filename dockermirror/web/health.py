"""``/healthz`` and ``/readyz``, the same on the main port and the metrics port."""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs
from twisted.web.iweb import IRequest

from dockermirror.health import readiness
from dockermirror.registry.model import Registry
from dockermirror.status import LiveStatus


def render_healthz(request: IRequest, status: LiveStatus) -> bytes:
    """The process serves (for a liveness probe); with Docker Hub's quota as last seen."""
    document: dict[str, object] = {"status": "ok"}
    if status.hub_quota is not None:
        document["docker_hub_quota"] = attrs.asdict(status.hub_quota)
    return _json(request, 200, document)


def render_readyz(request: IRequest, registry: Registry) -> bytes:
    """Ready for its whole job (for a readiness probe): 503 while a check fails."""
    checks = readiness(registry)
    ready = all(checks.values())
    document = {"status": "ready" if ready else "not ready", "checks": checks}
    return _json(request, 200 if ready else 503, document)


def _json(request: IRequest, code: int, document: Mapping[str, object]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document).encode()
