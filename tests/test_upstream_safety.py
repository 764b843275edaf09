"""What an upstream may make the mirror do: credentials stay home, realms and redirects checked.

In memory: the fake registry answers every host, so "another origin" is a URL
with another scheme, host or port, and what it received is in its request log.
"""

from __future__ import annotations

import gzip
import ipaddress
import json

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHostResolution, IResolutionReceiver
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import Request as ClientRequest
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from dockermirror.reference import digest_of
from dockermirror.upstream.addresses import GuardedResolver, is_public
from dockermirror.upstream.heads import MAX_HEAD_LINES, BoundedClientProtocol, HeadTooLarge
from tests.fakes import FakeRegistry, Handler, Harness, json_error

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/x-m"}).encode()
CLIENT = {"Accept": ["application/x-m"]}
BLOB = bytes(range(256)) * 64
BLOB_DIGEST = digest_of(BLOB)
CREDENTIALS = {"username": "u", "password": "secret"}


def manifest(request: Request) -> bytes:
    request.setHeader(b"content-type", b"application/x-m")
    return MANIFEST


def challenged(realm: str, then: Handler | None = manifest) -> Handler:
    """A path that wants a token from ``realm``, then answers as ``then`` (None: never)."""

    def handle(request: Request) -> bytes | int:
        if then is None or request.getHeader(b"authorization") is None:
            value = f'Bearer realm="{realm}",service="fake"'
            request.setHeader(b"www-authenticate", value.encode())
            return json_error(request, 401, "UNAUTHORIZED")
        return then(request)

    return handle


def token(request: Request) -> bytes:
    return json.dumps({"token": "t", "expires_in": 300}).encode()


def received(registry: FakeRegistry, path: str) -> list[dict[str, list[str]]]:
    return [headers for _, uri, headers in registry.requests if uri.split("?")[0] == path]


@pytest.mark.parametrize(
    ("realm", "location", "keeps_credentials"),
    [
        ("http://upstream.test/token", "http://elsewhere.test/token2", False),
        ("http://upstream.test/token", "http://upstream.test:8080/token2", False),
        ("https://upstream.test/token", "http://upstream.test/token2", False),
        ("https://upstream.test/token", "https://upstream.test:443/token2", True),
        ("http://upstream.test/token", "/token2", True),
    ],
)
def test_credentials_go_only_to_the_origin_they_are_for(
    realm: str, location: str, keeps_credentials: bool
) -> None:
    registry = FakeRegistry()
    registry.handlers["/v2/library/redis/manifests/7"] = challenged(realm)

    def moved(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", location.encode())
        return b""

    registry.token_handler = moved
    registry.handlers["/token2"] = token
    toml = {"registries": {"docker.io": {"url": "http://upstream.test", **CREDENTIALS}}}
    harness = Harness(registry, toml)
    assert harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT).code == 200
    assert received(registry, "/token")[0]["authorization"] == ["Basic dTpzZWNyZXQ="]
    sent = received(registry, "/token2")[0].get("authorization")
    assert sent == (["Basic dTpzZWNyZXQ="] if keeps_credentials else None)


def test_the_token_request_query_is_the_mirrors_own() -> None:
    registry = FakeRegistry()
    realm = "http://upstream.test/token?scope=repository:other/secret:push&account=x"
    registry.handlers["/v2/library/redis/manifests/7"] = challenged(realm)
    registry.token_handler = token
    harness = Harness(registry)
    assert harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT).code == 200
    asked = [uri for _, uri, _ in registry.requests if uri.startswith("/token")]
    assert asked == ["/token?service=fake&scope=repository%3Alibrary%2Fredis%3Apull"]


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "gopher://x/", "no realm at all"])
def test_an_unusable_challenge_fails_that_request_only(realm: str) -> None:
    registry = FakeRegistry()
    registry.handlers["/v2/library/bad/manifests/7"] = challenged(realm, then=None)
    registry.handlers["/v2/library/good/manifests/7"] = challenged("http://upstream.test/token")
    registry.token_handler = token
    harness = Harness(registry)
    bad = harness.request("GET", "/v2/bad/manifests/7", headers=CLIENT)
    assert harness.error(bad) == (502, "UNAVAILABLE")
    assert harness.request("GET", "/v2/good/manifests/7", headers=CLIENT).code == 200
    # ...and a bad challenge after a good one leaves the good one in use.
    assert harness.error(harness.request("GET", "/v2/bad/manifests/7", headers=CLIENT))[0] == 502
    assert harness.request("GET", "/v2/good/manifests/7", headers=CLIENT).code == 200


def test_a_head_answered_with_an_unusable_401_is_an_oci_error(
    observe_errors: list[object],
) -> None:
    registry = FakeRegistry()

    def refuse(request: Request) -> bytes:
        request.setHeader(b"www-authenticate", b"Negotiate")
        return json_error(request, 401, "UNAUTHORIZED")

    registry.handlers["/v2/library/redis/manifests/7"] = refuse
    harness = Harness(registry)
    response = harness.request("HEAD", "/v2/redis/manifests/7", headers=CLIENT)
    assert response.code == 403
    assert harness.error(harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT)) == (
        403,
        "DENIED",
    )


@pytest.mark.parametrize(
    "path", ["/v2/library/redis/manifests/7", f"/v2/library/redis/blobs/{BLOB_DIGEST}"]
)
def test_bodies_are_asked_for_unencoded_and_an_encoded_one_is_refused(path: str) -> None:
    registry = FakeRegistry()
    bomb = gzip.compress(bytes(4 * 1024 * 1024))

    def encoded(request: Request) -> bytes:
        request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-type", b"application/x-m")
        return bomb

    registry.handlers[path] = encoded
    harness = Harness(registry)
    response = harness.request("GET", path.replace("/library", ""), headers=CLIENT)
    assert harness.error(response) == (502, "UNAVAILABLE")
    assert received(registry, path)[0]["accept-encoding"] == ["identity"]


@pytest.mark.parametrize(
    ("asked", "answered"),
    [
        (None, "bytes 0-99/16384"),
        ("bytes=100-", "bytes 0-16383/16384"),
        ("bytes=0-9", "bytes 0-99/16384"),
    ],
)
def test_a_partial_answer_that_was_not_asked_for_is_a_502(
    asked: str | None, answered: str, observe_errors: list[object]
) -> None:
    registry = FakeRegistry()

    def partial(request: Request) -> bytes:
        request.setResponseCode(206)
        request.setHeader(b"content-range", answered.encode())
        first, last = (int(n) for n in answered.split()[1].split("/")[0].split("-"))
        return BLOB[first : last + 1]

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = partial
    harness = Harness(registry)
    headers = {"Range": [asked]} if asked else {}
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}", headers=headers)
    assert harness.error(response) == (502, "UNAVAILABLE")


def test_the_asked_partial_answer_is_served() -> None:
    registry = FakeRegistry()

    def partial(request: Request) -> bytes:
        request.setResponseCode(206)
        request.setHeader(b"content-range", b"bytes 100-16383/16384")
        return BLOB[100:]

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = partial
    harness = Harness(registry)
    headers = {"Range": ["bytes=100-"]}
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}", headers=headers)
    assert response.code == 206
    assert harness.body(response) == BLOB[100:]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("not an address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


@implementer(IResolutionReceiver)
class Receiver:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.complete = False

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        assert isinstance(address, (IPv4Address, IPv6Address))
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.complete = True


class FixedResolver:
    """Resolves every name to the addresses given for it."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def resolveHostName(
        self, receiver: IResolutionReceiver, hostName: str, *args: object
    ) -> IHostResolution:
        receiver.resolutionBegan(None)  # type: ignore[arg-type]
        for host in self.table[hostName]:
            kind = IPv6Address if ":" in host else IPv4Address
            receiver.addressResolved(kind("TCP", host, 443))
        receiver.resolutionComplete()
        return None  # type: ignore[return-value]


def resolve(resolver: GuardedResolver, name: str) -> list[str]:
    receiver = Receiver()
    resolver.resolveHostName(receiver, name, 443)
    assert receiver.complete
    return receiver.addresses


def test_the_resolver_keeps_other_hosts_off_private_addresses_but_the_registrys_own() -> None:
    table = {
        "registry.lan": ["10.0.0.5", "fd00::5"],
        "token.lan": ["10.0.0.5"],
        "metadata.lan": ["169.254.169.254", "10.0.0.6"],
        "cdn.example": ["93.184.216.34", "127.0.0.1"],
    }
    guarded = GuardedResolver(FixedResolver(table), "Registry.LAN")  # type: ignore[arg-type]
    # Before the registry itself was resolved, its addresses are not known to be its own.
    assert resolve(guarded, "token.lan") == []
    assert guarded.refused("token.lan") == "10.0.0.5"
    assert resolve(guarded, "registry.lan") == ["10.0.0.5", "fd00::5"]
    assert resolve(guarded, "token.lan") == ["10.0.0.5"]
    assert guarded.refused("token.lan") is None
    assert resolve(guarded, "metadata.lan") == []
    assert resolve(guarded, "cdn.example") == ["93.184.216.34"]


def test_networks_the_operator_trusts_are_reachable() -> None:
    table = {"registry.lan": ["10.0.0.5"], "s3.lan": ["10.0.1.7"], "other.lan": ["10.0.2.1"]}
    trusted = [ipaddress.ip_network("10.0.1.0/24")]
    guarded = GuardedResolver(FixedResolver(table), "registry.lan", trusted)  # type: ignore[arg-type]
    assert resolve(guarded, "s3.lan") == ["10.0.1.7"]
    assert resolve(guarded, "other.lan") == []


def send(protocol: BoundedClientProtocol, head: bytes) -> Failure | IResponse | None:
    """What the request came to once ``head`` arrived: None while it is still waiting."""
    transport = StringTransport()
    protocol.makeConnection(transport)
    d: Deferred[IResponse] = protocol.request(
        ClientRequest(b"GET", b"/v2/", Headers({b"host": [b"upstream.test"]}), None)
    )
    results: list[Failure | IResponse] = []
    d.addBoth(results.append)
    protocol.dataReceived(head)
    return results[0] if results else None


HEADERS = b"".join(b"x-h%d: v\r\n" % n for n in range(MAX_HEAD_LINES))


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + HEADERS + b"x-one-more: v\r\n",
        b"HTTP/1.1 200 OK\r\nx-folded: v\r\n" + b" continued\r\n" * MAX_HEAD_LINES,
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-b%d: %s\r\n" % (n, b"v" * 8000) for n in range(9)),
    ],
    ids=["lines", "continuations", "bytes"],
)
def test_a_response_head_past_the_bounds_fails_the_request(head: bytes) -> None:
    result = send(BoundedClientProtocol(), head)
    assert isinstance(result, Failure)
    assert result.check(ResponseFailed, ResponseNeverReceived)
    assert any(reason.check(HeadTooLarge) for reason in getattr(result.value, "reasons", []))


def test_a_head_within_the_bounds_is_a_response() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + HEADERS[: -len(b"x-h99: v\r\n")] + b"content-length: 0\r\n\r\n"
    result = send(BoundedClientProtocol(), head)
    assert result is not None and not isinstance(result, Failure)
    assert result.code == 200


@pytest.mark.parametrize("location", ["http://[::1]:8080/data/blob", "/data/blob"])
def test_redirects_to_ipv6_hosts_are_followed(location: str) -> None:
    registry = FakeRegistry()

    def moved(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", location.encode())
        return b""

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = moved
    registry.handlers["/data/blob"] = lambda request: BLOB
    harness = Harness(registry)
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}")
    assert response.code == 200
    assert harness.body(response) == BLOB


def test_a_redirect_targets_challenge_gets_no_credentials(
    observe_errors: list[object],
) -> None:
    registry = FakeRegistry()

    def moved(request: Request) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", b"http://cdn.test/data/blob")
        return b""

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = challenged(
        "http://upstream.test/token", then=moved
    )
    registry.handlers["/data/blob"] = challenged("http://cdn.test/steal", then=None)
    registry.handlers["/steal"] = token
    registry.token_handler = token
    registry.handlers["/v2/library/redis/manifests/7"] = challenged("http://upstream.test/token")
    toml = {"registries": {"docker.io": {"url": "http://upstream.test", **CREDENTIALS}}}
    harness = Harness(registry, toml)
    # The registry's own challenge first, so that the blob request goes with its token.
    assert harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT).code == 200
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}")
    assert harness.error(response) == (403, "DENIED")
    assert received(registry, "/steal") == []
    # ...nor is the redirect target's challenge remembered for the next request.
    assert harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT).code == 200
    assert received(registry, "/steal") == []


def test_credentials_never_go_to_a_plain_http_realm_of_an_https_registry() -> None:
    registry = FakeRegistry()
    registry.handlers["/v2/library/redis/manifests/7"] = challenged("http://upstream.test/token")
    registry.token_handler = token
    toml = {"registries": {"docker.io": {"url": "https://upstream.test", **CREDENTIALS}}}
    harness = Harness(registry, toml)
    response = harness.request("GET", "/v2/redis/manifests/7", headers=CLIENT)
    assert harness.error(response) == (502, "UNAVAILABLE")
    assert received(registry, "/token") == []


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000, "-1", "1e3"])
def test_an_odd_content_length_on_a_head_is_no_500(
    length: str, observe_errors: list[object]
) -> None:
    registry = FakeRegistry()

    def head(request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/x-m")
        request.setHeader(b"docker-content-digest", BLOB_DIGEST.encode())
        request.responseHeaders.setRawHeaders(b"content-length", [length.encode()])
        return b""

    registry.handlers["/v2/library/redis/manifests/7"] = head
    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = head
    harness = Harness(registry)
    for path in ("/v2/redis/manifests/7", f"/v2/redis/blobs/{BLOB_DIGEST}"):
        response = harness.request("HEAD", path, headers=CLIENT)
        assert response.code != 500


def test_a_content_range_past_int_limits_is_a_502(observe_errors: list[object]) -> None:
    registry = FakeRegistry()

    def partial(request: Request) -> bytes:
        request.setResponseCode(206)
        request.setHeader(b"content-range", b"bytes 0-9/" + b"9" * 5000)
        return BLOB[:10]

    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = partial
    harness = Harness(registry)
    headers = {"Range": ["bytes=0-9"]}
    response = harness.request("GET", f"/v2/redis/blobs/{BLOB_DIGEST}", headers=headers)
    assert harness.error(response) == (502, "UNAVAILABLE")


def test_a_head_with_an_invalid_digest_is_a_502(observe_errors: list[object]) -> None:
    registry = FakeRegistry()

    def head(request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/x-m")
        request.setHeader(b"docker-content-digest", b"../../../etc/passwd")
        return MANIFEST

    registry.handlers["/v2/library/redis/manifests/7"] = head
    harness = Harness(registry)
    response = harness.request("HEAD", "/v2/redis/manifests/7", headers=CLIENT)
    assert response.code == 502


def test_a_tag_list_past_the_bound_is_a_502(observe_errors: list[object]) -> None:
    registry = FakeRegistry()
    registry.handlers["/v2/library/redis/tags/list"] = lambda request: json.dumps(
        {"name": "library/redis", "tags": ["0"] * (1024 * 1024)}
    ).encode()
    harness = Harness(registry)
    response = harness.request("GET", "/v2/redis/tags/list")
    assert harness.error(response)[0] == 502
