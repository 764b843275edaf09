"""The process's open-file limit, and how many client connections fit under it."""

from __future__ import annotations

import resource
from collections.abc import Callable

# Descriptors the mirror needs whatever its clients do: the cache index and its journal,
# the log, listening ports, the reactor's wakers, upstream connections kept in the pools.
RESERVED = 64
# A client connection can hold its socket, a cache file it is served from, and a fill's
# upstream connection or temporary file: a mirror of cold pulls uses all three.
PER_CONNECTION = 3
# What to ask for when the hard limit is "unlimited", which Linux refuses as a soft limit.
_UNLIMITED_WANTED = 1 << 16


def raise_limit(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; return the soft limit.

    Distributions start services with a soft limit of 1024 under a far higher hard one.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    wanted = _UNLIMITED_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft  # a sandbox may refuse even this: the caps shrink to fit instead
    return wanted


def connections_that_fit(configured: int, soft_limit: int) -> int:
    """The client-connection cap: ``configured``, lowered to fit under the open-file limit.

    Past the limit accept() fails for every client, so a full mirror must refuse
    connections itself while it still has descriptors for the ones it serves.
    """
    if soft_limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, (soft_limit - RESERVED) // PER_CONNECTION))
