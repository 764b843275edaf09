"""Small upstream bodies that stall or break: manifests, tokens and error bodies.

Every waiter gets an OCI error within the configured time (504 for a stall, 502
for a body cut short), and the next request starts a fresh fetch: a failed
shared fetch never blocks later requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.web.server import NOT_DONE_YET

from dockermirror.reference import digest_of
from tests.fakes import FakeRegistry, Harness, dying_handler, result_of, stalling_handler

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/x-m"}).encode()
PATH = "/v2/library/redis/manifests/7"
# The manifest type a client names (one that names none takes schema1 only).
CLIENT = {"Accept": ["application/x-m"]}


def good_manifest(request: Any) -> bytes:
    request.setHeader(b"content-type", b"application/x-m")
    request.setHeader(b"docker-content-digest", digest_of(MANIFEST).encode())
    return bytes(MANIFEST)


@pytest.fixture
def cached(tmp_path: Path) -> dict[str, Any]:
    return {"cache": {"dir": str(tmp_path / "cache")}}


def waiters(harness: Harness, count: int = 3) -> list[Any]:
    url = "http://mirror.test/v2/redis/manifests/7"
    pending = [harness.client.get(url, headers=CLIENT) for _ in range(count)]
    harness.settle()
    return pending


def expire(harness: Harness) -> None:
    """Past the deadline for a small body (``response_timeout``)."""
    harness.clock.advance(harness.config.upstream.response_timeout + 1)
    harness.settle()


def errors(harness: Harness, pending: list[Any]) -> list[tuple[int, str]]:
    return [harness.error(result_of(d)) for d in pending]


def test_stalled_manifest_body_is_a_504_for_every_waiter_then_fetched_afresh(
    cached: dict[str, Any],
) -> None:
    registry = FakeRegistry()
    registry.handlers[PATH] = stalling_handler(MANIFEST[:10])
    harness = Harness(registry, cached)
    pending = waiters(harness)
    assert registry.paths("GET") == [PATH]  # one fetch, shared
    expire(harness)
    assert errors(harness, pending) == [(504, "UNAVAILABLE")] * 3
    registry.handlers[PATH] = good_manifest
    response = harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT)
    assert (response.code, harness.body(response)) == (200, MANIFEST)
    assert registry.paths("GET") == [PATH, PATH]


def test_truncated_manifest_body_is_a_502_for_every_waiter(cached: dict[str, Any]) -> None:
    registry = FakeRegistry()
    registry.handlers[PATH] = dying_handler(MANIFEST[:10])
    harness = Harness(registry, cached)
    assert errors(harness, waiters(harness)) == [(502, "UNAVAILABLE")] * 3


def test_stalled_token_body_is_a_504_for_every_waiter_then_fetched_afresh() -> None:
    registry = FakeRegistry(token_auth=True)
    registry.handlers[PATH] = good_manifest
    registry.token_handler = stalling_handler(b'{"token": "tok')
    harness = Harness(registry)
    pending = waiters(harness)
    assert len([p for p in registry.paths() if p.startswith("/token")]) == 1  # shared
    expire(harness)
    assert errors(harness, pending) == [(504, "UNAVAILABLE")] * 3
    registry.token_handler = None
    response = harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT)
    assert (response.code, harness.body(response)) == (200, MANIFEST)
    assert registry.issued == 1


def test_stalled_error_body_still_gives_the_error(cached: dict[str, Any]) -> None:
    registry = FakeRegistry()
    registry.handlers[PATH] = stalling_handler(b'{"errors": [{"code": "NAME_UNKNOWN"', status=404)
    harness = Harness(registry, cached)
    pending = waiters(harness)
    expire(harness)
    # The upstream's own code was never read whole: the mirror's default for a 404.
    assert errors(harness, pending) == [(404, "MANIFEST_UNKNOWN")] * 3


def test_the_small_body_deadline_counts_from_the_request(cached: dict[str, Any]) -> None:
    """Headers just in time, then a stall: 504 at response_timeout, not twice that."""
    held: list[Any] = []

    def hold(request: Any) -> int:
        held.append(request)
        return NOT_DONE_YET

    registry = FakeRegistry()
    registry.handlers[PATH] = hold
    harness = Harness(registry, cached)
    pending = waiters(harness, 1)
    timeout = harness.config.upstream.response_timeout
    harness.clock.advance(timeout - 1)
    (request,) = held
    request.setHeader(b"content-length", b"100")
    request.write(b'{"schemaVersion"')
    harness.settle()
    harness.clock.advance(1.5)
    harness.settle()
    assert errors(harness, pending) == [(504, "UNAVAILABLE")]
