"""Service wiring: upstream clients and their pools, the cache and its housekeeping, the site."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from dockermirror.app import MirrorApp
from dockermirror.cache import CachingPuller
from dockermirror.config import MirrorConfig
from dockermirror.issuer import TokenIssuer
from dockermirror.pull import Puller
from dockermirror.site import MirrorSite
from dockermirror.storage import BlobStorage, BlobStore
from dockermirror.upstream import UpstreamClient

log = Logger()

IDLE_CLIENT_TIMEOUT = 5 * 60
# Access times reach the index this often; eviction and the stats log run on the slower beat.
FLUSH_INTERVAL = 10.0
HOUSEKEEPING_INTERVAL = 60.0


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


class CacheService(Service):
    """Opens the store before the mirror listens; flushes, evicts and reports while it runs.

    A cache directory that cannot be opened is logged and the mirror streams
    everything through: a broken disk must not stop pulls.
    """

    def __init__(self, store: BlobStorage, puller: CachingPuller, reactor: Any) -> None:
        self._store = store
        self._loops = [
            (LoopingCall(store.flush), FLUSH_INTERVAL),
            (LoopingCall(puller.evict), HOUSEKEEPING_INTERVAL),
            (LoopingCall(puller.log_stats), HOUSEKEEPING_INTERVAL),
        ]
        for loop, _ in self._loops:
            loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        try:
            self._store.open()
        except (OSError, sqlite3.Error) as e:
            log.error(
                "cannot open the cache in {directory}: {error}; streaming everything through",
                directory=str(self._store.directory),
                error=str(e),
            )
            return
        for loop, interval in self._loops:
            loop.start(interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for loop, _ in self._loops:
            if loop.running:
                loop.stop()
        self._store.close()


def build_puller(
    config: MirrorConfig, reactor: Any, clients: Mapping[str, UpstreamClient]
) -> tuple[Puller, CacheService | None]:
    """The pull path: caching unless the cache is off, with the service that tends the cache."""
    if not config.cache.enabled:
        return Puller(clients, reactor, config.upstream), None
    settings = config.cache
    store = BlobStore(Path(settings.dir), reactor, settings.max_size, settings.min_free)
    puller = CachingPuller(clients, reactor, config.upstream, store, settings)
    return puller, CacheService(store, puller, reactor)


def build_site(config: MirrorConfig, reactor: Any, puller: Puller) -> MirrorSite:
    app = MirrorApp(config, puller, TokenIssuer(reactor))
    # Twisted keeps idle client connections for 12 hours by default; a public mirror should not.
    return MirrorSite(app.resource(), timeout=IDLE_CLIENT_TIMEOUT, reactor=reactor)
