"""The mirror's Prometheus metrics, its upstreams' health, and the live status built from them.

The metrics live in a registry of their own (never prometheus_client's
process-global one), filled two ways: events counted as they happen (requests,
bytes, upstream answers), and a collector that reads the cache's and the quota's
own numbers at scrape time, so the hot paths keep no second set of counters.
Every label has a bounded set of values: routes are endpoint kinds, methods the
few a registry knows, registries the configured ones; never a repository name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from dockermirror.registry.quota import HubQuota
from dockermirror.status import LiveStatus, UpstreamState

if TYPE_CHECKING:
    from dockermirror.registry.caching import CachingRegistry

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# How the cache answered -> where the bytes came from.
_FROM_CACHE = {"HIT", "STALE", "REVALIDATED"}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, clock: IReactorTime, quotas: Mapping[str, HubQuota]) -> None:
        self._clock = clock
        self.quotas = quotas
        self.cache: CachingRegistry | None = None
        self._health: dict[str, UpstreamState] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "dockermirror_requests",
            "Requests answered, by route (endpoint kind), method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._bytes = Counter(
            "dockermirror_response_bytes",
            "Bytes sent to clients, by where they came from (cache, upstream, or none:"
            " errors, tokens, pages).",
            ["source"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "dockermirror_upstream_request_duration_seconds",
            "Time until an upstream registry's response head, by registry.",
            ["registry"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._errors = Counter(
            "dockermirror_upstream_errors",
            "Upstream requests that failed (unreachable, timeout, broken) or answered 5xx or"
            " 429, by registry and kind.",
            ["registry", "kind"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    def watch_cache(self, cache: CachingRegistry) -> None:
        self.cache = cache

    # Requests (from the site)

    def request_done(
        self, route: str, method: str, status: int, sent: int, cache: str | None
    ) -> None:
        method = method if method in _METHODS else "other"
        self._requests.labels(route, method, str(status)).inc()
        if sent:
            source = "none" if cache is None else "cache" if cache in _FROM_CACHE else "upstream"
            self._bytes.labels(source).inc(sent)

    # Upstream requests (UpstreamEvents, from the upstream clients)

    def answered(self, registry: str, status: int, seconds: float) -> None:
        self._latency.labels(registry).observe(seconds)
        if status >= 500 or status == 429:
            # Classes, not statuses: an upstream may send any number.
            self._errors.labels(registry, "status_429" if status == 429 else "status_5xx").inc()
            self._set_health(registry, False, f"answered {status}")
        else:
            self._set_health(registry, True, None)

    def failed(self, registry: str, problem: str, seconds: float) -> None:
        self._latency.labels(registry).observe(seconds)
        self._errors.labels(registry, "timeout" if "in time" in problem else "failed").inc()
        self._set_health(registry, False, problem)

    def _set_health(self, registry: str, ok: bool, problem: str | None) -> None:
        self._health[registry] = UpstreamState(registry, ok, self._clock.seconds(), problem)

    # What the usage page and /healthz show

    def status(self, registries: Mapping[str, object]) -> LiveStatus:
        """The live values, with every configured registry's health (None: not asked yet)."""
        cache = self.cache
        storage = cache.storage if cache is not None and cache.storage.is_open else None
        quota = next(iter(self.quotas.values()), None)
        return LiveStatus(
            cache_bytes=storage.total if storage else None,
            cache_max_bytes=storage.max_size if storage else None,
            cache_entries=storage.entries if storage else None,
            hit_rate=_hit_rate(cache) if cache is not None else None,
            hub_quota=quota.reading() if quota is not None else None,
            upstreams=tuple(
                self._health.get(name, UpstreamState(name)) for name in sorted(registries)
            ),
        )


def _hit_rate(cache: CachingRegistry) -> float | None:
    answers = sum(cache.stats[outcome] for outcome in ("hit", "miss", "stale", "revalidated"))
    served = sum(cache.stats[outcome] for outcome in ("hit", "stale", "revalidated"))
    return served / answers if answers else None


class _StateCollector(Collector):
    """The cache's and the quota's numbers, read when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        cache = metrics.cache
        if cache is not None:
            answers = CounterMetricFamily(
                "dockermirror_cache_answers",
                "Cache answers by outcome: hit, miss, coalesced (joined a download under way),"
                " stale (served while the upstream failed or the quota holds), revalidated.",
                labels=["outcome"],
            )
            for outcome in ("hit", "miss", "coalesced", "stale", "revalidated"):
                answers.add_metric([outcome], cache.stats[outcome])
            yield answers
            storage = cache.storage
            yield CounterMetricFamily(
                "dockermirror_cache_evictions",
                "Files removed from the cache by eviction.",
                value=storage.evicted,
            )
            yield GaugeMetricFamily(
                "dockermirror_cache_size_bytes", "Bytes stored in the cache.", value=storage.total
            )
            yield GaugeMetricFamily(
                "dockermirror_cache_max_size_bytes",
                "The cache's configured size.",
                value=storage.max_size,
            )
            yield GaugeMetricFamily(
                "dockermirror_cache_entries",
                "Files stored in the cache (blobs and manifests).",
                value=storage.entries,
            )
            yield GaugeMetricFamily(
                "dockermirror_fills_in_flight",
                "Blobs being downloaded into the cache now.",
                value=cache.fills_in_flight,
            )
        yield from _quota_metrics(metrics.quotas)


def _quota_metrics(quotas: Mapping[str, HubQuota]) -> Iterator[Metric]:
    limit = GaugeMetricFamily(
        "dockermirror_docker_hub_quota_limit",
        "Docker Hub's pull limit per window, as its last answer stated it.",
        labels=["registry"],
    )
    remaining = GaugeMetricFamily(
        "dockermirror_docker_hub_quota_remaining",
        "Docker Hub pulls left in the window, as its last answer stated it.",
        labels=["registry"],
    )
    holding = GaugeMetricFamily(
        "dockermirror_docker_hub_quota_holding",
        "1 while cached tags are served without revalidation (quota at the floor, or 429).",
        labels=["registry"],
    )
    source = InfoMetricFamily(
        "dockermirror_docker_hub_quota_source",
        "Whom Docker Hub counts the pulls against (Docker-RateLimit-Source).",
        labels=["registry"],
    )
    for name, quota in sorted(quotas.items()):
        reading = quota.reading()
        if reading.source is not None:
            source.add_metric([name], {"source": reading.source})
        if reading.limit is not None:
            limit.add_metric([name], reading.limit)
        if reading.remaining is not None:
            remaining.add_metric([name], reading.remaining)
        holding.add_metric([name], 1 if reading.holding_until is not None else 0)
    yield from (limit, remaining, holding, source)
