"""``twistd dockermirror``: command-line options and the service tree."""

from __future__ import annotations

import sys
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from dockermirror.auth.htpasswd import HtpasswdError
from dockermirror.auth.keys import TokenKeyError
from dockermirror.config import ConfigError, MirrorConfig, load_toml, parse_assignment
from dockermirror.listening import Listener
from dockermirror.metrics import Metrics
from dockermirror.prefetch import PrefetchService
from dockermirror.service import (
    Announcement,
    build_metrics_site,
    build_registry,
    build_site,
    hub_quotas,
    load_users,
    quota_holds,
    token_key,
)
from dockermirror.startup import StartupError
from dockermirror.upstream.pools import UpstreamPools
from dockermirror.validation import Overrides, validate
from dockermirror.web import descriptors
from dockermirror.workers import WorkerProcesses, die_with_parent, twistd_options

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE] [--port ENDPOINT]... [--route HOST=UPSTREAM]..."
    longdesc = (
        "A pull-through mirror for Docker Hub and other OCI registries. With no options it "
        "listens on tcp:5000 and sends every host to Docker Hub."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (options override it)."],
        [
            "cache-dir",
            None,
            None,
            "Cache directory (default: $CACHE_DIRECTORY under systemd, else the user's cache).",
        ],
        [
            "workers",
            None,
            None,
            "Processes serving the same ports and cache (server.workers; default 1): one per"
            " core uses them all.",
            int,
        ],
        # Internal: the number of a worker that worker 0 started (see dockermirror.workers).
        ["worker", None, 0, None, int],
    ]
    optFlags = [["no-cache", None, "Pass everything through; store nothing."]]

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["metrics-port"] = []
        self["route"] = []
        self["registry"] = []

    def opt_port(self, endpoint: str) -> None:
        """Listen on a Twisted server endpoint (repeatable): tcp:5000:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, unix:/run/dockermirror.sock, systemd:domain=INET:index=0"""  # noqa: E501
        self["port"].append(endpoint)

    opt_p = opt_port

    def opt_metrics_port(self, endpoint: str) -> None:
        """Serve /metrics (Prometheus), /healthz and /readyz on this endpoint (repeatable; none by default): keep it private, e.g. tcp:9100:interface=127.0.0.1"""  # noqa: E501
        self["metrics-port"].append(endpoint)

    def opt_route(self, assignment: str) -> None:
        """HOST=UPSTREAM (repeatable): requests for HOST ("*": any other host) go to UPSTREAM, a registry name (docker.io, ghcr.io, ...) or an http(s):// URL"""  # noqa: E501
        self["route"].append(assignment)

    def opt_registry(self, assignment: str) -> None:
        """NAME=URL (repeatable): the URL of a well-known registry, or a new named one."""
        self["registry"].append(assignment)

    def postOptions(self) -> None:
        """The checks `dockermirror check-config` makes; every problem on one line."""
        try:
            data = load_toml(self["config"]) if self["config"] else {}
            overrides = Overrides(
                ports=tuple(self["port"]),
                routes=tuple(parse_assignment(v, "route") for v in self["route"]),
                registries=tuple(parse_assignment(v, "registry") for v in self["registry"]),
                cache=_cache_overrides(self),
                metrics_ports=tuple(self["metrics-port"]),
                server={} if self["workers"] is None else {"workers": self["workers"]},
            )
        except ConfigError as e:
            raise StartupError(str(e)) from None
        validated = validate(data, overrides)
        if validated.config is None or validated.problems:
            raise StartupError("; ".join(validated.problems))
        self["mirror"] = validated.config


def _worker_arguments(options: Options) -> list[str]:
    """The options a worker is started with: the same configuration, other ports."""
    arguments = ["--config", options["config"]] if options["config"] else []
    if options["cache-dir"]:
        arguments += ["--cache-dir", options["cache-dir"]]
    if options["no-cache"]:
        arguments.append("--no-cache")
    for name in ("route", "registry"):
        for value in options[name]:
            arguments += [f"--{name}", value]
    return arguments


def _cache_overrides(options: Options) -> dict[str, object]:
    overrides: dict[str, object] = {}
    if options["cache-dir"]:
        overrides["dir"] = options["cache-dir"]
    if options["no-cache"]:
        overrides["enabled"] = False
    return overrides


def _fit_connections(config: MirrorConfig) -> MirrorConfig:
    """Raise the open-file limit where allowed and fit the client-connection cap under it.

    While the service is built, as the site takes the cap: twistd builds it before it
    drops root privileges, and the daemon keeps the raised limit.
    """
    soft_limit = descriptors.raise_limit()
    server = config.server
    cap = descriptors.connections_that_fit(server.max_connections, soft_limit)
    log.info(
        "client connections: at most {cap} in all (configured {configured}, open-file"
        " limit {limit}), {per_client} per client address",
        cap=cap,
        configured=server.max_connections,
        limit=soft_limit,
        per_client=server.max_connections_per_client,
    )
    return attrs.evolve(config, server=attrs.evolve(server, max_connections=cap))


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    config = _fit_connections(options["mirror"])
    # Worker 0 owns the cache directory, the metrics port and the prefetch; others serve.
    first = options["worker"] == 0
    if not first:
        die_with_parent()
    top = MultiService()
    if first:
        Announcement(config).setServiceParent(top)
    metrics = Metrics(reactor, hub_quotas(config, reactor))
    pools = UpstreamPools(config, reactor, events=metrics)
    pools.setServiceParent(top)
    registry, cache = build_registry(config, reactor, pools.clients, metrics=metrics, owner=first)
    if cache is not None:
        # Before the listeners, so that it stops after them and its storage opens first.
        cache.setServiceParent(top)
    try:
        users = load_users(config, reactor)
        key = token_key(config)
    except (HtpasswdError, TokenKeyError) as e:
        raise StartupError(str(e)) from None
    site = build_site(
        config, reactor, registry, pools.clients, metrics=metrics, token_key=key, users=users
    )
    several = config.server.workers > 1 or not first
    listeners = [Listener(port, site, reactor, reuse_port=several) for port in config.ports]
    for listener in listeners:
        if several and not listener.shareable:
            raise StartupError(
                f"workers: {listener.description} cannot be shared between processes (TLS:"
                " run one worker, or several behind a TLS proxy)"
            )
    for listener in listeners:
        listener.setServiceParent(top)
    if not first:
        return top
    metrics_site = build_metrics_site(config, registry, metrics)
    for port in config.metrics_ports:
        Listener(port, metrics_site, reactor, " for metrics").setServiceParent(top)
    if config.server.workers > 1:
        # After the listeners, whose sockets the workers take over.
        WorkerProcesses(
            reactor,
            listeners,
            config.server.workers,
            _worker_arguments(options),
            twistd_options(sys.argv),
        ).setServiceParent(top)
    if cache is not None and config.prefetch:
        # Last, so that it stops first; without a cache it would download everything again.
        hold = quota_holds(metrics.quotas)
        PrefetchService(config, registry, reactor, hold).setServiceParent(top)
    return top
