"""The mirror's own endpoints: usage page, API base, token endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.web.test.requesthelper import DummyRequest

from dockermirror.web.requests import host, valid_host
from tests.fakes import FakeRegistry, Harness


@pytest.fixture
def harness() -> Harness:
    toml = {"routes": {"*": "docker.io", "ghcr.example.com": "ghcr.io"}}
    return Harness(FakeRegistry(), toml)


def test_api_base_needs_no_credentials(harness: Harness) -> None:
    for path in ("/v2/", "/v2"):
        response = harness.request("GET", path)
        assert response.code == 200
        assert harness.body(response) == b"{}"
        assert response.headers.getRawHeaders("docker-distribution-api-version") == [
            "registry/2.0"
        ]
    assert harness.registry.requests == []


def test_token_endpoint_grants_pull_for_every_scope(harness: Harness) -> None:
    response = harness.request(
        "GET",
        "/v2/auth?service=dockermirror&scope=repository:redis:pull,push"
        "&scope=repository:bitnami/redis:pull&scope=repository:quay.io/a/b:pull",
    )
    assert response.code == 200
    document = json.loads(harness.body(response))
    assert document["token"] == document["access_token"]
    assert document["expires_in"] == 300
    import jwt

    claims = jwt.decode(document["token"], options={"verify_signature": False})
    assert claims["access"] == [
        {"type": "repository", "name": "docker.io/library/redis", "actions": ["pull"]},
        {"type": "repository", "name": "docker.io/bitnami/redis", "actions": ["pull"]},
        {"type": "repository", "name": "quay.io/a/b", "actions": ["pull"]},
    ]
    # The mirror accepts its own token...
    bearer = {"Authorization": f"Bearer {document['token']}"}
    assert harness.request("GET", "/v2/", headers=bearer).code == 200


def test_invalid_bearer_token_is_challenged_towards_the_mirror(harness: Harness) -> None:
    response = harness.request("GET", "/v2/", headers={"Authorization": "Bearer forged"})
    assert harness.error(response) == (401, "UNAUTHORIZED")
    assert response.headers.getRawHeaders("www-authenticate") == [
        'Bearer realm="http://mirror.test/v2/auth",service="dockermirror"'
    ]


def test_expired_token_is_refused(harness: Harness) -> None:
    token = json.loads(
        harness.body(harness.request("GET", "/v2/auth?scope=repository:redis:pull"))
    )
    harness.clock.advance(301)
    response = harness.request(
        "GET", "/v2/", headers={"Authorization": f"Bearer {token['token']}"}
    )
    assert harness.error(response) == (401, "UNAUTHORIZED")


def test_a_host_header_that_is_no_host_is_refused_unechoed(harness: Harness) -> None:
    response = harness.request("GET", "/", headers={"Host": "<script>alert(1)</script>"})
    assert harness.error(response) == (400, "UNSUPPORTED")
    assert b"<script>" not in harness.body(response)


def test_a_request_without_a_host_header_names_the_address_it_reached() -> None:
    """HTTP/1.0 may send no Host: links and snippets name the mirror's own address."""
    request: Any = DummyRequest([b""])  # (Twisted's test request does not declare IRequest)
    assert host(request) == "127.0.0.1:80"
    request.requestHeaders.setRawHeaders(b"host", [b"mirror.example"])
    assert host(request) == "mirror.example"


@pytest.mark.parametrize(("value", "valid"), [("x:65535", True), ("x:99999", False)])
def test_a_host_s_port_is_a_port(value: str, valid: bool) -> None:
    assert valid_host(value) is valid
