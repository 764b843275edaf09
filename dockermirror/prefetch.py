"""Prefetch: the running mirror keeps the images ``[[prefetch]]`` names in its cache.

Each entry is warmed (:mod:`dockermirror.registry.warming`) into the mirror's
own Registry, as a client's pull would be: soon after start, then every
``interval`` seconds.  Entries start staggered, so that a configuration with
many entries does not pull them all at once; an entry's run that lasts longer
than its interval is never overlapped by the next (that one is skipped).

A steady-state run is cheap: a tag past its TTL costs one upstream HEAD (free
on Docker Hub), and stored manifests and blobs cost nothing upstream.  While
``hold`` says a registry must be spared (Docker Hub's pull quota is at its
floor), that registry's images are skipped until the next run, with one log
event per run saying which.

Each run ends with one structured log event (images, blobs, bytes, failures),
each failed image with a warning of its own; no secret is ever in them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dockermirror.config import MirrorConfig, PrefetchSettings
from dockermirror.errors import RegistryError
from dockermirror.registry.model import Registry
from dockermirror.registry.warming import Platform, WarmFailure, WarmResult, warm_image
from dockermirror.routing import Target, target_for_image

log = Logger()

# The first run waits this long after start (the cache opens, the listeners come up) ...
FIRST_DELAY = 10.0
# ... and each further entry this much longer than the one before it.
STAGGER = 30.0

Hold = Callable[[Target], bool]


class PrefetchService(Service):
    """Warms every ``[[prefetch]]`` entry of ``config`` into ``registry``, periodically."""

    def __init__(
        self,
        config: MirrorConfig,
        registry: Registry,
        clock: IReactorTime,
        hold: Hold,
        *,
        first_delay: float = FIRST_DELAY,
        stagger: float = STAGGER,
    ) -> None:
        self._config = config
        self._registry = registry
        self._clock = clock
        self._hold = hold
        self._first_delay = first_delay
        self._stagger = stagger
        self._loops: list[LoopingCall] = []
        self._starts: list[IDelayedCall] = []
        self._runs: dict[int, Deferred[None]] = {}

    def startService(self) -> None:
        super().startService()
        for number, entry in enumerate(self._config.prefetch):
            loop = LoopingCall(self._run, number, entry)
            loop.clock = self._clock
            self._loops.append(loop)
            delay = self._first_delay + number * self._stagger
            self._starts.append(self._clock.callLater(delay, loop.start, entry.interval))

    def stopService(self) -> None:
        super().stopService()
        for start in self._starts:
            if start.active():
                start.cancel()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for run in list(self._runs.values()):
            run.cancel()  # the mirror is stopping: transfers under way end with it
        self._starts, self._loops = [], []

    def busy(self, entry: int) -> bool:
        """Whether a run of the ``entry``-th ``[[prefetch]]`` (from 0) is under way."""
        return entry in self._runs

    def _run(self, number: int, entry: PrefetchSettings) -> Deferred[None]:
        """One run of an entry; it never fails (a failing LoopingCall would stop for good)."""
        d = Deferred.fromCoroutine(self._warm(number, entry))
        self._runs[number] = d

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):  # (cancelled: the mirror stops)
                log.failure("prefetch entry {entry}: the run failed", failure, entry=number)

        def ended(_: object) -> None:
            self._runs.pop(number, None)

        return d.addErrback(failed).addBoth(ended)

    async def _warm(self, number: int, entry: PrefetchSettings) -> None:
        started = self._clock.seconds()
        platforms = [Platform.parse(p) for p in entry.platforms]
        results: list[WarmResult] = []
        held: list[str] = []
        for image in entry.images:
            try:
                target, reference = target_for_image(self._config, image)
            except RegistryError as e:
                results.append(_failed(image, e.message))
                continue
            if self._hold(target):
                held.append(image)
                continue
            result = await warm_image(self._registry, target, reference, platforms, image=image)
            results.append(result)
            for failure in result.failures:
                log.warn(
                    "prefetch of {image}: {what}: {problem}",
                    entry=number,
                    image=image,
                    what=failure.what,
                    problem=failure.problem,
                )
        if held:
            log.info(
                "prefetch: {count} images of entry {entry} held back until its next run,"
                " their registry must be spared (its pull quota is low): {held}",
                entry=number,
                count=len(held),
                held=", ".join(held),
            )
        _log_run(number, results, held, self._clock.seconds() - started)


def _failed(image: str, problem: str) -> WarmResult:
    return WarmResult(image, failures=(WarmFailure(image, problem),))


def _log_run(
    number: int, results: Sequence[WarmResult], held: Sequence[str], seconds: float
) -> None:
    fields: dict[str, Any] = {
        "entry": number,
        "images": len(results),
        "warmed": sum(1 for r in results if r.ok),
        "failed": sum(1 for r in results if not r.ok),
        "held": len(held),
        "manifests": sum(len(r.manifests) for r in results),
        "fetched": sum(len(r.fetched) for r in results),
        "cached": sum(len(r.cached) for r in results),
        "bytes": sum(r.bytes for r in results),
        "failures": sum(len(r.failures) for r in results),
        "seconds": seconds,
    }
    log.info(
        "prefetch entry {entry}: {warmed} of {images} images warmed, {failed} failed,"
        " {held} held; {fetched} blobs fetched ({bytes} bytes), {cached} already cached,"
        " in {seconds:.1f}s",
        **fields,
    )
