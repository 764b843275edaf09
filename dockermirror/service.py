"""Service wiring: the registry stack, the cache's upkeep, the site."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from dockermirror import __version__
from dockermirror.auth.htpasswd import Htpasswd
from dockermirror.auth.keys import TokenKeyError, load_or_create_key
from dockermirror.auth.tokens import TokenIssuer
from dockermirror.config import MirrorConfig, default_state_dir
from dockermirror.metrics import Metrics
from dockermirror.policy.access import AccessPolicy
from dockermirror.policy.limits import RateLimiter
from dockermirror.registry.caching import CachingRegistry
from dockermirror.registry.model import Registry
from dockermirror.registry.quota import HubQuota
from dockermirror.registry.search import HubSearch
from dockermirror.registry.upstream import UpstreamRegistry
from dockermirror.routing import Target
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.scrub import Scrub
from dockermirror.storage.workers import ThreadWorker, Worker
from dockermirror.upstream.client import UpstreamClient
from dockermirror.web.app import MirrorApp
from dockermirror.web.metrics import MetricsResource, MetricsSite
from dockermirror.web.site import MirrorSite

log = Logger()

# Access times reach the index this often; eviction and the stats log run on the slower beat.
FLUSH_INTERVAL = 10.0
HOUSEKEEPING_INTERVAL = 60.0


class CacheService(Service):
    """Opens the storage before the mirror listens; flushes, evicts and reports while it runs.

    Requests that come while the storage opens (the index is checked against the
    files) wait for it.  A storage that cannot be opened is logged, the mirror
    streams everything through (a broken disk must not stop pulls), and the
    storage is tried again a minute later.  Once it is open, the scrub (if any)
    starts re-hashing what it holds.
    """

    def __init__(
        self,
        storage: FilesystemStorage,
        cache: CachingRegistry,
        reactor: Any,
        scrub: Scrub | None = None,
    ) -> None:
        self._storage = storage
        self._reactor = reactor
        self._scrub = scrub
        self._retry: IDelayedCall | None = None
        self._loops = [
            (LoopingCall(_surviving, "flush", storage.flush), FLUSH_INTERVAL),
            (LoopingCall(_surviving, "eviction", cache.evict), HOUSEKEEPING_INTERVAL),
            (LoopingCall(_surviving, "stats", cache.log_stats), HOUSEKEEPING_INTERVAL),
        ]
        for loop, _ in self._loops:
            loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._open()

    def _open(self) -> None:
        self._retry = None
        self._storage.open().addCallbacks(self._opened, self._not_opened)

    def _opened(self, _: object) -> None:
        if self.running:
            for loop, interval in self._loops:
                loop.start(interval, now=False)
            if self._scrub is not None:
                self._scrub.start()

    def _not_opened(self, failure: Failure) -> None:
        log.error(
            "cannot open the cache in {directory}: {error}; streaming everything through,"
            " trying again in {seconds:.0f}s",
            directory=str(self._storage.directory),
            error=failure.getErrorMessage(),
            seconds=HOUSEKEEPING_INTERVAL,
        )
        if self.running:
            self._retry = self._reactor.callLater(HOUSEKEEPING_INTERVAL, self._open)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for loop, _ in self._loops:
            if loop.running:
                loop.stop()
        if self._scrub is not None:
            self._scrub.stop()
        return self._storage.close()


def _surviving(name: str, task: Callable[[], object]) -> Deferred[None]:
    """Run one round of a housekeeping loop; an error is logged and the loop goes on."""

    def failed(failure: Failure) -> None:
        log.failure("cache {task} failed", failure, task=name)

    return maybeDeferred(task).addCallbacks(lambda _: None, failed)


def hub_quotas(config: MirrorConfig, clock: Any) -> dict[str, HubQuota]:
    """One quota per Docker Hub registry the mirror pulls from as itself (anonymous or its
    configured account); a client's own account has its own quota, which is its business."""
    floor = config.docker_hub.quota_floor
    return {
        name: HubQuota(name, clock, floor)
        for name, registry in config.registries.items()
        if registry.docker_hub and not registry.passthrough
    }


def quota_holds(quotas: Mapping[str, HubQuota]) -> Callable[[Target], bool]:
    """Whether warming must wait for a target: its Docker Hub quota holds."""

    def hold(target: Target) -> bool:
        quota = quotas.get(target.registry.name)
        return quota is not None and quota.holding()

    return hold


def build_registry(
    config: MirrorConfig,
    reactor: Any,
    clients: Mapping[str, UpstreamClient],
    worker: Callable[[str], Worker] | None = None,
    *,
    metrics: Metrics,
    owner: bool = True,
) -> tuple[Registry, CacheService | None]:
    """The registry stack: the upstream, wrapped by the cache unless it is off.

    ``worker`` makes the storage's worker for a name (default: a thread of its own).
    ``owner`` False: another process (worker 0) owns the cache directory; this one
    neither cleans nor evicts nor scrubs it.
    """
    make_worker = worker or (lambda name: ThreadWorker(reactor, name))
    upstream = UpstreamRegistry(
        clients, config.upstream, metrics.quotas, make_worker("dockermirror-hashing")
    )
    if not config.cache.enabled:
        return upstream, None
    settings = config.cache
    storage = FilesystemStorage(
        Path(settings.dir),
        reactor,
        settings.max_size,
        settings.min_free,
        lookups=make_worker("dockermirror-index-lookups"),
        writes=make_worker("dockermirror-index-writes"),
        owner=owner,
    )
    cache = CachingRegistry(
        upstream, storage, reactor, settings, config.upstream.idle_timeout, metrics.quotas
    )
    metrics.watch_cache(cache)
    scrub = (
        Scrub(storage, reactor, settings.scrub_rate, make_worker("dockermirror-scrub"))
        if settings.scrub_rate and owner
        else None
    )
    return cache, CacheService(storage, cache, reactor, scrub)


class Announcement(Service):
    """Says at start what this mirror serves, where it keeps its cache, and how much of it."""

    def __init__(self, config: MirrorConfig) -> None:
        self._config = config

    def startService(self) -> None:
        super().startService()
        config = self._config
        routes = ", ".join(f"{host} -> {name}" for host, name in sorted(config.routes.items()))
        cache = config.cache
        log.info(
            "dockermirror {version}: routes {routes}; cache {cache}",
            version=__version__,
            routes=routes,
            cache=f"in {cache.dir}, up to {cache.max_size / 2**30:.1f} GiB"
            if cache.enabled
            else "off",
        )


def build_app(
    config: MirrorConfig,
    reactor: Any,
    registry: Registry,
    clients: Mapping[str, UpstreamClient],
    *,
    metrics: Metrics,
    token_key: bytes | None = None,
    users: Htpasswd | None = None,
) -> MirrorApp:
    """The mirror's routes; ``token_key`` None signs tokens with a key that dies with it."""
    issuer = TokenIssuer(
        reactor, token_key or secrets.token_bytes(32), config.policy.auth.token_lifetime
    )
    passthrough = any(r.passthrough for r in config.registries.values())
    policy = AccessPolicy(config.policy, users, issuer, passthrough=passthrough)
    return MirrorApp(
        config,
        registry,
        policy,
        issuer,
        RateLimiter(reactor, config.policy),
        HubSearch(clients, config.docker_hub, reactor),
        lambda: metrics.status(config.registries),
    )


def build_site(
    config: MirrorConfig,
    reactor: Any,
    registry: Registry,
    clients: Mapping[str, UpstreamClient],
    *,
    metrics: Metrics,
    token_key: bytes | None = None,
    users: Htpasswd | None = None,
) -> MirrorSite:
    app = build_app(
        config, reactor, registry, clients, metrics=metrics, token_key=token_key, users=users
    )
    # The client limits (deadlines, connection caps) are the server settings'; the caller
    # fits max_connections under the open-file limit.
    return MirrorSite(app.resource(), reactor=reactor, settings=config.server, metrics=metrics)


def build_metrics_site(config: MirrorConfig, registry: Registry, metrics: Metrics) -> MetricsSite:
    return MetricsSite(
        MetricsResource(metrics, registry, lambda: metrics.status(config.registries))
    )


def load_users(config: MirrorConfig, reactor: Any) -> Htpasswd | None:
    """The htpasswd users, when client authentication is on; raises HtpasswdError."""
    path = config.policy.auth.htpasswd
    if path is None:
        return None
    pool = reactor.getThreadPool()
    return Htpasswd(Path(path), reactor, lambda work: deferToThreadPool(reactor, pool, work))


def token_key(config: MirrorConfig) -> bytes | None:
    """The token signing key from its file, made there if need be.

    Without client authentication a key that cannot be kept only means tokens
    end with the process (None); with it, it raises TokenKeyError.
    """
    auth = config.policy.auth
    path = Path(auth.token_key_file or os.path.join(default_state_dir(), "token.key"))
    try:
        return load_or_create_key(path)
    except TokenKeyError as e:
        if auth.enabled or auth.token_key_file is not None:
            raise
        log.warn("{problem}; tokens will not outlive this process", problem=str(e))
        return None
