"""Client credentials passed through: a private upstream repository reaches only those it admits.

The fake upstream keeps ``alice/private`` for alice (Basic auth, as some
registries do), and ``library/public`` for anyone.  Whatever the cache holds,
neither an anonymous client, bob, nor someone with alice's name and another
password reads alice's image through the mirror.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from twisted.web.server import Request

from dockermirror.reference import digest_of
from tests.fakes import FakeRegistry, Handler, Harness, json_error

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/x-m", "n": 1}).encode()
BLOB = bytes(range(256)) * 32
PRIVATE = "/v2/private.test/alice/private"
ACCEPT = {"Accept": ["application/x-m"]}
ACCOUNTS = {"alice": "alice's password", "bob": "bob's password"}


def basic(user: str, password: str) -> dict[str, list[str]]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": [f"Basic {value}"]}


def alices(body: bytes, content_type: bytes) -> Handler:
    """Served to alice's own credentials only, as a private repository is."""

    def handle(request: Request) -> bytes:
        if (
            request.getHeader(b"authorization")
            != basic("alice", ACCOUNTS["alice"])["Authorization"][0].encode()
        ):
            request.setHeader(b"www-authenticate", b'Basic realm="upstream"')
            return json_error(request, 401, "UNAUTHORIZED")
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"docker-content-digest", digest_of(body).encode())
        return body

    return handle


@pytest.fixture
def registry() -> FakeRegistry:
    registry = FakeRegistry()
    registry.handlers["/v2/alice/private/manifests/1"] = alices(MANIFEST, b"application/x-m")
    registry.handlers[f"/v2/alice/private/blobs/{digest_of(BLOB)}"] = alices(
        BLOB, b"application/octet-stream"
    )
    return registry


@pytest.fixture
def harness(registry: FakeRegistry, tmp_path: Path) -> Harness:
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test"},
            "private.test": {"url": "http://upstream.test", "credentials": "passthrough"},
        },
        "cache": {"dir": str(tmp_path / "cache")},
    }
    return Harness(registry, toml)


def manifest(harness: Harness, **headers: list[str]) -> Any:
    return harness.request("GET", f"{PRIVATE}/manifests/1", headers={**ACCEPT, **headers})


def blob(harness: Harness, **headers: list[str]) -> Any:
    return harness.request("GET", f"{PRIVATE}/blobs/{digest_of(BLOB)}", headers=headers)


def outcome(harness: Harness, response: Any) -> tuple[int, str]:
    if response.code == 200:
        return 200, "OK"
    return harness.error(response)


def test_alices_image_is_alices(harness: Harness, registry: FakeRegistry) -> None:
    alice = basic("alice", ACCOUNTS["alice"])
    response = manifest(harness, **alice)
    assert (response.code, harness.body(response)) == (200, MANIFEST)
    response = blob(harness, **alice)
    assert (response.code, harness.body(response)) == (200, BLOB)
    # Cached now; and still, nobody else reads it.
    assert outcome(harness, manifest(harness)) == (401, "UNAUTHORIZED")
    assert outcome(harness, blob(harness)) == (401, "UNAUTHORIZED")
    bob = basic("bob", ACCOUNTS["bob"])
    assert outcome(harness, manifest(harness, **bob)) == (403, "DENIED")
    assert outcome(harness, blob(harness, **bob)) == (403, "DENIED")
    impostor = basic("alice", "a guess")
    assert outcome(harness, manifest(harness, **impostor)) == (403, "DENIED")
    assert outcome(harness, blob(harness, **impostor)) == (403, "DENIED")
    # Alice herself reads it from the cache: one upstream GET of the blob with her account.
    response = blob(harness, **alice)
    assert harness.body(response) == BLOB
    fetched = [
        uri
        for method, uri, headers in registry.requests
        if method == "GET" and "blobs" in uri and headers.get("authorization")
    ]
    assert len(fetched) == 1


def test_the_challenge_asks_an_anonymous_client_to_log_in(harness: Harness) -> None:
    response = manifest(harness)
    assert response.headers.getRawHeaders("www-authenticate") == [
        'Bearer realm="http://mirror.test/v2/auth",service="dockermirror",'
        'scope="repository:private.test/alice/private:pull"'
    ]


def test_tokens_carry_the_account_sealed(harness: Harness, registry: FakeRegistry) -> None:
    scope = "repository:private.test/alice/private:pull"
    tokens = {}
    for user, password in ACCOUNTS.items():
        response = harness.request(
            "GET", f"/v2/auth?service=dockermirror&scope={scope}", headers=basic(user, password)
        )
        tokens[user] = json.loads(harness.body(response))["token"]
    claims = jwt.decode(tokens["alice"], options={"verify_signature": False})
    assert ACCOUNTS["alice"] not in json.dumps(claims)
    bearer = {"Authorization": [f"Bearer {tokens['alice']}"]}
    assert outcome(harness, manifest(harness, **bearer)) == (200, "OK")
    bearer = {"Authorization": [f"Bearer {tokens['bob']}"]}
    assert outcome(harness, manifest(harness, **bearer)) == (403, "DENIED")
    sent = [h.get("authorization") for _, uri, h in registry.requests if "manifests" in uri]
    assert basic("bob", ACCOUNTS["bob"])["Authorization"] in sent


def test_an_upstreams_yes_is_remembered_briefly(harness: Harness, registry: FakeRegistry) -> None:
    alice = basic("alice", ACCOUNTS["alice"])
    manifest(harness, **alice)
    asked = len(registry.requests)
    manifest(harness, **alice)
    assert len(registry.requests) == asked  # within the minute: from the cache alone
    harness.clock.advance(61)
    manifest(harness, **alice)
    assert len(registry.requests) > asked  # asked again
    # Alice lost her access upstream: the cache does not keep serving her.
    registry.handlers["/v2/alice/private/manifests/1"] = alices(MANIFEST, b"application/x-m")
    before = dict(ACCOUNTS)
    try:
        ACCOUNTS["alice"] = "changed upstream"
        harness.clock.advance(61)
        assert outcome(harness, manifest(harness, **alice)) == (403, "DENIED")
    finally:
        ACCOUNTS.update(before)


def test_other_registries_get_no_client_credentials(
    harness: Harness, registry: FakeRegistry
) -> None:
    registry.handlers["/v2/library/public/manifests/1"] = alices(MANIFEST, b"application/x-m")
    harness.request(
        "GET", "/v2/public/manifests/1", headers={**ACCEPT, **basic("alice", ACCOUNTS["alice"])}
    )
    sent = [h.get("authorization") for _, uri, h in registry.requests if "public" in uri]
    assert sent and all(value is None for value in sent)


def test_no_anonymous_pulls_holds_for_a_passed_through_registry(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    users = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"m", bcrypt.gensalt(rounds=4)).decode()
    users.write_text(f"mirror-user:{hashed}\n")
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test"},
            "private.test": {"url": "http://upstream.test", "credentials": "passthrough"},
        },
        "auth": {"htpasswd": str(users), "anonymous": False},
    }
    harness = Harness(registry, toml)
    registry.handlers["/v2/library/public/manifests/1"] = lambda request: MANIFEST
    response = harness.request(
        "GET", "/v2/private.test/library/public/manifests/1", headers=ACCEPT
    )
    assert harness.error(response) == (401, "UNAUTHORIZED")
    assert registry.requests == []
    # An upstream account (no mirror user's) is let through, for the upstream to judge.
    response = manifest(harness, **basic("alice", ACCOUNTS["alice"]))
    assert (response.code, harness.body(response)) == (200, MANIFEST)
