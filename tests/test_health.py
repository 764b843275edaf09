"""``/healthz`` (the process serves) and ``/readyz`` (it can do its whole job), as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes import FakeRegistry, Harness


def answer(harness: Harness, path: str) -> tuple[int, dict[str, Any]]:
    response = harness.request("GET", path)
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    return response.code, json.loads(harness.body(response))


def test_healthz() -> None:
    """With Docker Hub's quota as last seen (none yet)."""
    assert answer(Harness(FakeRegistry()), "/healthz") == (
        200,
        {
            "status": "ok",
            "docker_hub_quota": {
                "limit": None,
                "remaining": None,
                "window": None,
                "floor": 0,
                "holding_until": None,
                "source": None,
            },
        },
    )


def test_healthz_without_docker_hub() -> None:
    harness = Harness(
        FakeRegistry(),
        {
            "well_known_registries": False,
            "registries": {"quay": {"url": "http://upstream.test"}},
            "routes": {"*": "quay"},
        },
    )
    assert answer(harness, "/healthz") == (200, {"status": "ok"})


def test_ready_without_a_cache() -> None:
    assert answer(Harness(FakeRegistry()), "/readyz") == (
        200,
        {"status": "ready", "checks": {"config_loaded": True}},
    )


def test_ready_once_the_cache_is_open_and_writable(tmp_path: Path) -> None:
    harness = Harness(FakeRegistry(), {"cache": {"dir": str(tmp_path / "cache")}})
    code, document = answer(harness, "/readyz")
    assert (code, document["checks"]) == (
        200,
        {"config_loaded": True, "cache_open": True, "cache_writable": True},
    )
    # A disk that refused a write: not ready until it is tried again.
    harness.storage().report_write_failure(OSError(28, "No space left on device"))
    code, document = answer(harness, "/readyz")
    assert (code, document["status"], document["checks"]["cache_writable"]) == (
        503,
        "not ready",
        False,
    )


def test_not_ready_while_the_cache_cannot_open(tmp_path: Path) -> None:
    foreign = tmp_path / "not-a-cache"
    foreign.mkdir()
    (foreign / "somebody's file").write_text("x")
    harness = Harness(FakeRegistry(), {"cache": {"dir": str(foreign)}})
    code, document = answer(harness, "/readyz")
    assert (code, document["checks"]["cache_open"]) == (503, False)
    # The process still serves.
    assert answer(harness, "/healthz")[0] == 200
