"""Docker Hub's pull quota: read from its answers, shown, and saved at the floor and after a 429.

A test upstream (in memory) states ``RateLimit-Limit``/``RateLimit-Remaining``
as Docker Hub does, then refuses with 429; the mirror keeps serving cached tags,
stops revalidating at the floor, waits out a 429 without asking again, and
shows the numbers in /healthz and the metrics.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.web.server import Request

from dockermirror.config import build_config
from dockermirror.metrics import Metrics
from dockermirror.reference import digest_of
from dockermirror.registry.quota import MAX_RETRY, MAX_WINDOW, HubQuota
from dockermirror.routing import target_for_image
from dockermirror.service import build_metrics_site, hub_quotas, quota_holds
from tests.fakes import FakeRegistry, Harness, json_error, result_of, stub_client

OCI = "application/vnd.oci.image.manifest.v1+json"
CLIENT = {"Accept": [OCI]}
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": []}).encode()
OTHER = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": [], "x": 1}).encode()
THIRD = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": [], "x": 2}).encode()
TTL = 300


class Hub:
    """Manifests with Hub's quota headers; ``refuse`` makes it answer 429 instead."""

    def __init__(self) -> None:
        self.registry = FakeRegistry()
        self.remaining = 50
        self.refuse: str | None = None  # the Retry-After of a 429
        for tag, body in (("7", MANIFEST), ("8", OTHER), ("9", THIRD)):
            self.registry.handlers[f"/v2/library/redis/manifests/{tag}"] = self._serve(body)

    def _serve(self, body: bytes) -> Any:
        def handle(request: Request) -> bytes:
            if self.refuse is not None:
                request.setHeader(b"retry-after", self.refuse.encode())
                return json_error(request, 429, "TOOMANYREQUESTS")
            request.setHeader(b"ratelimit-limit", b"100;w=21600")
            request.setHeader(b"ratelimit-remaining", f"{self.remaining};w=21600".encode())
            request.setHeader(b"docker-ratelimit-source", b"192.0.2.7")
            request.setHeader(b"content-type", OCI.encode())
            request.setHeader(b"docker-content-digest", digest_of(body).encode())
            return body

        return handle

    def asked(self) -> int:
        return len(self.registry.requests)


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
def harness(hub: Hub, tmp_path: Path) -> Harness:
    return Harness(
        hub.registry,
        {"cache": {"dir": str(tmp_path / "cache")}, "docker_hub": {"quota_floor": 5}},
    )


def pull(harness: Harness, tag: str = "7") -> tuple[int, str]:
    response = harness.request("GET", f"/v2/redis/manifests/{tag}", headers=CLIENT)
    harness.body(response)
    return response.code, response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0]


def healthz_quota(harness: Harness) -> dict[str, Any]:
    response = harness.request("GET", "/healthz")
    document: dict[str, Any] = json.loads(harness.body(response))["docker_hub_quota"]
    return document


def scrape(harness: Harness) -> dict[str, float]:
    """The metrics port's /metrics, as {sample name with labels: value}."""
    site = build_metrics_site(harness.config, harness.registry_stack, harness.metrics)
    client = stub_client(site)
    response = result_of(client.get("http://metrics.test/metrics"))
    d = response.content()
    client.flush()
    text = result_of(d).decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def quota_warnings(log_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log_events if "floor of" in e.get("log_format", "")]


def test_the_numbers_are_read_and_shown(harness: Harness, hub: Hub) -> None:
    assert pull(harness) == (200, "MISS")
    assert healthz_quota(harness) == {
        "limit": 100,
        "remaining": 50,
        "window": 21600,
        "floor": 5,
        "holding_until": None,
        "source": "192.0.2.7",
    }
    samples = scrape(harness)
    source = (
        'dockermirror_docker_hub_quota_source_info{"registry": "docker.io", "source": "192.0.2.7"}'
    )
    assert samples[source] == 1
    assert samples['dockermirror_docker_hub_quota_limit{"registry": "docker.io"}'] == 100
    assert samples['dockermirror_docker_hub_quota_remaining{"registry": "docker.io"}'] == 50
    assert samples['dockermirror_docker_hub_quota_holding{"registry": "docker.io"}'] == 0


def test_at_the_floor_cached_tags_are_served_without_revalidation(
    harness: Harness, hub: Hub, log_events: list[dict[str, Any]]
) -> None:
    assert pull(harness) == (200, "MISS")
    harness.clock.advance(TTL + 1)
    hub.remaining = 5
    # This revalidation is what tells the mirror it is at the floor.
    assert pull(harness) == (200, "REVALIDATED")
    asked = hub.asked()
    assert healthz_quota(harness)["holding_until"] == pytest.approx(TTL + 1 + 21600)
    for _ in range(3):
        harness.clock.advance(TTL + 1)
        assert pull(harness) == (200, "STALE")
    assert hub.asked() == asked  # nothing more spent on revalidation
    assert scrape(harness)['dockermirror_docker_hub_quota_holding{"registry": "docker.io"}'] == 1

    # A miss still goes to Hub; below the floor, the hold goes on (and is not announced again).
    hub.remaining = 4
    assert pull(harness, "8") == (200, "MISS")
    assert pull(harness) == (200, "STALE")
    assert len(quota_warnings(log_events)) == 1  # said once, not per answer

    # An answer that shows the quota has recovered: revalidation resumes.
    hub.remaining = 20
    assert pull(harness, "9") == (200, "MISS")
    assert healthz_quota(harness)["holding_until"] is None
    assert pull(harness) == (200, "REVALIDATED")
    assert hub.asked() == asked + 3


def test_the_hold_ends_with_hubs_window(harness: Harness, hub: Hub) -> None:
    pull(harness)
    harness.clock.advance(TTL + 1)
    hub.remaining = 3
    pull(harness)
    harness.clock.advance(21600)
    hub.remaining = 90
    assert pull(harness) == (200, "REVALIDATED")


def test_without_a_floor_only_a_429_holds(hub: Hub, tmp_path: Path) -> None:
    harness = Harness(hub.registry, {"cache": {"dir": str(tmp_path / "cache")}})
    pull(harness)
    harness.clock.advance(TTL + 1)
    hub.remaining = 0
    assert pull(harness) == (200, "REVALIDATED")
    harness.clock.advance(TTL + 1)
    assert pull(harness) == (200, "REVALIDATED")


def test_after_a_429_the_mirror_waits_as_hub_asked(
    harness: Harness, hub: Hub, log_events: list[dict[str, Any]]
) -> None:
    assert pull(harness) == (200, "MISS")
    harness.clock.advance(TTL + 1)
    hub.refuse = "120"
    # The revalidation is refused: the cached tag stands in.
    assert pull(harness) == (200, "STALE")
    asked = hub.asked()
    # Meanwhile nothing goes to Hub: a cached tag is served, an uncached one refused by the
    # mirror itself, with Hub's wait.
    assert pull(harness) == (200, "STALE")
    response = harness.request("GET", "/v2/redis/manifests/8", headers=CLIENT)
    assert harness.error(response) == (429, "TOOMANYREQUESTS")
    assert 1 <= int(response.headers.getRawHeaders("retry-after")[0]) <= 120
    assert hub.asked() == asked
    assert healthz_quota(harness)["remaining"] == 0
    assert len([e for e in log_events if "(429)" in e.get("log_format", "")]) == 1

    harness.clock.advance(121)
    hub.refuse = None
    assert pull(harness, "8") == (200, "MISS")
    assert pull(harness) == (200, "REVALIDATED")


def test_a_429_with_a_date(hub: Hub) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    quota = HubQuota("docker.io", clock, 0)
    when = datetime.fromtimestamp(clock.seconds() + 90, UTC)
    quota.refused(format_datetime(when, usegmt=True))
    assert quota.refusing() == pytest.approx(90)
    clock.advance(91)
    assert quota.refusing() is None and not quota.holding()


@given(
    limit=st.one_of(st.none(), st.text(max_size=40)),
    remaining=st.one_of(st.none(), st.text(max_size=40)),
    retry=st.one_of(st.none(), st.text(max_size=40)),
)
def test_any_header_values_are_taken_safely(
    limit: str | None, remaining: str | None, retry: str | None
) -> None:
    """Whatever Hub (or something in its place) sends, the quota neither fails nor waits long."""
    clock = Clock()
    quota = HubQuota("docker.io", clock, 5)
    quota.observe(limit, remaining, None)
    reading = quota.reading()
    assert reading.remaining is None or reading.remaining >= 0
    quota.refused(retry)
    wait = quota.refusing()
    assert wait is not None and 1 <= wait <= MAX_RETRY


def test_hub_header_shapes() -> None:
    quota = HubQuota("docker.io", Clock(), 0)
    quota.observe("100;w=21600", "76;w=21600", None)
    assert (quota.reading().limit, quota.reading().remaining, quota.reading().window) == (
        100,
        76,
        21600,
    )
    quota.observe("200", "150", None)  # no window: Hub's older form
    assert (quota.reading().limit, quota.reading().remaining) == (200, 150)
    quota.observe(None, None, None)  # an unlimited account's answer changes nothing
    assert quota.reading().remaining == 150


def test_warming_waits_while_the_quota_holds() -> None:
    """What the prefetch service is given: Docker Hub's targets wait at the floor, others not."""
    clock = Clock()
    config = build_config({"docker_hub": {"quota_floor": 5}})
    quotas = hub_quotas(config, clock)
    hold = quota_holds(quotas)
    hub_image, _ = target_for_image(config, "redis:7")
    other, _ = target_for_image(config, "ghcr.io/owner/tool:1")
    assert not hold(hub_image)
    quotas["docker.io"].observe("100;w=21600", "5;w=21600", None)
    assert hold(hub_image) and not hold(other)
    clock.advance(21601)
    assert not hold(hub_image)


def test_a_window_is_held_a_day_at_most() -> None:
    clock = Clock()
    quota = HubQuota("docker.io", clock, 10)
    quota.observe("100;w=999999999", "5;w=999999999", None)
    assert quota.reading().holding_until == MAX_WINDOW


def test_upstream_error_kinds_are_classes_not_statuses() -> None:
    """An upstream may answer any number: the metrics' label takes a few values only."""
    metrics = Metrics(Clock(), {})
    for status in (500, 503, 599, 700, 999, 429):
        metrics.answered("docker.io", status, 0.1)
    kinds = {
        sample.labels["kind"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "dockermirror_upstream_errors_total"
    }
    assert kinds == {"status_5xx", "status_429"}
