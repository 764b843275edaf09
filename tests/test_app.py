"""The mirror's own endpoints: usage page, API base, token endpoint."""

from __future__ import annotations

import json
import re

import pytest

from dockermirror.web.homepage import choose_language
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


def test_usage_page_shows_the_visited_host(harness: Harness) -> None:
    response = harness.request("GET", "http://docker.example.com:5000/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    page = harness.body(response).decode()
    assert "docker pull docker.example.com:5000/library/redis" in page
    assert "docker tag docker.example.com:5000/library/redis redis" in page
    assert '"registry-mirrors": ["http://docker.example.com:5000"]' in page
    assert "/etc/containerd/certs.d/docker.io/hosts.toml" in page
    assert '[host."http://docker.example.com:5000"]' in page
    assert 'location = "docker.example.com:5000"' in page
    assert 'server = "https://registry-1.docker.io"' in page
    assert "ghcr.example.com" in page  # the route table
    # Self-contained: nothing loaded from elsewhere.
    assert not re.search(r"<(link|script|img)\b", page)
    assert "@import" not in page


def test_usage_page_for_another_registry(harness: Harness) -> None:
    page = harness.body(harness.request("GET", "http://ghcr.example.com/")).decode()
    assert "docker pull ghcr.example.com/NAMESPACE/IMAGE" in page
    assert "/etc/containerd/certs.d/ghcr.io/hosts.toml" in page
    assert "registry-mirrors" not in page  # Docker mirrors Docker Hub only


def test_a_host_header_that_is_no_host_is_refused_unechoed(harness: Harness) -> None:
    response = harness.request("GET", "/", headers={"Host": "<script>alert(1)</script>"})
    assert harness.error(response) == (400, "UNSUPPORTED")
    assert b"<script>" not in harness.body(response)


def test_usage_page_never_shows_credentials() -> None:
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test", "username": "bot", "password": "s3cret"}
        }
    }
    harness = Harness(FakeRegistry(), toml)
    response = harness.request("GET", "/")
    assert response.code == 200
    assert "s3cret" not in harness.body(response).decode()


def test_usage_page_in_chinese(harness: Harness) -> None:
    response = harness.request("GET", "/", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    page = harness.body(response).decode()
    assert '<html lang="zh-CN">' in page
    assert "拉取镜像" in page


@pytest.mark.parametrize(
    ("header", "language"),
    [
        (None, "en"),
        ("zh-CN", "zh"),
        ("en-US,en;q=0.9,zh;q=0.8", "en"),
        ("fr-FR,zh-TW;q=0.5,en;q=0.4", "zh"),
        ("de", "en"),
        ("zh;q=0,en", "en"),
        ("zh;q=bad, en", "en"),
    ],
)
def test_language_choice(header: str | None, language: str) -> None:
    assert choose_language(header) == language
