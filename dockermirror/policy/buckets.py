"""Token buckets: a rate with a burst, counted against an injected clock."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = clock.seconds()

    def take(self, amount: float = 1.0) -> float:
        """Take ``amount`` now; 0.0 when it was there, else the seconds until it would be.

        A refusal takes nothing.  Amounts larger than the burst (a big blob against
        a byte budget) are allowed to drive the bucket negative once it is full, so
        that they are not refused for ever.
        """
        self._refill()
        if self._tokens >= amount or (self._tokens >= self.burst and amount > self.burst):
            self._tokens -= amount
            return 0.0
        return (min(amount, self.burst) - self._tokens) / self.rate

    def spend(self, amount: float) -> None:
        """Count ``amount`` as used, even into debt (bytes already sent)."""
        self._refill()
        self._tokens -= amount

    def wait(self) -> float:
        """Seconds until the bucket holds a token again (0.0: it does now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
