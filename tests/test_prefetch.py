"""The prefetch service on a fake clock: when entries run, what ``hold`` holds back, no overlap.

The Registry is in memory (:mod:`tests.support.warming`); the schedule is
driven with twisted's Clock.  Last, the service on the mirror's own caching
Registry, in memory: what it warms is stored, and later runs cost nothing upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from dockermirror.config import MirrorConfig, build_config
from dockermirror.prefetch import FIRST_DELAY, STAGGER, PrefetchService
from dockermirror.routing import Target
from tests.fakes import FakeRegistry, Harness
from tests.support.warming import Content, HeldStream, MemoryRegistry

pytestmark = pytest.mark.usefixtures("observe_errors")

FAST, SLOW = 600.0, 3600.0
SECRET = "s3cret-password"


def config() -> MirrorConfig:
    return build_config(
        {
            "registries": {
                "docker.io": {"url": "http://hub.test", "username": "me", "password": SECRET},
                "ghcr.io": {"url": "http://ghcr.test"},
            },
            "prefetch": [
                {"images": ["app", "ghcr.io/o/tool:1"], "interval": FAST},
                {"images": ["other:2"], "platforms": ["linux/arm64"], "interval": SLOW},
            ],
        }
    )


class Hold:
    def __init__(self) -> None:
        self.registries: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, target: Target) -> bool:
        self.asked.append(target.label)
        return target.registry.name in self.registries


class Prefetch:
    """The service, its clock and registry, and what it asked for."""

    def __init__(self) -> None:
        self.content = Content()
        _, self.app_blobs = self.content.image("library/app", "app", tag="latest")
        self.content.image("o/tool", "tool", tag="1")
        self.content.image("library/other", "other", tag="2")
        self.registry = MemoryRegistry(self.content)
        self.clock = Clock()
        self.hold = Hold()
        self.service = PrefetchService(config(), self.registry, self.clock, self.hold)

    def runs(self, image: str) -> int:
        """How many times the image's tag was resolved."""
        return self.registry.calls.count(("manifest", image))


@pytest.fixture
def prefetch() -> Iterator[Prefetch]:
    result = Prefetch()
    result.service.startService()
    yield result
    if result.service.running:
        result.service.stopService()


APP, TOOL, OTHER = "library/app:latest", "o/tool:1", "library/other:2"


def test_entries_run_soon_after_start_staggered_then_every_interval(prefetch: Prefetch) -> None:
    clock = prefetch.clock
    clock.advance(FIRST_DELAY - 1)
    assert prefetch.registry.calls == []
    clock.advance(1)
    assert (prefetch.runs(APP), prefetch.runs(TOOL), prefetch.runs(OTHER)) == (1, 1, 0)
    clock.advance(STAGGER)
    assert prefetch.runs(OTHER) == 1
    clock.advance(FAST - STAGGER - 1)
    assert prefetch.runs(APP) == 1
    clock.advance(1)
    assert (prefetch.runs(APP), prefetch.runs(TOOL), prefetch.runs(OTHER)) == (2, 2, 1)
    clock.pump([FAST] * 5 + [STAGGER])
    assert (prefetch.runs(APP), prefetch.runs(OTHER)) == (7, 2)
    # This registry keeps nothing: every run fetches the blobs again.
    assert prefetch.registry.opened().count(prefetch.app_blobs[1]) == 7
    # A clock that jumps (a suspended machine) runs an entry once, not once per interval missed.
    clock.advance(SLOW * 10)
    assert prefetch.runs(APP) == 8


def test_held_registries_are_skipped_until_the_next_run(
    prefetch: Prefetch, log_events: list[dict[str, Any]]
) -> None:
    prefetch.hold.registries = {"docker.io"}
    prefetch.clock.advance(FIRST_DELAY)
    assert (prefetch.runs(APP), prefetch.runs(TOOL)) == (0, 1)
    held = [e for e in log_events if "held back" in e.get("log_format", "")]
    assert len(held) == 1 and held[0]["held"] == "app" and held[0]["count"] == 1
    run = [e for e in log_events if e.get("log_format", "").startswith("prefetch entry {entry}:")]
    assert run[-1]["held"] == 1 and run[-1]["warmed"] == 1

    prefetch.hold.registries = set()
    prefetch.clock.advance(FAST - 1)
    assert prefetch.runs(APP) == 0  # not before the next run
    prefetch.clock.advance(1)
    assert (prefetch.runs(APP), prefetch.runs(TOOL)) == (1, 2)
    assert "docker.io/library/app" in prefetch.hold.asked


def test_a_run_is_never_overlapped_by_the_next(prefetch: Prefetch) -> None:
    layer = prefetch.app_blobs[1]
    held = prefetch.registry.held[layer] = HeldStream(prefetch.content.blobs[layer])
    clock = prefetch.clock
    clock.advance(FIRST_DELAY)
    assert held.running and prefetch.service.busy(0)
    clock.advance(FAST * 2.5)
    assert prefetch.runs(APP) == 1 and prefetch.runs(TOOL) == 0  # still the first run
    del prefetch.registry.held[layer]
    held.release()
    assert not prefetch.service.busy(0) and prefetch.runs(TOOL) == 1
    # The next run is at the next interval boundary after the first run's start.
    clock.advance(FAST * 0.5 - 1)
    assert prefetch.runs(APP) == 1
    clock.advance(1)
    assert prefetch.runs(APP) == 2


def test_stopping_cancels_the_run_under_way_and_those_to_come(prefetch: Prefetch) -> None:
    layer = prefetch.app_blobs[1]
    held = prefetch.registry.held[layer] = HeldStream(prefetch.content.blobs[layer])
    prefetch.clock.advance(FIRST_DELAY)
    assert held.running
    prefetch.service.stopService()
    assert held.cancelled and not prefetch.service.busy(0)
    calls = len(prefetch.registry.calls)
    prefetch.clock.advance(SLOW * 3)
    assert len(prefetch.registry.calls) == calls


def test_each_run_is_one_event_with_its_numbers_and_failures_their_own(
    prefetch: Prefetch, log_events: list[dict[str, Any]]
) -> None:
    del prefetch.content.manifests[("o/tool", "1")]
    prefetch.clock.advance(FIRST_DELAY + STAGGER)
    runs = [e for e in log_events if e.get("log_format", "").startswith("prefetch entry {entry}:")]
    assert [(e["entry"], e["images"], e["warmed"], e["failed"]) for e in runs] == [
        (0, 2, 1, 1),
        (1, 1, 1, 0),
    ]
    app = sum(len(prefetch.content.blobs[d]) for d in prefetch.app_blobs)
    assert runs[0]["bytes"] == app and runs[0]["fetched"] == 3 and runs[0]["failures"] == 1
    failures = [e for e in log_events if e.get("log_format", "").startswith("prefetch of")]
    assert [(e["image"], e["problem"]) for e in failures] == [
        ("ghcr.io/o/tool:1", "manifest unknown (404)")
    ]
    # The registry's password is in the configuration, never in the log.
    for event in log_events:
        assert SECRET not in formatEvent(event) and SECRET not in repr(event)


def test_prefetch_fills_the_mirrors_cache_and_later_runs_fetch_no_blob(tmp_path: Path) -> None:
    content = Content()
    _, blobs = content.image("library/app", "app", tag="latest")
    upstream = FakeRegistry()
    content.publish(upstream)
    harness = Harness(
        upstream,
        {
            "cache": {"dir": str(tmp_path / "cache")},
            "prefetch": [{"images": ["app"], "interval": 60}],
        },
    )
    service = PrefetchService(harness.config, harness.registry_stack, harness.clock, Hold())
    service.startService()
    harness.clock.advance(FIRST_DELAY)
    harness.settle()
    assert not service.busy(0)
    for digest in blobs:
        assert harness.storage().path(digest).read_bytes() == content.blobs[digest]
    requests = len(upstream.requests)
    harness.clock.advance(60)
    harness.settle()
    # Within the tag's TTL the next run asks the upstream nothing at all.
    assert len(upstream.requests) == requests
    service.stopService()
