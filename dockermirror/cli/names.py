"""Repository names for people: what the index's upstream keys are called, and back again.

The index keeps content per upstream key, the registry's URL and the user the
mirror pulled as (``https://registry-1.docker.io#``, see
:func:`dockermirror.registry.caching.upstream_key`).  With the mirror's
configuration a key is shown by its registry's name (``docker.io/library/redis``);
without it, by the URL's host (``registry-1.docker.io/library/redis``), with the
user in front when there is one (``bob@registry-1.docker.io/...``).

A name given on the command line may be written as Docker writes images:
``redis`` and ``docker.io/redis`` are Docker Hub's ``library/redis``,
``ghcr.io/owner/image`` is at ghcr.io; the host of an upstream URL and a
configured registry's name work too.  Where a name could mean two cached
repositories, :class:`Ambiguous` says which.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from hyperlink import DecodedURL

from dockermirror.config import DOCKER_HUB, WELL_KNOWN, MirrorConfig, Registry
from dockermirror.registry.caching import upstream_key
from dockermirror.storage.interface import Scope

_HUB_HOSTS = {"registry-1.docker.io", "index.docker.io"}
_PASSTHROUGH = "passthrough:"


class Ambiguous(Exception):
    def __init__(self, name: str, scopes: list[Scope], names: Names) -> None:
        shown = ", ".join(sorted(names.show(scope) for scope in scopes))
        super().__init__(f"{name!r} could be any of {shown}: name one with its registry")


@attrs.frozen
class Upstream:
    """An upstream key, taken apart."""

    key: str
    url: str
    user: str  # the user the mirror pulled as ("" for none), or a pass-through client's
    label: str  # what it is called: a registry's name, or the URL's host; with user@ in front
    docker_hub: bool


class Names:
    def __init__(self, keys: Iterable[str], config: MirrorConfig | None) -> None:
        self._config = config
        self._upstreams = {key: self._upstream(key) for key in keys}
        # Every name a registry may be called by, to the keys it stands for.
        self._aliases: dict[str, set[str]] = {}
        for upstream in self._upstreams.values():
            self._alias(upstream.label, upstream.key)
            host = _host(upstream.url)
            self._alias(f"{upstream.user}@{host}" if upstream.user else host, upstream.key)
        if config is None:
            for name, url in WELL_KNOWN.items():
                self._alias(name, f"{url}#")
        else:
            for registry in config.registries.values():
                self._alias(registry.name, upstream_key(registry))

    def upstream(self, key: str) -> Upstream:
        found = self._upstreams.get(key)
        return self._upstream(key) if found is None else found

    def show(self, scope: Scope) -> str:
        return f"{self.upstream(scope.upstream).label}/{scope.repository}"

    def resolve(self, name: str, cached: Iterable[Scope]) -> list[Scope]:
        """The cached repositories ``name`` stands for: none, or those of one reading of it.

        Raises Ambiguous when two readings (a registry's name, or a Docker Hub
        namespace) both name cached repositories.
        """
        known = set(cached)
        readings = [
            [scope for scope in reading if scope in known] for reading in self._readings(name)
        ]
        found = [reading for reading in readings if reading]
        matches = {scope for reading in found for scope in reading}
        if len({frozenset(reading) for reading in found}) > 1:
            raise Ambiguous(name, sorted(matches, key=self.show), self)
        return sorted(matches, key=self.show)

    def _readings(self, name: str) -> list[list[Scope]]:
        name = name.strip().strip("/")
        readings: list[list[Scope]] = []
        first, slash, rest = name.partition("/")
        if slash and first in self._aliases:
            readings.append(
                [
                    Scope(key, _complete(rest, self.upstream(key).docker_hub))
                    for key in sorted(self._aliases[first])
                ]
            )
        # Docker's rule: a first part with a dot or a port, or localhost, is a registry.
        if not (slash and ("." in first or ":" in first or first == "localhost")):
            hub = sorted(self._aliases.get(DOCKER_HUB, ()))
            readings.append([Scope(key, _complete(name, True)) for key in hub])
        return readings

    def _alias(self, name: str, key: str) -> None:
        self._aliases.setdefault(name, set()).add(key)

    def _upstream(self, key: str) -> Upstream:
        url, _, user = key.partition("#")  # an upstream URL has no fragment
        host = _host(url)
        registry = self._registry(key)
        client = user.removeprefix(_PASSTHROUGH)
        if registry is not None:
            base = registry.name
            hub = registry.docker_hub
            shown = client if user.startswith(_PASSTHROUGH) else ""
        else:
            base = host
            hub = host in _HUB_HOSTS
            shown = client
        label = f"{shown}@{base}" if shown else base
        return Upstream(key, url, user, label, hub)

    def _registry(self, key: str) -> Registry | None:
        """The configured registry content under ``key`` came from; None without a config."""
        if self._config is None:
            return None
        url, _, user = key.partition("#")
        matching = [
            registry
            for registry in self._config.registries.values()
            if upstream_key(registry) == key
            or (
                registry.passthrough
                and user.startswith(_PASSTHROUGH)
                and registry.url.to_text() == url
            )
        ]
        # Two names for one registry (k8s.gcr.io is registry.k8s.io): the one its URL has.
        matching.sort(key=lambda r: (r.name != r.url.host, r.name not in WELL_KNOWN, r.name))
        return matching[0] if matching else None


def _host(url: str) -> str:
    try:
        return str(DecodedURL.from_text(url).encoded_url.authority()) or url
    except ValueError:
        return url


def _complete(repository: str, docker_hub: bool) -> str:
    """Docker Hub's official images live under ``library/``: ``redis`` is ``library/redis``."""
    if docker_hub and "/" not in repository:
        return f"library/{repository}"
    return repository
