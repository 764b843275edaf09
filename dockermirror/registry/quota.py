"""Docker Hub's pull quota, as Hub's own answers state it, and when not to spend it.

Hub sends ``RateLimit-Limit: 100;w=21600`` and ``RateLimit-Remaining: 76;w=21600``
on manifest answers (and nothing for accounts without a limit).  Revalidating a
cached tag is a HEAD, which Hub does not count, but one that finds a new digest
leads to a GET, which it does; and a 429 means every request is refused for a
while.  So at the configured floor, and after a 429, the cache serves tags
without revalidating them ("holds"):

- at the floor, for the window Hub names (``w=``), or until an answer shows the
  remaining count above the floor again (misses still go to Hub and say so);
- after a 429, until its ``Retry-After``; meanwhile manifest requests that would
  go to Hub are answered 429 by the mirror itself, so that it does not prolong
  the block.

Each change of state is logged once.
"""

from __future__ import annotations

import email.utils
import re

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dockermirror.status import QuotaReading

log = Logger()

_VALUE = re.compile(r"\s*([0-9]{1,9})\s*(?:;(.*))?\Z")
_WINDOW = re.compile(r"(?:^|;)\s*w\s*=\s*([0-9]{1,9})\s*(?:;|\Z)")
# Hub's window when its headers name none, and how long a 429 lasts without Retry-After.
DEFAULT_WINDOW = 21600
DEFAULT_RETRY = 60.0
# A Retry-After or window longer than these is taken as these: a wrong clock or a lying
# header must not stop revalidation for long.
MAX_RETRY = 6 * 3600.0
MAX_WINDOW = 24 * 3600


class HubQuota:
    """One Docker Hub account's (or address's) quota; ``floor`` 0 holds only after a 429."""

    def __init__(self, registry: str, clock: IReactorTime, floor: int) -> None:
        self.registry = registry
        self._clock = clock
        self._floor = floor
        self._limit: int | None = None
        self._remaining: int | None = None
        self._window: int | None = None
        self._source: str | None = None
        self._held_until: float | None = None
        self._refused_until: float | None = None

    def observe(self, limit: str | None, remaining: str | None, source: str | None) -> None:
        """Take the numbers from one of Hub's answers (headers absent: unchanged)."""
        parsed_limit, parsed_remaining = _parse(limit), _parse(remaining)
        if parsed_remaining is None:
            return
        self._remaining = parsed_remaining[0]
        if source:
            self._source = source[:100]  # (an upstream's header: bounded)
        if parsed_limit is not None:
            self._limit = parsed_limit[0]
        self._window = parsed_remaining[1] or (parsed_limit[1] if parsed_limit else None)
        now = self._clock.seconds()
        if self._floor and self._remaining <= self._floor:
            if self._held_until is None or self._held_until <= now:
                window = min(self._window or DEFAULT_WINDOW, MAX_WINDOW)
                self._held_until = now + window
                log.warn(
                    "{registry}: {remaining} of {limit} pulls left (source {source}), at the"
                    " floor of {floor}: serving cached tags without revalidating them for up"
                    " to {window}s",
                    registry=self.registry,
                    remaining=self._remaining,
                    limit=self._limit,
                    source=source or "unknown",
                    floor=self._floor,
                    window=window,
                )
        elif self._held_until is not None:
            self._held_until = None
            log.info(
                "{registry}: {remaining} pulls left, above the floor: revalidating tags again",
                registry=self.registry,
                remaining=self._remaining,
            )

    def refused(self, retry_after: str | None) -> None:
        """Hub answered 429: hold, and refuse Hub-bound requests, until it says to retry."""
        now = self._clock.seconds()
        until = now + _retry_seconds(retry_after, now)
        if self._refused_until is None or self._refused_until <= now:
            log.warn(
                "{registry}: pull limit reached (429); serving cached tags without"
                " revalidating them, and refusing requests that need Hub, for {seconds:.0f}s",
                registry=self.registry,
                seconds=until - now,
            )
        self._refused_until = max(until, self._refused_until or 0.0)
        self._remaining = 0

    def holding(self) -> bool:
        """Whether cached tags are to be served without revalidation now."""
        now = self._clock.seconds()
        return (self._held_until is not None and now < self._held_until) or (
            self.refusing() is not None
        )

    def refusing(self) -> float | None:
        """Seconds until Hub accepts requests again after a 429, or None."""
        if self._refused_until is None:
            return None
        left = self._refused_until - self._clock.seconds()
        if left > 0:
            return left
        self._refused_until = None
        log.info("{registry}: the 429's wait is over", registry=self.registry)
        return None

    def reading(self) -> QuotaReading:
        holding = self.holding()
        until = max(self._held_until or 0.0, self._refused_until or 0.0) if holding else None
        return QuotaReading(
            limit=self._limit,
            remaining=self._remaining,
            window=self._window,
            floor=self._floor,
            holding_until=until,
            source=self._source,
        )


def _parse(value: str | None) -> tuple[int, int | None] | None:
    """``100;w=21600`` -> (100, 21600); None when absent or not that shape."""
    match = _VALUE.match(value or "")
    if match is None:
        return None
    window = _WINDOW.search(";" + (match[2] or ""))
    return int(match[1]), int(window[1]) if window else None


def _retry_seconds(retry_after: str | None, now: float) -> float:
    """Retry-After as seconds (a number or an HTTP date), within bounds."""
    value = (retry_after or "").strip()
    if value.isascii() and value.isdigit() and len(value) <= 9:
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            seconds = DEFAULT_RETRY
    return min(max(seconds, 1.0), MAX_RETRY)
