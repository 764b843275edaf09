"""What the mirror can say about itself right now: plain values for the usage page and /healthz.

Built on demand by :func:`dockermirror.service.live_status` from the running
parts (the cache's counts, the Docker Hub quota, each upstream's last answer);
nothing here knows HTTP.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class QuotaReading:
    """Docker Hub's pull quota as its last manifest answer stated it.

    ``limit`` and ``remaining`` come from ``RateLimit-Limit`` and
    ``RateLimit-Remaining`` (None until Hub sent them: Hub sends none for
    unlimited accounts); ``window`` is their ``w=`` in seconds.
    ``holding_until`` (seconds since the epoch) is set while the mirror serves
    cached tags without revalidating them, because the quota fell to the floor
    or Hub answered 429.
    """

    limit: int | None = None
    remaining: int | None = None
    window: int | None = None
    floor: int = 0
    holding_until: float | None = None
    # Whom Hub counts the pulls against (``Docker-RateLimit-Source``: the mirror's address,
    # or its account).
    source: str | None = None


@attrs.frozen
class UpstreamState:
    """One upstream registry's health, as its last answer showed it."""

    name: str
    # None until the mirror asked it anything; False after a network error, timeout or 5xx.
    ok: bool | None = None
    # When that last answer came (seconds since the epoch), and what went wrong, if anything.
    checked: float | None = None
    problem: str | None = None


@attrs.frozen
class LiveStatus:
    # None when the cache is off.
    cache_bytes: int | None = None
    cache_max_bytes: int | None = None
    cache_entries: int | None = None
    # Cache hits among all cached-or-not answers since start; None before the first.
    hit_rate: float | None = None
    # None when no route reaches Docker Hub.
    hub_quota: QuotaReading | None = None
    upstreams: tuple[UpstreamState, ...] = ()
