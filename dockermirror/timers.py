"""A no-progress timer: the one way the mirror gives up on a transfer that stopped moving.

Twisted's HTTP server turns its idle timeout off while a request is in flight
and treq's ``timeout=`` covers only the response headers, so every body the
mirror moves (from an upstream, or from disk to a client) arms one of these.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class IdleTimer:
    """Calls ``expired`` once :meth:`progress` was not called for ``seconds``."""

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self.seconds = seconds
        self._call: IDelayedCall | None = clock.callLater(seconds, self._fire)
        self._expired = expired

    def progress(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self._expired()
