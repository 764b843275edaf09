"""Rate limits per client, in process: requests per second, bytes per second, concurrent blobs.

A client is a user, or an address when anonymous.  Requests take a token from
the client's request bucket as they come; bytes are counted as responses end,
so a client over its byte budget waits before its next request starts (a
download under way is not cut).  Over a limit: 429 TOOMANYREQUESTS with
``Retry-After``.  Buckets of clients that have been quiet long enough to be
full again are forgotten, so memory follows the number of active clients.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from dockermirror.errors import TOOMANYREQUESTS, RegistryError
from dockermirror.policy.buckets import TokenBucket
from dockermirror.policy.settings import Limits, PolicySettings

# A byte budget may save up this many seconds' worth.
_BYTE_BURST_SECONDS = 10.0
# Wrong passwords an address may try, when [limits] sets no request rate.
_GUESSES_PER_SECOND = 1.0
_GUESS_BURST = 20.0
# Past this many remembered clients, the ones whose buckets are full are forgotten.
_PRUNE_AT = 10_000


class RateLimiter:
    def __init__(self, clock: IReactorTime, settings: PolicySettings) -> None:
        self._clock = clock
        self._settings = settings
        self._requests: dict[str, TokenBucket] = {}
        self._bytes: dict[str, TokenBucket] = {}
        self._blobs: Counter[str] = Counter()
        self._guesses: dict[str, TokenBucket] = {}

    def check_guesses(self, client: str) -> None:
        """429 for a client whose wrong passwords used up its budget: guessing is slow."""
        bucket = self._guess_bucket(client)
        if bucket.wait() > 0.0:
            raise _too_many(bucket.wait(), "wrong password")

    def guessed_wrong(self, client: str) -> None:
        self._guess_bucket(client).spend(1)

    def _guess_bucket(self, client: str) -> TokenBucket:
        limits = self._settings.limits
        rate = limits.requests_per_second or _GUESSES_PER_SECOND
        burst = limits.request_burst if limits.requests_per_second else _GUESS_BURST
        return self._bucket(self._guesses, client, rate, burst)

    def limits_for(self, user: str | None) -> Limits:
        own = self._settings.users.get(user) if user is not None else None
        if own is not None and own.limits is not None:
            return own.limits
        return self._settings.limits

    def admit(self, client: str, limits: Limits, *, blob: bool) -> Callable[[int], None]:
        """Let a request in or raise 429; what it returns takes the bytes sent, at the end."""
        if limits.unlimited:
            return _nothing
        if limits.bytes_per_second is not None:
            burst = _byte_burst(limits)
            wait = self._bucket(self._bytes, client, limits.bytes_per_second, burst).wait()
            if wait > 0.0:
                raise _too_many(wait, "byte rate")
        if limits.requests_per_second is not None:
            rate, burst = limits.requests_per_second, limits.request_burst
            wait = self._bucket(self._requests, client, rate, burst).take()
            if wait > 0.0:
                raise _too_many(wait, "request rate")
        if blob and limits.concurrent_blobs is not None:
            if self._blobs[client] >= limits.concurrent_blobs:
                raise _too_many(1.0, f"{limits.concurrent_blobs} blob downloads at once")
            self._blobs[client] += 1

        def done(sent: int) -> None:
            if blob and limits.concurrent_blobs is not None:
                self._blobs[client] -= 1
                if self._blobs[client] <= 0:
                    del self._blobs[client]
            if limits.bytes_per_second is not None and sent:
                self._bucket(
                    self._bytes, client, limits.bytes_per_second, _byte_burst(limits)
                ).spend(sent)

        return done

    def _bucket(
        self, buckets: dict[str, TokenBucket], client: str, rate: float, burst: float
    ) -> TokenBucket:
        bucket = buckets.get(client)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            if len(buckets) >= _PRUNE_AT:
                for key in [k for k, b in buckets.items() if b.full]:
                    del buckets[key]
            bucket = buckets[client] = TokenBucket(self._clock, rate, burst)
        return bucket


def _byte_burst(limits: Limits) -> float:
    assert limits.bytes_per_second is not None
    return limits.bytes_per_second * _BYTE_BURST_SECONDS


def _too_many(wait: float, what: str) -> RegistryError:
    return RegistryError(
        TOOMANYREQUESTS,
        {"limit": what},
        message=f"over this mirror's {what} limit; try again later",
        retry_after=str(max(1, math.ceil(wait))),
    )


def _nothing(sent: int) -> None:
    pass
