"""The mirror's configuration: frozen values built from a TOML file and command-line overrides.

Nothing here touches the network or the reactor; :func:`build_config` only
validates and names the key at fault in a :class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
from hyperlink import DecodedURL

from dockermirror.configvalues import (
    ConfigError,
    any_list,
    boolean,
    check_keys,
    is_number,
    network,
    parse_size,
    patterns,
    string,
    string_list,
    subtable,
)
from dockermirror.errors import RegistryError
from dockermirror.policy.patterns import EVERYTHING, Patterns
from dockermirror.policy.settings import POLICY_TABLES, PolicySettings, build_policy
from dockermirror.reference import parse_image

N = TypeVar("N", bound=attrs.AttrsInstance)

DOCKER_HUB = "docker.io"

# Registries a route may name without defining them.  k8s.gcr.io is frozen and
# served by registry.k8s.io, so both names go there.
WELL_KNOWN: Mapping[str, str] = {
    DOCKER_HUB: "https://registry-1.docker.io",
    "ghcr.io": "https://ghcr.io",
    "quay.io": "https://quay.io",
    "gcr.io": "https://gcr.io",
    "registry.k8s.io": "https://registry.k8s.io",
    "k8s.gcr.io": "https://registry.k8s.io",
    "mcr.microsoft.com": "https://mcr.microsoft.com",
    "nvcr.io": "https://nvcr.io",
    "public.ecr.aws": "https://public.ecr.aws",
    "docker.elastic.co": "https://docker.elastic.co",
}
DEFAULT_ROUTE = "*"
DEFAULT_PORT = "tcp:5000"
BLOCKED = "this repository is blocked on this mirror"


@attrs.frozen
class Registry:
    """An upstream registry.  ``docker_hub`` keeps Hub's naming rules (``library/``)."""

    name: str
    url: DecodedURL
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    docker_hub: bool = False
    # Non-public networks its token server and redirect targets may be on, besides its own host.
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Which of its repositories anyone may pull through the mirror, and what others are told.
    repositories: Patterns = EVERYTHING
    blocked_message: str = BLOCKED
    # Reachable by path prefix and containerd's ?ns= (not only by a Host route naming it).
    by_prefix: bool = True
    # Clients log in with their own upstream accounts, which the mirror passes on.
    passthrough: bool = False

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)


@attrs.frozen
class UpstreamSettings:
    # Short enough that Docker, which falls back to the next endpoint when a mirror fails,
    # does so in seconds when an upstream hangs.
    connect_timeout: float = 5.0
    # Time until an upstream answers with headers (and a small body in full).
    response_timeout: float = 10.0
    # Time a body may make no progress (upstream silent or client not reading).
    idle_timeout: float = 60.0
    max_connections_per_host: int = 8
    max_manifest_bytes: int = 4 * 1024 * 1024


@attrs.frozen
class ServerSettings:
    """Limits on what clients may hold of the mirror."""

    # A connection must have sent a request's complete headers this long after it opened
    # or its previous answer ended; trickling bytes does not extend it.
    header_timeout: float = 30.0
    # An idle keep-alive connection is closed after this long.
    idle_timeout: float = 300.0
    # Open client connections in all; lowered at start to fit the file-descriptor limit.
    max_connections: int = 4096
    # Open connections from one client address (a whole office may share one).
    max_connections_per_client: int = 256
    # Processes serving the same ports and cache (--workers): one per core uses them all.
    workers: int = 1


@attrs.frozen
class CacheSettings:
    enabled: bool = True
    dir: str = ""
    max_size: int = 20 * 1024**3
    # How long a tag's digest is trusted before an upstream HEAD revalidates it.
    tag_ttl: float = 300.0
    # How old a manifest may be and still be served when revalidation fails; None: no limit.
    max_stale: float | None = None
    # Serve a cached tag even when the upstream now says 404.
    stale_on_not_found: bool = False
    # A download whose clients all left goes on to fill the cache up to this size.
    detached_fill_max: int = 4 * 1024**3
    # Below this much free disk space, blobs stream through without being stored.
    min_free: int = 1024**3
    # Bytes per second the background scrub re-hashes cached blobs at; 0 turns it off.
    scrub_rate: int = 50 * 10**6


@attrs.frozen
class DockerHubSettings:
    """What the mirror does about Docker Hub beyond pulls: its pull quota, and search."""

    # When Hub says this few pulls remain, cached tags are served without revalidation
    # until its window resets; 0: only a 429 stops revalidation.
    quota_floor: int = 0
    # Docker Hub's search API (``docker search``), and how long an answer is reused.
    search_url: str = "https://index.docker.io/v1/search"
    search_ttl: float = 300.0


@attrs.frozen
class PrefetchSettings:
    """Images the running mirror keeps in its cache, checked every ``interval`` seconds."""

    images: tuple[str, ...]
    # ``os/architecture[/variant]``; empty: every platform an index names.
    platforms: tuple[str, ...] = ()
    interval: float = 6 * 3600.0


def default_cache_dir() -> str:
    """systemd's CacheDirectory= (``$CACHE_DIRECTORY``), else the per-user XDG cache."""
    if os.environ.get("CACHE_DIRECTORY"):
        return os.environ["CACHE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dockermirror")


def default_state_dir() -> str:
    """systemd's StateDirectory= (``$STATE_DIRECTORY``), else the per-user XDG state."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "dockermirror")


@attrs.frozen
class MirrorConfig:
    ports: tuple[str, ...]
    # Host name the client used (lowercase, no port), or "*", to a registry name.
    routes: Mapping[str, str]
    registries: Mapping[str, Registry]
    upstream: UpstreamSettings = UpstreamSettings()
    cache: CacheSettings = CacheSettings()
    server: ServerSettings = ServerSettings()
    policy: PolicySettings = attrs.field(factory=PolicySettings)
    docker_hub: DockerHubSettings = DockerHubSettings()
    prefetch: tuple[PrefetchSettings, ...] = ()
    # Endpoints of the private listener for /metrics, /healthz and /readyz; none by default.
    metrics_ports: tuple[str, ...] = ()

    def registry_for_host(self, host: str) -> Registry | None:
        name = self.routes.get(host, self.routes.get(DEFAULT_ROUTE))
        return None if name is None else self.registries[name]


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8") from None


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """``KEY=VALUE`` from a repeatable command-line option."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"--{option} {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


_TOP_KEYS = {
    "server",
    "routes",
    "registries",
    "upstream",
    "cache",
    "well_known_registries",
    "docker_hub",
    "prefetch",
    *POLICY_TABLES,
}


def build_config(
    data: Mapping[str, Any],
    *,
    ports: Iterable[str] = (),
    routes: Iterable[tuple[str, str]] = (),
    registries: Iterable[tuple[str, str]] = (),
    cache: Mapping[str, Any] | None = None,
    metrics_ports: Iterable[str] = (),
    server: Mapping[str, Any] | None = None,
) -> MirrorConfig:
    """Validate a parsed TOML document; command-line values override it."""
    check_keys(data, "", _TOP_KEYS)
    server = {**subtable(data, "server"), **(server or {})}
    check_keys(
        server,
        "server.",
        {"ports", "metrics_ports", *(f.name for f in attrs.fields(ServerSettings))},
    )

    registry_tables = dict(subtable(data, "registries"))
    for name, url in registries:
        registry_tables[name] = {**registry_tables.get(name, {}), "url": url}
    # Without the switch, a well-known registry is reachable only when a route or a table names it.
    well_known = boolean(data.get("well_known_registries", True), "well_known_registries")
    known = {name: _registry(name, {"url": url}) for name, url in WELL_KNOWN.items() if well_known}
    for name, table in registry_tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"registries.{name}: must be a table")
        known[name] = _registry(name, {"url": WELL_KNOWN.get(name), **table})

    route_table: dict[str, str] = {
        _host_key(k, f"routes.{k}"): string(v, f"routes.{k}")
        for k, v in subtable(data, "routes").items()
    }
    route_table.update((_host_key(k, f"--route {k}"), v) for k, v in routes)
    if not route_table:
        route_table[DEFAULT_ROUTE] = DOCKER_HUB
    for host, target in route_table.items():
        if target not in known:
            known[target] = (
                _registry(target, {"url": WELL_KNOWN[target]})
                if target in WELL_KNOWN
                else _url_registry(target, f"routes.{host}")
            )
    chosen_ports = tuple(ports) or tuple(string_list(server, "ports", "server."))
    return MirrorConfig(
        ports=chosen_ports or (DEFAULT_PORT,),
        routes=route_table,
        registries=known,
        upstream=_numbers(UpstreamSettings, subtable(data, "upstream"), "upstream."),
        server=_numbers(
            ServerSettings,
            {k: v for k, v in server.items() if k not in ("ports", "metrics_ports")},
            "server.",
        ),
        cache=_cache({**subtable(data, "cache"), **(cache or {})}),
        policy=build_policy(data),
        docker_hub=_docker_hub(subtable(data, "docker_hub")),
        prefetch=tuple(
            _prefetch(entry, f"prefetch[{i}]", known)
            for i, entry in enumerate(any_list(data, "prefetch", "prefetch"))
        ),
        metrics_ports=tuple(metrics_ports)
        or tuple(string_list(server, "metrics_ports", "server.")),
    )


def _docker_hub(table: Mapping[str, Any]) -> DockerHubSettings:
    check_keys(table, "docker_hub.", {f.name for f in attrs.fields(DockerHubSettings)})
    floor = table.get("quota_floor", 0)
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
        raise ConfigError("docker_hub.quota_floor: must be a whole number, 0 or more")
    defaults = DockerHubSettings()
    search_url = table.get("search_url", defaults.search_url)
    _url(search_url, "docker_hub.search_url")
    ttl = table.get("search_ttl", defaults.search_ttl)
    checked = _numbers(DockerHubSettings, {"search_ttl": ttl}, "docker_hub.")
    return DockerHubSettings(floor, search_url, checked.search_ttl)


def _prefetch(entry: object, key: str, registries: Mapping[str, Registry]) -> PrefetchSettings:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key}: must be a table ([[prefetch]])")
    check_keys(entry, key + ".", {"images", "platforms", "interval"})
    images = tuple(string_list(entry, "images", key + "."))
    if not images:
        raise ConfigError(f"{key}.images: name at least one image")
    for image in images:
        try:
            parsed = parse_image(image)
        except RegistryError as e:
            problem = f"{image!r} is not an image reference ({e.message})"
            raise ConfigError(f"{key}.images: {problem}") from None
        if parsed.registry is not None and parsed.registry not in registries:
            raise ConfigError(
                f"{key}.images: {image!r} names registry {parsed.registry!r}, which is not"
                " configured"
            )
    platforms = tuple(string_list(entry, "platforms", key + "."))
    for platform in platforms:
        if not 2 <= len(platform.split("/")) <= 3 or not all(platform.split("/")):
            raise ConfigError(f"{key}.platforms: {platform!r} is not OS/ARCH[/VARIANT]")
    interval = entry.get("interval", 6 * 3600)
    if not is_number(interval) or interval < 60:
        raise ConfigError(f"{key}.interval: must be a number of seconds, 60 or more")
    return PrefetchSettings(images, platforms, float(interval))


_REGISTRY_KEYS = {
    "url",
    "username",
    "password",
    "password_file",
    "trusted_networks",
    "repositories",
    "blocked_message",
    "by_prefix",
    "credentials",
}


def _registry(name: str, table: Mapping[str, Any]) -> Registry:
    key = f"registries.{name}"
    check_keys(table, key + ".", _REGISTRY_KEYS)
    if table.get("url") is None:
        raise ConfigError(f"{key}.url: required for a registry that is not well known")
    url = _url(table["url"], f"{key}.url")
    username = table.get("username")
    password = table.get("password")
    if "password_file" in table:
        if password is not None:
            raise ConfigError(f"{key}: give password or password_file, not both")
        password = _read_secret(string(table["password_file"], f"{key}.password_file"), key)
    if (username is None) != (password is None):
        raise ConfigError(f"{key}: username and password go together")
    passthrough = table.get("credentials") == "passthrough"
    if "credentials" in table and not passthrough:
        raise ConfigError(f'{key}.credentials: the only value is "passthrough"')
    if passthrough and username is not None:
        raise ConfigError(f"{key}: credentials are passed through or configured, not both")
    return Registry(
        name=name,
        url=url,
        username=None if username is None else string(username, f"{key}.username"),
        password=None if password is None else string(password, f"{key}.password"),
        docker_hub=name == DOCKER_HUB or url.host in {"registry-1.docker.io", "index.docker.io"},
        trusted_networks=tuple(
            network(v, f"{key}.trusted_networks")
            for v in any_list(table, "trusted_networks", f"{key}.trusted_networks")
        ),
        repositories=patterns(table["repositories"], f"{key}.repositories")
        if "repositories" in table
        else EVERYTHING,
        blocked_message=string(table.get("blocked_message", BLOCKED), f"{key}.blocked_message"),
        # A registry with credentials is the operator's account: only routes that name it.
        by_prefix=boolean(table.get("by_prefix", username is None), f"{key}.by_prefix"),
        passthrough=passthrough,
    )


def _url_registry(target: str, key: str) -> Registry:
    if "://" not in target:
        raise ConfigError(
            f"{key}: {target!r} is neither a registry name ({', '.join(sorted(WELL_KNOWN))}, "
            "or one defined under [registries]) nor an http(s):// URL"
        )
    _url(target, key)  # its faults are named by the route, not by a key holding the URL
    return _registry(target, {"url": target})


def _url(value: object, key: str) -> DecodedURL:
    text = string(value, key)
    try:
        url = DecodedURL.from_text(text)
    except ValueError as e:
        raise ConfigError(f"{key}: {text!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{key}: {text!r} must be an http:// or https:// URL with a host")
    if url.query or url.fragment:
        raise ConfigError(f"{key}: {text!r} must not have a query or fragment")
    if any(url.userinfo):
        # Never echo the URL: it holds a password.
        raise ConfigError(
            f"{key}: must not hold credentials; give username and password_file instead"
        )
    # Registry APIs live at /v2/ below the URL's path; drop a trailing slash once here.
    return url.replace(path=tuple(s for s in url.path if s))


def _read_secret(path: str, key: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"{key}.password_file: cannot read {path}: {e.strerror}") from None


def _numbers(kind: type[N], table: Mapping[str, Any], prefix: str) -> N:
    """Settings whose every field is a positive number."""
    fields = {f.name: f for f in attrs.fields(kind)}
    check_keys(table, prefix, set(fields))
    values: dict[str, Any] = {}
    for name, value in table.items():
        whole = fields[name].type in (int, "int")
        if not is_number(value) or value <= 0:
            raise ConfigError(f"{prefix}{name}: must be a positive number")
        if whole and not isinstance(value, int):
            raise ConfigError(f"{prefix}{name}: must be a whole number")
        values[name] = int(value) if whole else float(value)
    return kind(**values)


def _cache(table: Mapping[str, Any]) -> CacheSettings:
    check_keys(table, "cache.", {f.name for f in attrs.fields(CacheSettings)})
    values: dict[str, Any] = {"dir": default_cache_dir()}
    for name, value in table.items():
        key = f"cache.{name}"
        if name in ("enabled", "stale_on_not_found"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: must be true or false")
        elif name == "dir":
            value = string(value, key)
        elif name in ("max_size", "detached_fill_max", "min_free"):
            value = parse_size(value, key)
        elif name == "scrub_rate":
            value = 0 if value == 0 else parse_size(value, key)
        elif not is_number(value) or value < 0:
            raise ConfigError(f"{key}: must be a number of seconds, 0 or more")
        values[name] = value
    return CacheSettings(**values)


def _host_key(host: str, key: str) -> str:
    host = host.strip().lower()
    if not host or "/" in host or (host != DEFAULT_ROUTE and "*" in host):
        raise ConfigError(f"{key}: {host!r} is not a host name or '*'")
    return strip_port(host)


def strip_port(host: str) -> str:
    """``example.com:5000`` -> ``example.com``; ``[::1]:5000`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host
