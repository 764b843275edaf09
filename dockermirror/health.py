"""What ``/readyz`` reports: whether the mirror can do its whole job, check by check."""

from __future__ import annotations

from dockermirror.registry.caching import CachingRegistry
from dockermirror.registry.model import Registry


def readiness(registry: Registry) -> dict[str, bool]:
    """Each check's result; an empty mapping when there is nothing to wait for (no cache).

    The configuration is loaded by the time anything can ask: a mirror whose
    configuration failed does not start.
    """
    checks = {"config_loaded": True}
    if isinstance(registry, CachingRegistry):
        checks["cache_open"] = registry.storage.is_open
        checks["cache_writable"] = registry.storage.is_open and registry.storage.writable()
    return checks
