"""Service wiring: upstream clients with their connection pools, the site, and shutdown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.web.client import Agent, HTTPConnectionPool

from dockermirror.app import MirrorApp
from dockermirror.config import MirrorConfig
from dockermirror.issuer import TokenIssuer
from dockermirror.pull import Puller
from dockermirror.site import MirrorSite
from dockermirror.upstream import UpstreamClient

IDLE_CLIENT_TIMEOUT = 5 * 60


class UpstreamPools(Service):
    """Owns one connection pool per upstream registry and closes them on stop."""

    def __init__(self, config: MirrorConfig, reactor: Any) -> None:
        self.pools: dict[str, HTTPConnectionPool] = {}
        self.clients: dict[str, UpstreamClient] = {}
        for name, registry in config.registries.items():
            pool = HTTPConnectionPool(reactor)
            pool.maxPersistentPerHost = config.upstream.max_connections_per_host
            agent = Agent(reactor, connectTimeout=config.upstream.connect_timeout, pool=pool)
            self.pools[name] = pool
            self.clients[name] = UpstreamClient(registry, agent, reactor, config.upstream)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([pool.closeCachedConnections() for pool in self.pools.values()])


def build_site(
    config: MirrorConfig, reactor: Any, clients: Mapping[str, UpstreamClient]
) -> MirrorSite:
    puller = Puller(clients, reactor, config.upstream)
    app = MirrorApp(config, puller, TokenIssuer(reactor))
    # Twisted keeps idle client connections for 12 hours by default; a public mirror should not.
    return MirrorSite(app.resource(), timeout=IDLE_CLIENT_TIMEOUT, reactor=reactor)
