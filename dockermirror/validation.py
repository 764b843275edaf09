"""The checks the mirror makes of its configuration at start, all of them, problems collected.

:func:`dockermirror.config.build_config` stops at the first problem.  Here the
parts of a configuration that do not depend on each other are built apart, so
that one run names every independent problem: each top-level table on its own
(``[server]``, ``[cache]``, ``[auth]``, ...), the registries with the routes
that name them, each ``[[prefetch]]`` image with those registries; then the
files and endpoints the parts name: every listening and metrics endpoint (as
twistd parses it, certificates of ``ssl:`` endpoints included), the htpasswd
file (as the mirror loads it), and the token key file.

Nothing is written: a token key file that does not exist yet is only checked
to be one the mirror could create.  Checks of files depend on the user running
them; run as the mirror's user for the mirror's answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock

from dockermirror.auth.htpasswd import Htpasswd, HtpasswdError
from dockermirror.auth.keys import TokenKeyError, load_or_create_key
from dockermirror.config import MirrorConfig, build_config, load_toml
from dockermirror.configvalues import ConfigError

# The keys that are built together: routes name registries, and may define them by URL.
_REGISTRY_KEYS = ("registries", "routes", "well_known_registries")
_PREFETCH = "prefetch"


@attrs.frozen
class Overrides:
    """What twistd's command line sets over the file (see :func:`build_config`)."""

    ports: tuple[str, ...] = ()
    routes: tuple[tuple[str, str], ...] = ()
    registries: tuple[tuple[str, str], ...] = ()
    cache: Mapping[str, Any] = attrs.field(factory=dict)
    metrics_ports: tuple[str, ...] = ()
    server: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Validated:
    config: MirrorConfig | None  # None when there is a problem in the configuration itself
    problems: tuple[str, ...]


def check_file(path: str) -> list[str]:
    """Every problem of the configuration file at ``path``, each ``PATH: problem``."""
    try:
        data = load_toml(path)
    except ConfigError as e:
        return [str(e)]  # load_toml names the file
    return [f"{path}: {problem}" for problem in validate(data).problems]


def validate(data: Mapping[str, Any], overrides: Overrides | None = None) -> Validated:
    """The configuration, and every problem found in it and in what it names."""
    overrides = overrides or Overrides()
    problems: list[str] = []

    def part(section: Mapping[str, Any], **options: Any) -> MirrorConfig | None:
        return _built(problems, section, **options)

    registry_data = {k: data[k] for k in _REGISTRY_KEYS if k in data}
    registries = part(registry_data, routes=overrides.routes, registries=overrides.registries)
    parts: dict[str, MirrorConfig | None] = {}
    for key, value in data.items():
        if key in _REGISTRY_KEYS or key == _PREFETCH:
            continue
        if key == "server":
            parts[key] = part(
                {key: value},
                ports=overrides.ports,
                metrics_ports=overrides.metrics_ports,
                server=overrides.server,
            )
        elif key == "cache":
            parts[key] = part({key: value}, cache=overrides.cache)
        else:
            parts[key] = part({key: value})
    if "server" not in data:
        parts["server"] = part(
            {},
            ports=overrides.ports,
            metrics_ports=overrides.metrics_ports,
            server=overrides.server,
        )
    if registries is not None and _PREFETCH in data:
        _check_prefetch(problems, registry_data, data[_PREFETCH], overrides)
    elif not isinstance(data.get(_PREFETCH, []), list):
        # Which registries the images may name is unknown: only the list's shape is checked.
        part({_PREFETCH: data[_PREFETCH]})

    server = parts["server"]
    if server is not None:
        problems += endpoint_problems(server.ports, "port")
        problems += endpoint_problems(server.metrics_ports, "metrics port")
    auth = parts.get("auth")
    if auth is not None:
        problems += auth_file_problems(auth)
    cache = parts.get("cache")
    if _PREFETCH in data and cache is not None and not cache.cache.enabled:
        problems.append("prefetch: the cache is off (cache.enabled = false): nothing to keep warm")

    config = None
    if not problems:
        # Every part was right: the whole (a problem here would be one between parts).
        config = _built(problems, data, **attrs.asdict(overrides, recurse=False))
    return Validated(config, tuple(dict.fromkeys(problems)))


def endpoint_problems(endpoints: Iterable[str], what: str) -> list[str]:
    """Endpoints twistd cannot parse (parsing only: nothing listens), or names twice."""
    problems = []
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint in seen:
            problems.append(f"{what} {endpoint!r}: listed twice")
            continue
        seen.add(endpoint)
        try:
            parsed = serverFromString(None, endpoint)
        except IndexError as e:
            # systemd: names a socket systemd passed; outside systemd there are none to name.
            if endpoint.startswith("systemd:") and "LISTEN_FDS" not in os.environ:
                continue
            problems.append(f"{what} {endpoint!r}: no such socket was passed ({e})")
            continue
        except Exception as e:  # a key and certificate that do not match, garbage PEM, ...
            problems.append(f"{what} {endpoint!r}: {e}")
            continue
        port = getattr(parsed, "_port", None)  # (TCP and TLS endpoints keep it privately)
        if isinstance(port, int) and not 0 <= port <= 65535:
            problems.append(f"{what} {endpoint!r}: {port} is not a port (0 to 65535)")
    return problems


def auth_file_problems(config: MirrorConfig) -> list[str]:
    """The htpasswd file as the mirror loads it; the token key file as the mirror reads it."""
    auth = config.policy.auth
    problems: list[str] = []
    if auth.htpasswd is not None:
        try:
            # Loaded in full at once; the clock and thread are for later checks, never made.
            Htpasswd(Path(auth.htpasswd), Clock(), maybeDeferred)
        except HtpasswdError as e:
            problems.append(f"auth.htpasswd: {e}")
    if auth.token_key_file is not None:
        problem = token_key_problem(Path(auth.token_key_file))
        if problem is not None:
            problems.append(f"auth.token_key_file: {problem}")
    return problems


def token_key_problem(path: Path) -> str | None:
    if path.exists():
        try:
            load_or_create_key(path)  # an existing file is only read
        except TokenKeyError as e:
            return str(e)
        return None
    # The mirror will make it: the nearest existing directory above must let it.
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        return f"{path}: cannot create the token key: {parent} is not a writable directory"
    return None


def _check_prefetch(
    problems: list[str], registry_data: Mapping[str, Any], entries: object, overrides: Overrides
) -> None:
    """Each [[prefetch]] image apart, with the registries it may name."""
    if not isinstance(entries, list):
        _built(problems, {_PREFETCH: entries})
        return
    for number, entry in enumerate(entries):
        images = entry.get("images") if isinstance(entry, Mapping) else None
        singles = (
            [{**entry, "images": [image]} for image in images]
            if isinstance(images, list) and images
            else [entry]
        )
        for single in singles:
            found: list[str] = []
            _built(
                found,
                {**registry_data, _PREFETCH: [single]},
                routes=overrides.routes,
                registries=overrides.registries,
            )
            # Built as the only entry, it is named prefetch[0]; it is prefetch[number].
            problems += [_renumber(problem, number) for problem in found]


def _renumber(problem: str, number: int) -> str:
    first = f"{_PREFETCH}[0]"
    if problem.startswith(first):
        return f"{_PREFETCH}[{number}]{problem[len(first) :]}"
    return problem


def _built(problems: list[str], data: Mapping[str, Any], **options: Any) -> MirrorConfig | None:
    """``build_config(data, **options)``; None, and the problem noted, when it fails."""
    try:
        return build_config(data, **options)
    except ConfigError as e:
        problems.append(str(e))
        return None
