"""Which upstream registry and repository a client's request is for.

Three ways to name a registry, most explicit first:

1. a path prefix: ``/v2/ghcr.io/owner/image/...`` (a first part with a dot, or
   ``localhost``, as Docker tells registries from Docker Hub namespaces);
2. containerd's ``?ns=ghcr.io`` parameter;
3. the host name the client used, through the ``[routes]`` table (``*`` as default);
   an ``ns`` naming the registry the Host routes to selects it too, whatever its
   ``by_prefix``: containerd sends one with every request.

Prefixes and ``ns`` only ever select a registry the configuration knows by name
(well-known or defined under ``[registries]``), so neither turns the mirror into
an open relay to arbitrary hosts; and never one that is not ``by_prefix`` (a
registry with the operator's credentials is reached only by the Host routes
that name it).
"""

from __future__ import annotations

import attrs

from dockermirror.config import DOCKER_HUB, MirrorConfig, Registry, strip_port
from dockermirror.errors import DENIED, NAME_UNKNOWN, RegistryError
from dockermirror.reference import parse_image, validate_name


@attrs.frozen
class Target:
    registry: Registry
    # The repository as the upstream knows it (``library/redis``).
    name: str
    # The repository as the client wrote it (``docker.io/redis``), for links back to the mirror.
    client_name: str
    # The client's own upstream account, for a registry whose credentials are passed through.
    account: tuple[str, str] | None = attrs.field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.registry.name}/{self.name}"


def route_request(config: MirrorConfig, host: str, name: str, ns: str | None) -> Target:
    """Resolve a client's repository name; raise an OCI error when nothing serves it."""
    validate_name(name)
    registry, upstream_name = _registry_by_prefix(config, name)
    if registry is None and ns:
        # containerd names the registry it resolves in every request: the one the Host
        # routes to is served that way too, by_prefix or not.
        registry = _by_name(config, ns) or _routed_as(config, host, ns)
        if registry is None:
            raise RegistryError(
                DENIED,
                {
                    "ns": ns,
                    "registries": sorted(n for n, r in config.registries.items() if r.by_prefix),
                },
                message=f"registry {ns!r} is not served by this mirror",
            )
    if registry is None:
        registry = registry_for_host(config, host)
    return Target(registry, complete_name(registry, upstream_name), name)


def target_for_image(config: MirrorConfig, image: str) -> tuple[Target, str]:
    """The operator's own image reference (prefetch, warming): its target and tag or digest.

    A first part naming a registry selects it by name, ``by_prefix`` or not (this
    is the operator, not a client); anything else is Docker Hub's, as for Docker.
    """
    parsed = parse_image(image)
    name = parsed.registry or DOCKER_HUB
    registry = config.registries.get(name)
    if registry is None:
        raise RegistryError(
            NAME_UNKNOWN, {"registry": name}, message=f"registry {name!r} is not configured"
        )
    target = Target(registry, complete_name(registry, parsed.name), parsed.name)
    return target, parsed.reference


def registry_for_host(config: MirrorConfig, host: str) -> Registry:
    hostname = strip_port(host.lower())
    registry = config.registry_for_host(hostname)
    if registry is None:
        raise RegistryError(
            NAME_UNKNOWN,
            {"host": hostname, "hosts": sorted(config.routes)},
            message=f"no route for host {hostname!r}",
        )
    return registry


def complete_name(registry: Registry, name: str) -> str:
    """Docker Hub's one-part names are official images: ``redis`` is ``library/redis``."""
    if registry.docker_hub and "/" not in name:
        return "library/" + name
    return name


def _registry_by_prefix(config: MirrorConfig, name: str) -> tuple[Registry | None, str]:
    first, sep, rest = name.partition("/")
    # Docker's rule for the first part of an image name: a registry has a dot (or a port,
    # which the name grammar does not allow here) or is "localhost"; Docker Hub user and
    # organisation names are neither.
    if sep and ("." in first or first == "localhost"):
        registry = _by_name(config, first)
        if registry is not None:
            return registry, rest
    return None, name


def _routed_as(config: MirrorConfig, host: str, ns: str) -> Registry | None:
    """The Host's registry, when ``ns`` names it (by name, or by its URL's host and port)."""
    registry = config.registry_for_host(strip_port(host.lower()))
    if registry is None:
        return None
    url = registry.url
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    authority = url.host if url.port in (None, default_port) else f"{url.host}:{url.port}"
    return registry if ns in (registry.name, authority) else None


def _by_name(config: MirrorConfig, name: str) -> Registry | None:
    registry = config.registries.get(name)
    return registry if registry is not None and registry.by_prefix else None
