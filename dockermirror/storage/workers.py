"""Where blocking storage work runs: a dedicated thread, or (in tests) the calling thread.

SQLite and directory scans block; on the reactor thread a lock held by another
process would stall every request.  Each :class:`ThreadWorker` is one thread of
its own, so its calls run in order on one SQLite connection, and a slow call
delays only the calls queued behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

P = ParamSpec("P")
T = TypeVar("T")


class Worker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]: ...


class ThreadWorker:
    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._trigger: Any = None

    def start(self) -> None:
        if self._pool.started:
            return
        self._pool.start()
        # As for the reactor's own thread pool: a thread left running would keep the
        # process from exiting, whatever happened to the storage's orderly close.
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self._shutdown)

    def _shutdown(self) -> None:
        self._trigger = None  # firing: it cannot be removed, and need not be
        self.stop()

    def stop(self) -> None:
        """Wait for the call in progress, if any, and end the thread."""
        if self._pool.started:
            self._pool.stop()
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        # Started on first use, in the process that uses it (twistd forks after building).
        self.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)


class InlineWorker:
    """Runs each call at once: deterministic tests on a fake clock, which has no threads."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return maybeDeferred(f, *args, **kwargs)
