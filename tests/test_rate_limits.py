"""Rate limits per client: requests, bytes and concurrent blob downloads; 429 with Retry-After."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.reference import digest_of
from tests.fakes import FakeRegistry, Harness, blob_handler, result_of

BLOB = bytes(range(256)) * 64  # 16 KiB
DIGEST = digest_of(BLOB)
PATH = f"/v2/redis/blobs/{DIGEST}"


def credentials(user: str) -> dict[str, list[str]]:
    return {"Authorization": ["Basic " + base64.b64encode(f"{user}:pw".encode()).decode()]}


@pytest.fixture
def toml(tmp_path: Path) -> dict[str, Any]:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    users = tmp_path / "htpasswd"
    users.write_text("".join(f"{name}:{hashed}\n" for name in ("alice", "bob", "ci")))
    return {
        "auth": {"htpasswd": str(users)},
        "users": {"ci": {"unlimited": True}},
    }


def harness_with(toml: dict[str, Any], limits: dict[str, Any]) -> Harness:
    registry = FakeRegistry()
    registry.handlers[f"/v2/library/redis/blobs/{DIGEST}"] = blob_handler(BLOB)
    return Harness(registry, {**toml, "limits": limits})


def status(harness: Harness, user: str, path: str = PATH) -> int:
    response = harness.request("GET", path, headers=credentials(user))
    harness.body(response)
    return int(response.code)


def test_requests_per_second(toml: dict[str, Any]) -> None:
    harness = harness_with(toml, {"requests_per_second": 1, "request_burst": 2})
    assert [status(harness, "alice") for _ in range(3)] == [200, 200, 429]
    response = harness.request("GET", PATH, headers=credentials("alice"))
    assert harness.error(response) == (429, "TOOMANYREQUESTS")
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    # Another client is unaffected, an unlimited one never limited...
    assert [status(harness, "bob") for _ in range(2)] == [200, 200]
    assert [status(harness, "ci") for _ in range(5)] == [200] * 5
    # ...and alice may go on once her bucket refilled.
    harness.clock.advance(1)
    assert status(harness, "alice") == 200


def test_bytes_per_second(toml: dict[str, Any]) -> None:
    # 1000 B/s saves up 10 s: one 16 KiB blob goes, then alice waits for her debt.
    harness = harness_with(toml, {"bytes_per_second": 1000})
    assert status(harness, "alice") == 200
    response = harness.request("GET", PATH, headers=credentials("alice"))
    assert harness.error(response) == (429, "TOOMANYREQUESTS")
    # 6384 bytes of debt and one more, at 1000 a second: 7 s.
    assert response.headers.getRawHeaders("retry-after") == ["7"]
    assert status(harness, "bob") == 200
    harness.clock.advance(7)
    assert status(harness, "alice") == 200


def test_concurrent_blob_downloads(toml: dict[str, Any]) -> None:
    harness = harness_with(toml, {"concurrent_blobs": 1})
    held: list[Request] = []

    def hold(request: Request) -> int:
        held.append(request)
        return NOT_DONE_YET

    harness.registry.handlers[f"/v2/library/redis/blobs/{DIGEST}"] = hold
    first = harness.client.get("http://mirror.test" + PATH, headers=credentials("alice"))
    harness.settle()
    assert status(harness, "alice") == 429
    # Another client's download is not refused (it is held upstream like the first).
    second = harness.client.get("http://mirror.test" + PATH, headers=credentials("bob"))
    harness.settle()
    for request in held:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        request.write(BLOB)
        request.finish()
    harness.settle()
    assert harness.body(result_of(first)) == BLOB
    assert harness.body(result_of(second)) == BLOB
    harness.registry.handlers[f"/v2/library/redis/blobs/{DIGEST}"] = blob_handler(BLOB)
    assert status(harness, "alice") == 200


def test_logins_are_limited_by_address(toml: dict[str, Any]) -> None:
    harness = harness_with(toml, {"requests_per_second": 1, "request_burst": 3})
    wrong = {"Authorization": ["Basic " + base64.b64encode(b"alice:guess").decode()]}
    answers = [
        harness.request("GET", "/v2/auth?service=dockermirror", headers=wrong).code
        for _ in range(4)
    ]
    assert answers == [401, 401, 401, 429]
