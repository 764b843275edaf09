"""The pull path in memory: errors, headers, streaming failures, upstream auth and redirects."""

from __future__ import annotations

import hashlib
import json

import pytest
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.reference import digest_of
from tests.fakes import (
    FakeRegistry,
    Handler,
    Harness,
    blob_handler,
    dying_handler,
    json_error,
    result_of,
)

MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
).encode()
MANIFEST_DIGEST = digest_of(MANIFEST)
OCI = b"application/vnd.oci.image.manifest.v1+json"
BLOB = bytes(range(256)) * 4096
BLOB_DIGEST = digest_of(BLOB)


def manifest_handler(body: bytes = MANIFEST, digest: str | None = None) -> Handler:
    def handle(request: Request) -> bytes:
        request.setHeader(b"content-type", OCI)
        request.setHeader(b"docker-content-digest", (digest or digest_of(body)).encode())
        return body

    return handle


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


def test_manifest_by_tag_passes_bytes_and_headers(
    registry: FakeRegistry, observe_errors: list[object]
) -> None:
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    harness = Harness(registry)
    response = harness.request("GET", "/v2/redis/manifests/7", headers={"Accept": ["a/b", "c/d"]})
    assert response.code == 200
    assert harness.body(response) == MANIFEST
    assert response.headers.getRawHeaders("docker-content-digest") == [MANIFEST_DIGEST]
    assert response.headers.getRawHeaders("content-type") == [OCI.decode()]
    assert response.headers.getRawHeaders("docker-distribution-api-version") == ["registry/2.0"]
    method, uri, headers = registry.requests[-1]
    assert (method, uri) == ("GET", "/v2/library/redis/manifests/7")
    assert headers["accept"] == ["a/b", "c/d"]


def test_manifest_head_is_an_upstream_head(registry: FakeRegistry) -> None:
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    harness = Harness(registry)
    response = harness.request("HEAD", "/v2/library/redis/manifests/7")
    assert response.code == 200
    assert response.headers.getRawHeaders("docker-content-digest") == [MANIFEST_DIGEST]
    assert response.headers.getRawHeaders("content-length") == [str(len(MANIFEST))]
    assert registry.paths("HEAD") == ["/v2/library/redis/manifests/7"]
    assert registry.paths("GET") == []


def test_manifest_that_does_not_match_its_digest_is_refused(registry: FakeRegistry) -> None:
    registry.handlers[f"/v2/library/redis/manifests/{MANIFEST_DIGEST}"] = manifest_handler(
        b'{"tampered": 1}'
    )
    harness = Harness(registry)
    response = harness.request("GET", f"/v2/redis/manifests/{MANIFEST_DIGEST}")
    assert harness.error(response) == (502, "MANIFEST_INVALID")


def test_manifest_whose_claimed_digest_lies_is_refused(registry: FakeRegistry) -> None:
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler(
        digest="sha256:" + "1" * 64
    )
    harness = Harness(registry)
    assert harness.error(harness.request("GET", "/v2/redis/manifests/7")) == (
        502,
        "MANIFEST_INVALID",
    )


def test_oversized_manifest_is_refused(registry: FakeRegistry) -> None:
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler(b"x" * (5 * 1024 * 1024))
    harness = Harness(registry)
    assert harness.error(harness.request("GET", "/v2/redis/manifests/7")) == (
        502,
        "MANIFEST_INVALID",
    )


def test_blob_streams_whole_and_verified(
    registry: FakeRegistry, observe_errors: list[object]
) -> None:
    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = blob_handler(BLOB)
    harness = Harness(registry)
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}")
    assert response.code == 200
    assert harness.body(response) == BLOB
    assert response.length == len(BLOB)  # a Twisted client moves Content-Length here


def assert_pull_fails(harness: Harness, path: str) -> None:
    """The client must see a failed transfer: no response at all, or a body cut short."""
    with pytest.raises((ResponseFailed, ResponseNeverReceived)):
        harness.body(harness.request("GET", path))


def test_blob_with_wrong_bytes_never_completes(registry: FakeRegistry) -> None:
    corrupt = BLOB[:-1] + b"\x00"
    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = blob_handler(corrupt)
    assert_pull_fails(Harness(registry), f"/v2/redis/blobs/{BLOB_DIGEST}")


def test_upstream_dying_mid_blob_aborts_the_client(registry: FakeRegistry) -> None:
    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = dying_handler(BLOB[:1000])
    assert_pull_fails(Harness(registry), f"/v2/redis/blobs/{BLOB_DIGEST}")


def test_upstream_dying_mid_list_is_a_502(registry: FakeRegistry) -> None:
    """A tag list is read whole before the client gets an answer: a cut one is an OCI error."""
    registry.handlers["/v2/library/redis/tags/list"] = dying_handler(b'{"name":"library/redis",')
    harness = Harness(registry)
    assert harness.error(harness.request("GET", "/v2/redis/tags/list")) == (502, "UNAVAILABLE")


def test_blob_range_is_forwarded_and_not_digest_checked(registry: FakeRegistry) -> None:
    def partial(request: Request) -> bytes:
        assert request.getHeader(b"range") == b"bytes=0-9"
        request.setResponseCode(206)
        request.setHeader(b"content-range", f"bytes 0-9/{len(BLOB)}".encode())
        return BLOB[:10]

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = partial
    harness = Harness(registry)
    response = harness.request(
        "GET", f"/v2/redis/blobs/{BLOB_DIGEST}", headers={"Range": "bytes=0-9"}
    )
    assert response.code == 206
    assert response.headers.getRawHeaders("content-range") == [f"bytes 0-9/{len(BLOB)}"]
    assert harness.body(response) == BLOB[:10]


@pytest.mark.parametrize(
    ("status", "upstream_code", "expected"),
    [
        (404, "MANIFEST_UNKNOWN", (404, "MANIFEST_UNKNOWN")),
        (404, "NAME_UNKNOWN", (404, "NAME_UNKNOWN")),
        (401, "UNAUTHORIZED", (403, "DENIED")),
        (403, "DENIED", (403, "DENIED")),
        (500, "UNKNOWN", (502, "UNAVAILABLE")),
        (503, "UNAVAILABLE", (502, "UNAVAILABLE")),
    ],
)
def test_upstream_errors_become_oci_errors(
    registry: FakeRegistry, status: int, upstream_code: str, expected: tuple[int, str]
) -> None:
    registry.handlers["/v2/library/redis/manifests/7"] = lambda r: json_error(
        r, status, upstream_code
    )
    harness = Harness(registry)
    assert harness.error(harness.request("GET", "/v2/redis/manifests/7")) == expected


def test_rate_limited_upstream_gives_429_with_retry_after(registry: FakeRegistry) -> None:
    def limited(request: Request) -> bytes:
        request.setHeader(b"retry-after", b"42")
        return json_error(request, 429, "TOOMANYREQUESTS")

    registry.handlers["/v2/library/redis/manifests/7"] = limited
    harness = Harness(registry)
    response = harness.request("GET", "/v2/redis/manifests/7")
    assert harness.error(response) == (429, "TOOMANYREQUESTS")
    assert response.headers.getRawHeaders("retry-after") == ["42"]


def test_upstream_that_never_answers_gives_504(registry: FakeRegistry) -> None:
    registry.handlers["/v2/library/redis/manifests/7"] = lambda request: 1  # NOT_DONE_YET, forever
    harness = Harness(registry)
    d = harness.client.get("http://mirror.test/v2/redis/manifests/7")
    harness.settle()
    harness.clock.advance(harness.config.upstream.response_timeout + 1)
    harness.settle()
    response = d.result
    assert harness.error(response) == (504, "UNAVAILABLE")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/Redis/manifests/latest", (400, "NAME_INVALID")),
        ("/v2/redis/manifests/-bad", (400, "MANIFEST_INVALID")),
        ("/v2/redis/manifests/sha256:abc", (400, "DIGEST_INVALID")),
        ("/v2/redis/blobs/md5:" + "a" * 32, (400, "DIGEST_INVALID")),
        ("/v2/redis/blobs/latest", (400, "DIGEST_INVALID")),
        ("/v2/_catalog", (405, "UNSUPPORTED")),
        ("/v2/redis/nonsense", (400, "NAME_INVALID")),
        ("/nothing-here", (404, "NAME_UNKNOWN")),
    ],
)
def test_bad_requests_get_oci_errors(
    registry: FakeRegistry, path: str, expected: tuple[int, str]
) -> None:
    harness = Harness(registry)
    assert harness.error(harness.request("GET", path)) == expected
    assert registry.requests == []


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_are_unsupported(registry: FakeRegistry, method: str) -> None:
    harness = Harness(registry)
    for path in ("/v2/redis/manifests/latest", "/v2/redis/blobs/uploads/", "/v2/"):
        response = harness.request(method, path)
        assert harness.error(response) == (405, "UNSUPPORTED")
        assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]
    assert registry.requests == []


def test_host_without_route_is_named_in_the_error(registry: FakeRegistry) -> None:
    harness = Harness(registry, {"routes": {"docker.example.com": "docker.io"}})
    response = harness.request("GET", "http://other.example.com/v2/redis/manifests/latest")
    body = json.loads(harness.body(response))
    assert response.code == 404
    assert body["errors"][0]["code"] == "NAME_UNKNOWN"
    assert body["errors"][0]["detail"] == {
        "host": "other.example.com",
        "hosts": ["docker.example.com"],
    }


def test_upstream_token_is_fetched_once_and_cached(observe_errors: list[object]) -> None:
    registry = FakeRegistry(token_auth=True)
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    harness = Harness(registry)
    for _ in range(3):
        assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    assert registry.issued == 1
    token_request = [uri for uri in registry.paths() if uri.startswith("/token")]
    assert token_request == ["/token?service=fake&scope=repository%3Alibrary%2Fredis%3Apull"]
    # One 401 to learn the challenge, then every request carries the cached token.
    assert len(registry.paths()) == 1 + 1 + 3


def test_concurrent_requests_share_one_token_fetch() -> None:
    registry = FakeRegistry(token_auth=True)
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    registry.held_tokens = []
    harness = Harness(registry)
    pending = [harness.client.get("http://mirror.test/v2/redis/manifests/7") for _ in range(3)]
    harness.settle()
    assert len(registry.held_tokens) == 1
    registry.release_tokens()
    harness.settle()
    assert [result_of(d).code for d in pending] == [200, 200, 200]
    assert registry.issued == 1


def test_expired_upstream_token_is_renewed() -> None:
    registry = FakeRegistry(token_auth=True, token_lifetime=60)
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    harness = Harness(registry)
    assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    harness.clock.advance(61)
    assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    assert registry.issued == 2


def test_revoked_upstream_token_is_retried_once_with_a_fresh_one() -> None:
    registry = FakeRegistry(token_auth=True)
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    harness = Harness(registry)
    assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    registry.valid_tokens.clear()
    assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    assert registry.issued == 2


def test_configured_credentials_go_to_the_token_endpoint() -> None:
    registry = FakeRegistry(token_auth=True)
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test", "username": "u", "password": "p"}
        }
    }
    harness = Harness(registry, toml)
    assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    token_headers = [h for _, uri, h in registry.requests if uri.startswith("/token")]
    assert token_headers[0]["authorization"] == ["Basic dTpw"]
    registry_headers = [h for _, uri, h in registry.requests if uri.startswith("/v2/")]
    assert all("Basic" not in h.get("authorization", [""])[0] for h in registry_headers)


def test_redirect_is_followed_without_authorization() -> None:
    registry = FakeRegistry(token_auth=True)

    def redirect(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", b"http://cdn.test/data/blob?sig=a%2Bb")
        return b""

    def cdn(request: Request) -> bytes:
        assert request.getHeader(b"authorization") is None
        assert request.uri == b"/data/blob?sig=a%2Bb"
        return BLOB

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = redirect
    registry.handlers["/data/blob"] = cdn
    harness = Harness(registry)
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}")
    assert harness.body(response) == BLOB
    assert registry.paths()[-1] == "/data/blob?sig=a%2Bb"


def test_redirect_loops_and_odd_schemes_end_in_502(registry: FakeRegistry) -> None:
    def loop(request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", request.uri)
        return b""

    def ftp(request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", b"ftp://example.com/blob")
        return b""

    registry.handlers[f"/v2/library/loop/blobs/{BLOB_DIGEST}"] = loop
    registry.handlers[f"/v2/library/ftp/blobs/{BLOB_DIGEST}"] = ftp
    harness = Harness(registry)
    assert harness.error(harness.request("GET", f"/v2/loop/blobs/{BLOB_DIGEST}")) == (
        502,
        "UNAVAILABLE",
    )
    assert len(registry.paths()) == 6  # the first request and five hops
    assert harness.error(harness.request("GET", f"/v2/ftp/blobs/{BLOB_DIGEST}")) == (
        502,
        "UNAVAILABLE",
    )


def test_tags_list_link_is_rewritten_for_the_client_name(registry: FakeRegistry) -> None:
    def tags(request: Request) -> bytes:
        assert request.args == {b"n": [b"2"], b"last": [b"a"]}
        request.setHeader(b"link", b'</v2/library/redis/tags/list?last=c&n=2>; rel="next"')
        return b'{"name":"library/redis","tags":["b","c"]}'

    registry.handlers["/v2/library/redis/tags/list"] = tags
    harness = Harness(registry)
    response = harness.request("GET", "/v2/docker.io/redis/tags/list?n=2&last=a&ns=docker.io")
    assert response.code == 200
    assert response.headers.getRawHeaders("link") == [
        '</v2/docker.io/redis/tags/list?last=c&n=2&ns=docker.io>; rel="next"'
    ]
    assert json.loads(harness.body(response))["tags"] == ["b", "c"]


def test_referrers_pass_through(registry: FakeRegistry) -> None:
    index = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    )

    def referrers(request: Request) -> bytes:
        assert request.args == {b"artifactType": [b"application/x-sbom"]}
        request.setHeader(b"content-type", b"application/vnd.oci.image.index.v1+json")
        request.setHeader(b"oci-filters-applied", b"artifactType")
        return index

    registry.handlers[f"/v2/library/redis/referrers/{MANIFEST_DIGEST}"] = referrers
    harness = Harness(registry)
    response = harness.request(
        "GET", f"/v2/redis/referrers/{MANIFEST_DIGEST}?artifactType=application/x-sbom"
    )
    assert harness.body(response) == index
    assert response.headers.getRawHeaders("oci-filters-applied") == ["artifactType"]


def test_ns_parameter_and_prefix_select_registries(registry: FakeRegistry) -> None:
    registry.handlers["/v2/owner/app/manifests/1"] = manifest_handler()
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test"},
            "ghcr.io": {"url": "http://upstream.test"},
        }
    }
    harness = Harness(registry, toml)
    assert harness.request("GET", "/v2/owner/app/manifests/1?ns=ghcr.io").code == 200
    assert harness.request("GET", "/v2/ghcr.io/owner/app/manifests/1").code == 200
    response = harness.request("GET", "/v2/owner/app/manifests/1?ns=10.0.0.1")
    assert harness.error(response) == (403, "DENIED")


def test_blob_sha512_digest_is_verified(registry: FakeRegistry) -> None:
    digest = "sha512:" + hashlib.sha512(BLOB).hexdigest()
    registry.handlers[f"/v2/library/redis/blobs/{digest}"] = blob_handler(BLOB)
    harness = Harness(registry)
    assert harness.body(harness.request("GET", f"/v2/redis/blobs/{digest}")) == BLOB


def test_stalled_body_is_given_up_after_the_idle_timeout(registry: FakeRegistry) -> None:
    """An upstream that stops sending mid-body must not hold the client forever."""

    def stall(request: Request) -> int:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        request.write(BLOB[:1000])
        return NOT_DONE_YET  # and nothing more, ever

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = stall
    harness = Harness(registry)
    d = harness.client.get(f"http://mirror.test/v2/redis/blobs/{BLOB_DIGEST}")
    harness.settle()
    harness.clock.advance(harness.config.upstream.idle_timeout - 1)
    harness.settle()
    # The body is still in flight, with its no-progress timer armed.
    assert [c.getTime() for c in harness.clock.getDelayedCalls()] == [
        harness.config.upstream.idle_timeout
    ]
    harness.clock.advance(2)
    harness.settle()
    with pytest.raises((ResponseFailed, ResponseNeverReceived)):
        harness.body(result_of(d))


def test_refused_credentials_are_reported_once_a_minute(
    log_events: list[dict[str, object]],
) -> None:
    registry = FakeRegistry(token_auth=True)
    registry.handlers["/v2/library/redis/manifests/7"] = manifest_handler()
    registry.token_handler = lambda request: json_error(request, 401, "UNAUTHORIZED")
    toml = {
        "registries": {
            "docker.io": {"url": "http://upstream.test", "username": "u", "password": "secret"}
        }
    }
    harness = Harness(registry, toml)

    def reports() -> list[dict[str, object]]:
        return [e for e in log_events if "refused the configured" in str(e.get("log_format"))]

    for _ in range(3):
        assert harness.error(harness.request("GET", "/v2/redis/manifests/7")) == (403, "DENIED")
    assert len(reports()) == 1
    assert reports()[0]["user"] == "u" and "secret" not in repr(log_events)
    harness.clock.advance(61)
    harness.request("GET", "/v2/redis/manifests/7")
    assert len(reports()) == 2
