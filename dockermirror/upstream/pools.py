"""One connection pool and one client per upstream registry, closed when the mirror stops."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.web.client import Agent, HTTPConnectionPool

from dockermirror.config import MirrorConfig
from dockermirror.upstream.addresses import GuardedReactor, GuardedResolver
from dockermirror.upstream.client import UpstreamClient
from dockermirror.upstream.events import UpstreamEvents
from dockermirror.upstream.heads import BoundedConnectionPool


class UpstreamPools(Service):
    """Owns one connection pool per upstream registry and closes them on stop."""

    def __init__(
        self, config: MirrorConfig, reactor: Any, events: UpstreamEvents | None = None
    ) -> None:
        self.pools: dict[str, HTTPConnectionPool] = {}
        self.clients: dict[str, UpstreamClient] = {}
        for name, registry in config.registries.items():
            pool = BoundedConnectionPool(reactor)
            pool.maxPersistentPerHost = config.upstream.max_connections_per_host
            resolver = GuardedResolver(
                reactor.nameResolver, registry.url.host, registry.trusted_networks
            )
            agent = Agent(
                GuardedReactor(reactor, resolver),
                connectTimeout=config.upstream.connect_timeout,
                pool=pool,
            )
            self.pools[name] = pool
            self.clients[name] = UpstreamClient(
                registry, agent, reactor, config.upstream, resolver=resolver, events=events
            )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([pool.closeCachedConnections() for pool in self.pools.values()])
