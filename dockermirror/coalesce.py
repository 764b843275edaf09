"""Sharing one run of an operation among the callers that want its result at the same time."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

T = TypeVar("T")


class Coalescer:
    """One run of an operation per key at a time; callers arriving meanwhile share its result.

    The operation runs on its own, not in any caller's Deferred chain, so a
    caller that goes away does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[Deferred[Any]]] = {}

    def run(
        self, key: Hashable, operation: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[Deferred[T], bool]:
        """A Deferred for the result, and whether this caller joined a run under way."""
        waiter: Deferred[T] = Deferred()
        if key in self._waiting:
            self._waiting[key].append(waiter)
            return waiter, True
        self._waiting[key] = [waiter]
        ensureDeferred(operation()).addBoth(self._done, key)
        return waiter, False

    def _done(self, result: object, key: Hashable) -> None:
        for waiter in self._waiting.pop(key):
            if waiter.called:  # its caller went away and cancelled it
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
