"""Schema1 manifests: digests as registries compute them, and clients that send no Accept.

A signed schema1 manifest is a JWS in libtrust's "pretty" form; its digest is
that of the payload rebuilt from the protected header (``formatLength``,
``formatTail``), never of the bytes served, which stay the upstream's.  The
manifests here are signed for real (ES256, as distribution signs them), and the
interop test checks that this signer writes byte for byte what distribution does.

A client without Accept takes schema1 only, as distribution treats it: on a tag
stored as anything else it is passed through and gets the upstream's answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.server import Request

from dockermirror.reference import digest_of
from dockermirror.registry.mediatypes import (
    DOCKER_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA2,
    OCI_INDEX,
    OCI_MANIFEST,
)
from dockermirror.registry.schema1 import manifest_digest, signed_payload
from tests.fakes import FakeRegistry, Harness, json_error
from tests.support.clients import fetch
from tests.support.peers import Mirror, Upstream
from tests.support.probes import indexed
from tests.support.processes import wait_for

# Signing, as libtrust does it


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def payload_format(payload: bytes) -> tuple[int, bytes]:
    """libtrust's NewJSONSignature: (formatLength, formatTail), the tail being the closing brace
    and the whitespace around it."""
    close = len(payload.rstrip()) - 1
    assert payload[close : close + 1] == b"}"
    length = len(payload[:close].rstrip())
    return length, payload[length:]


def json_indent(payload: bytes) -> str:
    """libtrust's detectJSONIndent."""
    if payload.startswith(b"{\n"):
        quote = payload.find(b'"', 1)
        if quote > 1:
            return payload[2:quote].decode()
    return ""


class Signer:
    """An EC P-256 key that signs manifests as distribution's schema1 builder does."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key()
        numbers = public.public_numbers()
        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # libtrust's key ID: base32 of the first 240 bits of the key's sha256, in groups of 4.
        kid = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode()
        self.jwk = {
            "crv": "P-256",
            "kid": ":".join(kid[i : i + 4] for i in range(0, len(kid), 4)),
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }

    def signature(
        self, payload: bytes, time: str = "2024-05-01T12:00:00Z", **protected: Any
    ) -> dict[str, Any]:
        length, tail = payload_format(payload)
        header = {"formatLength": length, "formatTail": b64url(tail), "time": time, **protected}
        encoded = b64url(json.dumps(header, separators=(",", ":")).encode())
        der = self.key.sign(f"{encoded}.{b64url(payload)}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return {
            "header": {"jwk": self.jwk, "alg": "ES256"},
            "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
            "protected": encoded,
        }


def pretty(payload: bytes, signatures: list[Any]) -> bytes:
    """libtrust's PrettySignature: the signatures spliced in before the payload's closing brace."""
    length, _ = payload_format(payload)
    indent = json_indent(payload)
    if not indent:
        block = json.dumps(signatures, separators=(",", ":"))
        return payload[:length] + f',"signatures":{block}}}'.encode()
    block = json.dumps(signatures, indent=indent).replace("\n", "\n" + indent)
    return payload[:length] + f',\n{indent}"signatures": {block}\n}}'.encode()


def verify(body: bytes) -> str:
    """Check every ES256 signature of a signed manifest; the key ID of the first."""
    payload = signed_payload(body, DOCKER_SCHEMA1_SIGNED)
    assert payload is not None
    signatures = json.loads(body)["signatures"]
    for signature in signatures:
        jwk = signature["header"]["jwk"]
        x, y = (int.from_bytes(b64url_decode(jwk[c]), "big") for c in "xy")
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        raw = b64url_decode(signature["signature"])
        der = encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )
        signed = f"{signature['protected']}.{b64url(payload)}".encode()
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    return str(signatures[0]["header"]["jwk"]["kid"])


SIGNER = Signer()
V1_CONFIG = {"id": "a" * 64, "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}}
PAYLOAD = json.dumps(
    {
        "schemaVersion": 1,
        "name": "library/old",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": "sha256:" + "b" * 64}],
        "history": [{"v1Compatibility": json.dumps(V1_CONFIG, separators=(",", ":"))}],
    },
    indent=3,
).encode()
DIGEST = digest_of(PAYLOAD)
SIGNED = pretty(PAYLOAD, [SIGNER.signature(PAYLOAD)])
LIST = json.dumps(
    {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [{"digest": DIGEST}]}, indent=3
).encode()

TAG = "/v2/library/old/manifests/latest"
OTHER = "/v2/library/old/manifests/other"
SCHEMA1_CLIENT = {"Accept": [f"{DOCKER_SCHEMA1_SIGNED}, {DOCKER_SCHEMA1}"]}


def serve(body: bytes, media_type: str, digest: str | None = None) -> Callable[[Request], bytes]:
    def handle(request: Request) -> bytes:
        request.setHeader(b"content-type", media_type.encode())
        if digest is not None:
            request.setHeader(b"docker-content-digest", digest.encode())
        return body

    return handle


def by_digest(digest: str) -> str:
    return f"/v2/library/old/manifests/{digest}"


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture(params=[False, True], ids=["no-cache", "cache"])
def harness(request: pytest.FixtureRequest, registry: FakeRegistry, tmp_path: Path) -> Harness:
    cache = {"dir": str(tmp_path / "cache"), "tag_ttl": 60} if request.param else {}
    return Harness(registry, {"cache": {"enabled": bool(request.param), **cache}})


def outcome(response: Any) -> str:
    return str(response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0])


def answer(harness: Harness, path: str, headers: Any = None) -> tuple[int, str, str, bytes, str]:
    """(status, Content-Type, Docker-Content-Digest, body, cache outcome) of a GET."""
    response = harness.request("GET", path, headers=headers)
    body = harness.body(response)
    content_type = response.headers.getRawHeaders("content-type", [""])[0]
    digest = response.headers.getRawHeaders("docker-content-digest", [""])[0]
    return response.code, content_type, digest, body, outcome(response)


def refused(harness: Harness, path: str) -> None:
    response = harness.request("GET", path, headers=SCHEMA1_CLIENT)
    assert harness.error(response) == (502, "MANIFEST_INVALID")


# Through the mirror, in memory


def test_signed_schema1_is_served_byte_exact_under_its_payload_digest(
    registry: FakeRegistry, harness: Harness
) -> None:
    registry.handlers[TAG] = serve(SIGNED, DOCKER_SCHEMA1_SIGNED, DIGEST)
    registry.handlers[by_digest(DIGEST)] = serve(SIGNED, DOCKER_SCHEMA1_SIGNED, DIGEST)
    assert digest_of(SIGNED) != DIGEST
    cached = harness.cache is not None
    expected = (200, DOCKER_SCHEMA1_SIGNED, DIGEST, SIGNED)
    for path in (TAG, by_digest(DIGEST)):
        assert answer(harness, path, SCHEMA1_CLIENT)[:4] == expected
    # Again, and for a client without Accept (schema1 is for it): from the cache, if any.
    for path, headers in ((TAG, SCHEMA1_CLIENT), (by_digest(DIGEST), None), (TAG, None)):
        assert answer(harness, path, headers) == (*expected, "HIT" if cached else "-")
    assert len(registry.paths("GET")) == (1 if cached else 5)
    if cached:
        # Past tag_ttl, the upstream's HEAD names the payload digest: the tag is still good.
        harness.clock.advance(61)
        assert answer(harness, TAG, SCHEMA1_CLIENT) == (*expected, "REVALIDATED")
        assert (registry.paths("HEAD"), len(registry.paths("GET"))) == ([TAG], 1)


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_a_tampered_payload_is_refused(registry: FakeRegistry, harness: Harness, by: str) -> None:
    tampered = SIGNED.replace(b'"tag": "latest"', b'"tag": "hacked"')
    assert tampered != SIGNED and signed_payload(tampered, DOCKER_SCHEMA1_SIGNED) is not None
    path = TAG if by == "tag" else by_digest(DIGEST)
    registry.handlers[path] = serve(tampered, DOCKER_SCHEMA1_SIGNED, DIGEST)
    refused(harness, path)
    refused(harness, path)  # nothing was stored
    assert len(registry.paths("GET")) == 2


def replace_protected(body: bytes, header: Any) -> bytes:
    """The manifest with the first signature's protected header replaced, as given."""
    document = json.loads(body)
    encoded = header if isinstance(header, str) else b64url(json.dumps(header).encode())
    old = document["signatures"][0]["protected"]
    return body.replace(old.encode(), encoded.encode())


LENGTH, TAIL = payload_format(PAYLOAD)
MALFORMED = {
    "not base64url": replace_protected(SIGNED, "e30*"),
    "base64 of not JSON": replace_protected(SIGNED, b64url(b"{formatLength")),
    "not an object": replace_protected(SIGNED, [LENGTH, b64url(TAIL)]),
    "no formatLength": replace_protected(SIGNED, {"formatTail": b64url(TAIL)}),
    "formatLength a string": replace_protected(
        SIGNED, {"formatLength": str(LENGTH), "formatTail": b64url(TAIL)}
    ),
    "formatLength negative": replace_protected(
        SIGNED, {"formatLength": -1, "formatTail": b64url(TAIL)}
    ),
    "formatLength past the end": replace_protected(
        SIGNED, {"formatLength": 10**6, "formatTail": b64url(TAIL)}
    ),
    "no formatTail": replace_protected(SIGNED, {"formatLength": LENGTH}),
    "formatTail not base64url": replace_protected(
        SIGNED, {"formatLength": LENGTH, "formatTail": "Cn0/"}
    ),
    "payload not JSON": replace_protected(SIGNED, {"formatLength": 10, "formatTail": "fQ"}),
    "no protected header": SIGNED.replace(b'"protected"', b'"unprotected"'),
    "no signatures": pretty(PAYLOAD, []),
    "signatures disagree": pretty(
        PAYLOAD,
        [
            SIGNER.signature(PAYLOAD),
            SIGNER.signature(PAYLOAD, formatLength=LENGTH - 1),
        ],
    ),
    # What a client reads is not what is signed: the payload hides in formatTail.
    "payload not the manifest shown": pretty(
        PAYLOAD.replace(b'"tag": "latest"', b'"tag": "hacked"'),
        [SIGNER.signature(PAYLOAD, formatLength=0, formatTail=b64url(PAYLOAD))],
    ),
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_signature_is_refused(
    registry: FakeRegistry, harness: Harness, body: bytes
) -> None:
    # By tag, with no digest claimed: nothing but the signatures can make it fail.
    registry.handlers[TAG] = serve(body, DOCKER_SCHEMA1_SIGNED)
    refused(harness, TAG)
    # By digest, with the upstream's claim: refused all the same.
    registry.handlers[by_digest(DIGEST)] = serve(body, DOCKER_SCHEMA1_SIGNED, DIGEST)
    refused(harness, by_digest(DIGEST))


UNSIGNED = {
    "schema1 v1+json": (PAYLOAD, DOCKER_SCHEMA1),
    "schema1 without signatures, typed prettyjws": (PAYLOAD, DOCKER_SCHEMA1_SIGNED),
    "schema2 with a signatures member": (
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "signatures": [1]}).encode(),
        OCI_MANIFEST,
    ),
}


@pytest.mark.parametrize(("body", "media_type"), list(UNSIGNED.values()), ids=list(UNSIGNED))
def test_an_unsigned_manifest_is_hashed_whole(
    registry: FakeRegistry, harness: Harness, body: bytes, media_type: str
) -> None:
    whole = digest_of(body)
    registry.handlers[TAG] = serve(body, media_type, whole)
    registry.handlers[by_digest(whole)] = serve(body, media_type, whole)
    accept = {"Accept": [media_type]}
    for path in (TAG, by_digest(whole)):
        assert answer(harness, path, accept)[:4] == (200, media_type, whole, body)
    # And checked: bytes that are not the claimed digest's are refused.
    registry.handlers[OTHER] = serve(body + b" ", media_type, whole)
    assert harness.error(harness.request("GET", OTHER, headers=accept)) == (
        502,
        "MANIFEST_INVALID",
    )


def test_a_client_without_accept_is_passed_through_on_a_list_tag(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    """As distribution does: the tag is a list, a client naming no type gets signed schema1."""

    def tag(request: Request) -> bytes:
        accept = b", ".join(request.requestHeaders.getRawHeaders(b"accept", []))
        if DOCKER_LIST.encode() in accept:
            return serve(LIST, DOCKER_LIST, digest_of(LIST))(request)
        return serve(SIGNED, DOCKER_SCHEMA1_SIGNED, DIGEST)(request)

    registry.handlers[TAG] = tag
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    lists = {"Accept": [f"{DOCKER_LIST}, {OCI_INDEX}"]}
    assert answer(harness, TAG, lists) == (200, DOCKER_LIST, digest_of(LIST), LIST, "MISS")
    for _ in range(2):
        assert answer(harness, TAG) == (200, DOCKER_SCHEMA1_SIGNED, DIGEST, SIGNED, "MISS")
        # The client's own request went upstream: no Accept.
        assert "accept" not in registry.requests[-1][2]
    # The tag still means the list.
    assert answer(harness, TAG, lists) == (200, DOCKER_LIST, digest_of(LIST), LIST, "HIT")
    assert len(registry.paths("GET")) == 3


def test_a_client_without_accept_is_passed_through_by_digest_too(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    """Distribution answers a GET by digest of an OCI manifest without Accept with 404: a cached
    copy is not served to such a client, it gets the upstream's answer."""
    oci = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    path = by_digest(digest_of(oci))

    def manifest(request: Request) -> bytes:
        if not request.requestHeaders.hasHeader(b"accept"):
            return json_error(request, 404, "MANIFEST_UNKNOWN", "OCI manifest found, but ...")
        return serve(oci, OCI_MANIFEST, digest_of(oci))(request)

    registry.handlers[path] = manifest
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    client = {"Accept": [OCI_MANIFEST]}
    assert answer(harness, path, client)[3:] == (oci, "MISS")
    assert answer(harness, path, client)[3:] == (oci, "HIT")
    assert harness.error(harness.request("GET", path)) == (404, "MANIFEST_UNKNOWN")
    assert len(registry.paths("GET")) == 2


# The rule itself

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    members=st.dictionaries(
        st.text(max_size=8).filter(lambda key: key != "signatures"),
        json_values,
        min_size=0,
        max_size=5,
    ),
    indent=st.sampled_from([None, 1, 3, "\t"]),
    times=st.lists(st.sampled_from(["2015-01-01T00:00:00Z", "2024-05-01T12:00:00Z"]), min_size=1),
)
def test_a_signed_manifest_has_the_digest_of_its_payload(
    members: dict[str, Any], indent: int | str | None, times: list[str]
) -> None:
    """Any JSON manifest, signed any number of times as libtrust formats it, has the digest of
    the manifest as it was before signing, whatever its Content-Type says; unsigned, it is
    hashed whole."""
    payload = json.dumps({**members, "schemaVersion": 1}, indent=indent).encode()
    signed = pretty(payload, [SIGNER.signature(payload, time) for time in times[:3]])
    assert signed != payload
    for media_type in (DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1, "application/json", ""):
        assert manifest_digest(signed, media_type) == digest_of(payload)
        assert manifest_digest(payload, media_type) == digest_of(payload)
    sha512 = "sha512:" + hashlib.sha512(payload).hexdigest()
    assert manifest_digest(signed, DOCKER_SCHEMA1_SIGNED, "sha512") == sha512


@given(st.binary(max_size=200), st.sampled_from([DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA2]))
def test_bytes_that_are_not_a_signed_manifest_are_hashed_whole(body: bytes, media: str) -> None:
    assert manifest_digest(body, media) == digest_of(body)


# Against the real registry

NO_ACCEPT_CASES = {
    "schema2": "library/alpine",
    "manifest-list": "library/multiarch",
    "oci-index": "library/ociimage",
}


@pytest.mark.parametrize("name", list(NO_ACCEPT_CASES.values()), ids=list(NO_ACCEPT_CASES))
def test_a_get_without_accept_gets_what_the_upstream_gives(
    mirror: Mirror, upstream: Upstream, name: str
) -> None:
    """Distribution converts a schema2 image (or a list's default platform) to signed schema1
    for a client without Accept, and answers 404 for an OCI index; through the mirror, whose
    tag is cached as something else, such a client gets the same answer."""
    path = f"/v2/{name}/manifests/latest"
    every_type = {"Accept": f"{OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST}, {DOCKER_SCHEMA2}"}
    status, headers, _ = fetch(mirror.url + path, headers=every_type)
    assert status == 200 and headers["content-type"] != DOCKER_SCHEMA1_SIGNED
    wait_for(lambda: (name, "latest") in indexed(mirror)[1], 10)

    token = {"Authorization": "Bearer " + upstream.token(name)}
    direct_status, direct_headers, direct = fetch(upstream.url + path, headers=token)
    status, headers, body = fetch(mirror.url + path)
    assert status == direct_status
    if status != 200:
        assert json.loads(body)["errors"][0]["code"] == json.loads(direct)["errors"][0]["code"]
        return
    assert headers["content-type"] == direct_headers["content-type"] == DOCKER_SCHEMA1_SIGNED
    assert headers["docker-content-digest"] == direct_headers["docker-content-digest"]
    assert manifest_digest(body, DOCKER_SCHEMA1_SIGNED) == headers["docker-content-digest"]
    assert headers["docker-content-digest"] != digest_of(body)
    # Distribution signs each answer afresh (a new time, a random ECDSA nonce), so the bytes
    # differ between two requests: the same payload, signed by the same key, untouched.
    assert signed_payload(body, "") == signed_payload(direct, "")
    assert verify(body) == verify(direct)
    # The in-memory tests' signer writes what distribution writes.
    payload = signed_payload(body, "")
    assert payload is not None
    signatures = json.loads(body)["signatures"]
    protected = json.loads(b64url_decode(signatures[0]["protected"]))
    assert (protected["formatLength"], b64url_decode(protected["formatTail"])) == payload_format(
        payload
    )
    assert pretty(payload, signatures) == body
