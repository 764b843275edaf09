"""The access policy in memory: who may pull what, through which route, from where.

The auth matrix of the access-control issue, each case against its status and
OCI error code; the same cases through real clients are in
``test_access_interop.py``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from twisted.internet.address import IPv6Address
from twisted.web.test.requesthelper import DummyRequest

from dockermirror.reference import digest_of
from dockermirror.web.forwarded import client_of
from tests.fakes import FakeRegistry, Harness

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/x-m"}).encode()
ACCEPT = {"Accept": ["application/x-m"]}
KEY = b"s" * 32


def manifest(request: Any) -> bytes:
    request.setHeader(b"content-type", b"application/x-m")
    request.setHeader(b"docker-content-digest", digest_of(MANIFEST).encode())
    return MANIFEST


def htpasswd_line(user: str, password: str) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:$2y${hashed[4:]}\n"


@pytest.fixture
def registry() -> FakeRegistry:
    registry = FakeRegistry()
    for name in ("library/redis", "acme/private", "library/miner", "bitnami/redis"):
        registry.handlers[f"/v2/{name}/manifests/1"] = manifest
    return registry


@pytest.fixture
def toml(tmp_path: Path) -> dict[str, Any]:
    users = tmp_path / "htpasswd"
    users.write_text(htpasswd_line("alice", "wonderland") + htpasswd_line("bob", "builder"))
    return {
        "registries": {
            "docker.io": {
                "url": "http://upstream.test",
                "repositories": ["*", "!*/miner*"],
                "blocked_message": "no miners here",
            }
        },
        "auth": {
            "htpasswd": str(users),
            "anonymous_pull": ["docker.io/library/*"],
        },
        "users": {"bob": {"pull": ["docker.io/bitnami/*"]}},
        "cache": {"enabled": False},
    }


def basic(user: str, password: str) -> dict[str, list[str]]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": [f"Basic {value}"]}


def token(harness: Harness, scope: str, headers: dict[str, list[str]] | None = None) -> str:
    response = harness.request(
        "GET", f"/v2/auth?service=dockermirror&scope={scope}", headers=headers
    )
    assert response.code == 200
    return str(json.loads(harness.body(response))["token"])


def pull(
    harness: Harness,
    name: str,
    bearer: str | None = None,
    headers: dict[str, list[str]] | None = None,
) -> Any:
    sent = {**ACCEPT, **(headers or {})}
    if bearer is not None:
        sent["Authorization"] = [f"Bearer {bearer}"]
    return harness.request("GET", f"/v2/{name}/manifests/1", headers=sent)


def outcome(harness: Harness, response: Any) -> tuple[int, str]:
    if response.code == 200:
        return 200, "OK"
    return harness.error(response)


def test_the_api_base_asks_for_credentials(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    response = harness.request("GET", "/v2/")
    assert harness.error(response) == (401, "UNAUTHORIZED")
    assert response.headers.getRawHeaders("www-authenticate") == [
        'Bearer realm="http://mirror.test/v2/auth",service="dockermirror"'
    ]
    assert harness.request("GET", "/v2/", headers=basic("alice", "wonderland")).code == 200
    assert outcome(harness, harness.request("GET", "/v2/", headers=basic("alice", "x"))) == (
        401,
        "UNAUTHORIZED",
    )
    bearer = token(harness, "repository:redis:pull", basic("alice", "wonderland"))
    assert (
        harness.request("GET", "/v2/", headers={"Authorization": [f"Bearer {bearer}"]}).code == 200
    )


@pytest.mark.parametrize(
    ("who", "name", "expected"),
    [
        ("anonymous", "redis", (200, "OK")),
        ("anonymous", "acme/private", (401, "UNAUTHORIZED")),
        ("anonymous", "miner", (403, "DENIED")),
        ("alice", "acme/private", (200, "OK")),
        ("alice", "miner", (403, "DENIED")),
        ("bob", "bitnami/redis", (200, "OK")),
        ("bob", "acme/private", (403, "DENIED")),
        ("wrong password", "redis", (401, "UNAUTHORIZED")),
    ],
)
def test_the_matrix_with_tokens_and_with_basic_credentials(
    registry: FakeRegistry, toml: dict[str, Any], who: str, name: str, expected: tuple[int, str]
) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    credentials = {
        "anonymous": None,
        "alice": basic("alice", "wonderland"),
        "bob": basic("bob", "builder"),
        "wrong password": basic("alice", "nope"),
    }[who]
    # Straight to the repository, with Basic credentials or none...
    direct = pull(harness, name, headers=credentials)
    assert outcome(harness, direct) == expected
    # ...and the Docker way: a token first, then the repository with it.
    response = harness.request(
        "GET", f"/v2/auth?service=dockermirror&scope=repository:{name}:pull", headers=credentials
    )
    if who == "wrong password":
        assert harness.error(response) == (401, "UNAUTHORIZED")
        return
    bearer = json.loads(harness.body(response))["token"]
    assert outcome(harness, pull(harness, name, bearer)) == expected


def test_an_unauthorized_answer_names_the_scope_to_ask_for(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    response = pull(harness, "acme/private")
    assert response.headers.getRawHeaders("www-authenticate") == [
        'Bearer realm="http://mirror.test/v2/auth",service="dockermirror",'
        'scope="repository:acme/private:pull"'
    ]


def test_a_token_is_for_its_scopes_only(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    alice = token(harness, "repository:redis:pull", basic("alice", "wonderland"))
    assert outcome(harness, pull(harness, "acme/private", alice)) == (403, "DENIED")
    anonymous = token(harness, "repository:redis:pull")
    assert outcome(harness, pull(harness, "acme/private", anonymous)) == (401, "UNAUTHORIZED")
    claims = jwt.decode(alice, options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["access"] == [
        {"type": "repository", "name": "docker.io/library/redis", "actions": ["pull"]}
    ]


def test_a_token_asked_for_beyond_the_users_rights_grants_nothing(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    bob = token(harness, "repository:acme/private:pull", basic("bob", "builder"))
    claims = jwt.decode(bob, options={"verify_signature": False})
    assert claims["access"] == [
        {"type": "repository", "name": "docker.io/acme/private", "actions": []}
    ]
    assert outcome(harness, pull(harness, "acme/private", bob)) == (403, "DENIED")


def test_expired_and_forged_tokens_are_401(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    alice = token(harness, "repository:redis:pull", basic("alice", "wonderland"))
    harness.clock.advance(301)
    assert outcome(harness, pull(harness, "redis", alice)) == (401, "UNAUTHORIZED")
    other = Harness(registry, toml, token_key=b"o" * 32)
    forged = token(other, "repository:redis:pull", basic("alice", "wonderland"))
    assert outcome(harness, pull(harness, "redis", forged)) == (401, "UNAUTHORIZED")


def test_a_token_from_before_a_restart_still_works(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    before = Harness(registry, toml, token_key=KEY)
    alice = token(before, "repository:acme/private:pull", basic("alice", "wonderland"))
    after = Harness(registry, toml, token_key=KEY)
    assert outcome(after, pull(after, "acme/private", alice)) == (200, "OK")


def test_a_blocked_repository_is_refused_before_the_cache_or_upstream(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    response = pull(harness, "miner", headers=basic("alice", "wonderland"))
    assert harness.error(response) == (403, "DENIED")
    assert json.loads(harness.body(response))["errors"][0]["message"] == "no miners here"
    assert registry.requests == []


def test_the_oauth_password_grant(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    form = "grant_type=password&username=alice&password=wonderland&service=dockermirror"
    form += "&scope=repository%3Aacme%2Fprivate%3Apull&client_id=containerd-client"
    headers = {"Content-Type": ["application/x-www-form-urlencoded"]}
    response = harness.request("POST", "/v2/auth", data=form.encode(), headers=headers)
    document = json.loads(harness.body(response))
    assert outcome(harness, pull(harness, "acme/private", document["access_token"])) == (200, "OK")
    wrong = form.replace("wonderland", "x")
    response = harness.request("POST", "/v2/auth", data=wrong.encode(), headers=headers)
    assert harness.error(response) == (401, "UNAUTHORIZED")
    refresh = "grant_type=refresh_token&refresh_token=x&service=dockermirror"
    response = harness.request("POST", "/v2/auth", data=refresh.encode(), headers=headers)
    assert harness.error(response)[0] == 400


def test_no_anonymous_pulls_at_all(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    toml["auth"]["anonymous"] = False
    harness = Harness(registry, toml, token_key=KEY)
    assert outcome(harness, pull(harness, "redis")) == (401, "UNAUTHORIZED")
    response = harness.request("GET", "/v2/auth?service=dockermirror&scope=repository:redis:pull")
    assert harness.error(response) == (401, "UNAUTHORIZED")


def test_without_users_everything_is_open_but_the_blocked(registry: FakeRegistry) -> None:
    toml = {
        "registries": {"docker.io": {"url": "http://upstream.test", "repositories": ["library/*"]}}
    }
    harness = Harness(registry, toml)
    assert harness.request("GET", "/v2/").code == 200
    assert outcome(harness, pull(harness, "redis")) == (200, "OK")
    assert outcome(harness, pull(harness, "acme/private")) == (403, "DENIED")


@pytest.mark.parametrize(
    ("access", "forwarded", "expected"),
    [
        ({"deny": ["127.0.0.0/8"]}, {}, 403),
        ({"allow": ["10.0.0.0/8"]}, {}, 403),
        ({"allow": ["127.0.0.0/8"]}, {}, 200),
        # From a trusted proxy, the client it names is the one judged...
        (
            {"deny": ["192.0.2.0/24"], "trusted_proxies": ["127.0.0.1/32"]},
            {"X-Forwarded-For": ["192.0.2.7"]},
            403,
        ),
        (
            {"deny": ["192.0.2.0/24"], "trusted_proxies": ["127.0.0.1/32"]},
            {"Forwarded": ['for="192.0.2.7:4711"']},
            403,
        ),
        # One source: a Forwarded the client added beside the proxy's X-Forwarded-For is not it.
        (
            {"deny": ["192.0.2.0/24"], "trusted_proxies": ["127.0.0.1/32"]},
            {"X-Forwarded-For": ["192.0.2.7"], "Forwarded": ["for=198.51.100.1"]},
            403,
        ),
        # An address no list can judge ("unknown", "_hidden", garbage) is not let in.
        (
            {"allow": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1/32"]},
            {"Forwarded": ["for=_hidden"]},
            403,
        ),
        (
            {"allow": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1/32"]},
            {"X-Forwarded-For": ["127.000.000.009"]},
            403,
        ),
        # ...and from anywhere else the header is a claim, ignored.
        ({"deny": ["127.0.0.0/8"]}, {"X-Forwarded-For": ["192.0.2.7"]}, 403),
        ({"allow": ["192.0.2.0/24"]}, {"X-Forwarded-For": ["192.0.2.7"]}, 403),
    ],
)
def test_network_policy(
    registry: FakeRegistry, access: dict[str, Any], forwarded: dict[str, list[str]], expected: int
) -> None:
    harness = Harness(registry, {"access": access})
    response = pull(harness, "redis", headers=forwarded)
    assert response.code == expected
    if expected == 403:
        assert harness.error(response) == (403, "DENIED")


def test_a_trusted_proxy_sets_the_scheme_of_links_and_the_realm(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    toml["access"] = {"trusted_proxies": ["127.0.0.0/8"]}
    harness = Harness(registry, toml, token_key=KEY)
    response = harness.request("GET", "/v2/", headers={"X-Forwarded-Proto": ["https"]})
    assert response.headers.getRawHeaders("www-authenticate")[0].startswith(
        'Bearer realm="https://mirror.test/v2/auth"'
    )
    page = harness.body(harness.request("GET", "/", headers={"X-Forwarded-Proto": ["https"]}))
    assert b"https://mirror.test" in page


def test_a_trusted_proxy_passes_on_the_host_the_client_used(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    """nginx's default rewrites Host: X-Forwarded-Host (or Forwarded host=) says it."""
    toml["access"] = {"trusted_proxies": ["127.0.0.0/8"]}
    harness = Harness(registry, toml, token_key=KEY)
    forwarded = {"X-Forwarded-Host": ["mirror.example:8443"], "X-Forwarded-Proto": ["https"]}
    page = harness.body(harness.request("GET", "/", headers=forwarded))
    assert b"https://mirror.example:8443" in page and b"mirror.test" not in page
    response = harness.request(
        "GET", "/v2/", headers={"Forwarded": ["host=m.example;proto=https"]}
    )
    assert response.headers.getRawHeaders("www-authenticate")[0].startswith(
        'Bearer realm="https://m.example/v2/auth"'
    )
    bad = harness.request("GET", "/", headers={"X-Forwarded-Host": ["<x>"]})
    assert harness.error(bad) == (400, "UNSUPPORTED")


def test_a_host_a_client_claims_is_not_taken(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    harness = Harness(registry, toml, token_key=KEY)  # no trusted proxies
    page = harness.body(
        harness.request("GET", "/", headers={"X-Forwarded-Host": ["evil.example"]})
    )
    assert b"evil.example" not in page and b"mirror.test" in page


def test_a_registry_with_credentials_is_reached_only_by_its_host_route(
    registry: FakeRegistry,
) -> None:
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test"},
            "private.test": {"url": "http://upstream.test", "username": "u", "password": "p"},
        },
        "routes": {"private.example.com": "private.test", "*": "docker.io"},
    }
    harness = Harness(registry, toml)
    via_host = harness.request(
        "GET", "http://private.example.com/v2/acme/private/manifests/1", headers=ACCEPT
    )
    assert via_host.code == 200
    assert [h["authorization"] for _, _, h in registry.requests if "authorization" in h] == []
    # By prefix, the name is a Docker Hub name like any other: never the private registry.
    registry.requests.clear()
    harness.request("GET", "/v2/private.test/acme/private/manifests/1", headers=ACCEPT)
    assert all(uri.startswith("/v2/private.test/") for _, uri, _ in registry.requests)
    response = harness.request(
        "GET", "/v2/acme/private/manifests/1?ns=private.test", headers=ACCEPT
    )
    assert harness.error(response) == (403, "DENIED")
    # containerd names the registry in every request: through the Host that routes to it,
    # that name reaches it.
    registry.requests.clear()
    via_containerd = harness.request(
        "GET",
        "http://private.example.com/v2/acme/private/manifests/1?ns=private.test",
        headers=ACCEPT,
    )
    assert via_containerd.code == 200
    assert [uri for _, uri, _ in registry.requests] == ["/v2/acme/private/manifests/1"]


def test_well_known_registries_can_be_switched_off(registry: FakeRegistry) -> None:
    harness = Harness(registry, {"well_known_registries": False})
    response = harness.request("GET", "/v2/redis/manifests/1?ns=ghcr.io", headers=ACCEPT)
    assert harness.error(response) == (403, "DENIED")
    # docker.io stays: the default route names it.
    assert harness.request("GET", "/v2/redis/manifests/1", headers=ACCEPT).code == 200


def test_no_password_token_or_authorization_reaches_the_log(
    registry: FakeRegistry, toml: dict[str, Any], log_events: list[dict[str, object]]
) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    alice = token(harness, "repository:acme/private:pull", basic("alice", "wonderland"))
    pull(harness, "acme/private", alice)
    pull(harness, "acme/private", "forged." + alice[7:])
    pull(harness, "acme/private", headers=basic("alice", "not-her-password"))
    harness.request("GET", "/v2/auth?scope=repository:x:pull", headers=basic("bob", "s3cr3t!"))
    form = b"grant_type=password&username=alice&password=oauth-secret&scope=x"
    harness.request("POST", "/v2/auth", data=form)
    logged = repr(log_events)
    for secret in ("wonderland", "not-her-password", "s3cr3t!", "oauth-secret", alice[20:60]):
        assert secret not in logged
    assert "Basic " not in logged and "Bearer " not in logged


def test_the_realm_carries_ns_for_containerd(registry: FakeRegistry, toml: dict[str, Any]) -> None:
    """containerd asks the realm without the ?ns= of its registry requests."""
    harness = Harness(registry, toml, token_key=KEY)
    response = harness.request("GET", "/v2/acme/private/manifests/1?ns=docker.io", headers=ACCEPT)
    challenge = response.headers.getRawHeaders("www-authenticate")[0]
    assert challenge.startswith('Bearer realm="http://mirror.test/v2/auth?ns=docker.io"')


def test_an_address_that_keeps_guessing_passwords_must_wait(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    harness = Harness(registry, toml, token_key=KEY)
    answers = [
        harness.request("GET", "/v2/", headers=basic("alice", f"guess {n}")).code
        for n in range(22)
    ]
    assert answers[:20] == [401] * 20 and answers[20:] == [429, 429]
    harness.clock.advance(2)
    assert harness.request("GET", "/v2/", headers=basic("alice", "wonderland")).code == 200


def test_a_mirror_users_wrong_password_is_never_passed_upstream(
    registry: FakeRegistry, toml: dict[str, Any]
) -> None:
    toml["registries"]["pt.test"] = {"url": "http://upstream.test", "credentials": "passthrough"}
    harness = Harness(registry, toml, token_key=KEY)
    response = harness.request("GET", "/v2/", headers=basic("alice", "typo"))
    assert harness.error(response) == (401, "UNAUTHORIZED")
    response = harness.request(
        "GET", "/v2/pt.test/acme/private/manifests/1", headers={**ACCEPT, **basic("alice", "typo")}
    )
    assert harness.error(response) == (401, "UNAUTHORIZED")
    assert all("authorization" not in h for _, _, h in registry.requests)
    # An account that is no mirror user's is one to pass on, even with anonymous = false.
    toml["auth"]["anonymous"] = False
    harness = Harness(registry, toml, token_key=KEY)
    response = harness.request(
        "GET",
        "/v2/auth?service=dockermirror&scope=repository:pt.test/acme/private:pull",
        headers=basic("carol", "her upstream password"),
    )
    assert response.code == 200


def test_a_proxy_on_a_dual_stack_socket_is_known_by_its_ipv4_address() -> None:
    """A dual-stack listener sees ::ffff:127.0.0.1; trusted_proxies names 127.0.0.1."""
    request = DummyRequest([b""])
    request.client = IPv6Address("TCP", "::ffff:127.0.0.1", 40000)
    request.isSecure = lambda: False  # type: ignore[attr-defined]  # DummyRequest lacks it
    request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"192.0.2.7"])
    client = client_of(request, (ipaddress.ip_network("127.0.0.1/32"),))  # type: ignore[arg-type]
    assert client.address == "192.0.2.7"
