"""Pure parsing: API paths, reference grammars, challenges, scopes, routing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockermirror.auth.tokens import parse_scope
from dockermirror.config import MirrorConfig, build_config
from dockermirror.errors import RegistryError
from dockermirror.reference import (
    ApiPath,
    Endpoint,
    parse_api_path,
    validate_digest,
    validate_name,
    validate_reference,
)
from dockermirror.registry.mediatypes import acceptable
from dockermirror.registry.model import RangeNotSatisfiable, RangeRequest
from dockermirror.routing import route_request
from dockermirror.upstream.challenge import Challenge, parse_challenges
from dockermirror.web.ranges import parse_range

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("library/redis/manifests/7", ApiPath("library/redis", Endpoint.MANIFEST, "7")),
        (f"a/b/c/blobs/{SHA}", ApiPath("a/b/c", Endpoint.BLOB, SHA)),
        ("redis/tags/list", ApiPath("redis", Endpoint.TAGS)),
        (f"redis/referrers/{SHA}", ApiPath("redis", Endpoint.REFERRERS, SHA)),
        ("redis/blobs/uploads/", ApiPath("redis", Endpoint.UPLOAD)),
        ("redis/blobs/uploads/some-uuid", ApiPath("redis", Endpoint.UPLOAD)),
        ("_catalog", ApiPath("", Endpoint.CATALOG)),
        # A repository may be called "manifests": the endpoint is the second-last segment.
        ("manifests/manifests/latest", ApiPath("manifests", Endpoint.MANIFEST, "latest")),
    ],
)
def test_api_paths(rest: str, expected: ApiPath) -> None:
    assert parse_api_path(rest) == expected


@pytest.mark.parametrize("rest", ["", "redis", "redis/manifests", "redis/tags/lists"])
def test_not_api_paths(rest: str) -> None:
    with pytest.raises(RegistryError) as error:
        parse_api_path(rest)
    assert error.value.code.code == "NAME_INVALID"


@pytest.mark.parametrize("name", ["redis", "library/redis", "a-b/c_d/e.f", "a__b", "x" * 255])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Redis", "a//b", "-a", "a-", "a/", "a:b", "a..b/../c", "x" * 256]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError):
        validate_name(name)


@pytest.mark.parametrize("reference", ["latest", "v1.2.3-rc_1", "_x", "A" * 128, SHA])
def test_valid_references(reference: str) -> None:
    assert validate_reference(reference) == reference


@pytest.mark.parametrize(
    "reference",
    ["-x", ".x", "A" * 129, "a b", "sha256:abc", "sha256:" + "A" * 64, "md5:" + "a" * 32],
)
def test_invalid_references(reference: str) -> None:
    with pytest.raises(RegistryError):
        validate_reference(reference)


def test_sha512_digest() -> None:
    digest = "sha512:" + "0" * 128
    assert validate_digest(digest) == digest


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
            [
                Challenge(
                    "bearer",
                    {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"},
                )
            ],
        ),
        (
            'Bearer scope="repository:a/b:pull,push", service="s",realm="https://r/t"',
            [
                Challenge(
                    "bearer",
                    {"scope": "repository:a/b:pull,push", "service": "s", "realm": "https://r/t"},
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="a, b", Bearer realm="x\\"y"',
            [Challenge("basic", {"realm": "a, b"}), Challenge("bearer", {"realm": 'x"y'})],
        ),
        (
            "Bearer realm=http://h:1/t,service=s",
            [Challenge("bearer", {"realm": "http://h:1/t", "service": "s"})],
        ),
        ("", []),
    ],
)
def test_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("repository:library/redis:pull", ("repository", "library/redis", ["pull"])),
        ("repository:a/b:pull,push", ("repository", "a/b", ["pull", "push"])),
        ("registry:catalog:*", ("registry", "catalog", ["*"])),
        ("nonsense", None),
    ],
)
def test_scopes(scope: str, expected: object) -> None:
    assert parse_scope(scope) == expected


@pytest.fixture
def config() -> MirrorConfig:
    return build_config(
        {
            "routes": {"*": "docker.io", "ghcr.example.com": "ghcr.io"},
            "registries": {"localhost": {"url": "http://127.0.0.1:5001"}},
        }
    )


@pytest.mark.parametrize(
    ("host", "name", "ns", "registry", "upstream_name"),
    [
        ("mirror.example.com:5000", "redis", None, "docker.io", "library/redis"),
        ("mirror.example.com", "bitnami/redis", None, "docker.io", "bitnami/redis"),
        ("GHCR.example.com", "owner/app", None, "ghcr.io", "owner/app"),
        ("ghcr.example.com", "app", None, "ghcr.io", "app"),
        ("mirror.example.com", "quay.io/coreos/etcd", None, "quay.io", "coreos/etcd"),
        ("mirror.example.com", "docker.io/redis", None, "docker.io", "library/redis"),
        ("mirror.example.com", "coreos/etcd", "quay.io", "quay.io", "coreos/etcd"),
        ("mirror.example.com", "redis", "docker.io", "docker.io", "library/redis"),
        # An explicit prefix wins over ns; an unknown dotted first part is just a name.
        ("mirror.example.com", "ghcr.io/o/a", "quay.io", "ghcr.io", "o/a"),
        ("mirror.example.com", "my.name/app", None, "docker.io", "my.name/app"),
        # Docker's rule: a first part with a dot, or "localhost", names a registry.
        ("mirror.example.com", "localhost/app", None, "localhost", "app"),
    ],
)
def test_routing(
    config: MirrorConfig, host: str, name: str, ns: str | None, registry: str, upstream_name: str
) -> None:
    target = route_request(config, host, name, ns)
    assert (target.registry.name, target.name, target.client_name) == (
        registry,
        upstream_name,
        name,
    )


def test_unknown_ns_is_denied(config: MirrorConfig) -> None:
    with pytest.raises(RegistryError) as error:
        route_request(config, "mirror.example.com", "redis", "169.254.169.254")
    assert error.value.status == 403


@given(
    first=st.integers(0, 2000), last=st.integers(0, 2000) | st.none(), size=st.integers(0, 1000)
)
def test_a_resolved_range_lies_inside_the_blob(first: int, last: int | None, size: int) -> None:
    header = f"bytes={first}-{'' if last is None else last}"
    wanted = parse_range(header)
    assert wanted == RangeRequest(first=first, last=last)
    try:
        resolved = wanted.resolve(size)
    except RangeNotSatisfiable as e:
        assert first >= size and e.size == size
        return
    if resolved is None:  # an invalid range, ignored: the whole blob
        assert last is not None and last < first
        return
    assert 0 <= resolved.first == first <= resolved.last < size
    assert resolved.last == (size - 1 if last is None else min(last, size - 1))


@given(suffix=st.integers(0, 2000), size=st.integers(0, 1000))
def test_a_suffix_range_is_the_blob_end(suffix: int, size: int) -> None:
    wanted = parse_range(f"bytes=-{suffix}")
    assert wanted == RangeRequest(suffix=suffix)
    try:
        resolved = wanted.resolve(size)
    except RangeNotSatisfiable:
        assert suffix == 0 or size == 0
        return
    assert resolved is not None
    assert (resolved.first, resolved.last) == (max(0, size - suffix), size - 1)


@given(st.text(max_size=40))
def test_any_range_header_parses_or_means_the_whole_blob(header: str) -> None:
    wanted = parse_range(header)
    assert wanted is None or isinstance(wanted, RangeRequest)


@pytest.mark.parametrize(
    ("media_type", "accept", "expected"),
    [
        # A client without Accept takes schema1 only, signed or not, as distribution has it.
        ("application/vnd.oci.image.index.v1+json", [], False),
        ("application/vnd.docker.distribution.manifest.v2+json", [], False),
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", [], True),
        ("application/vnd.docker.distribution.manifest.v1+json", [], True),
        ("Application/vnd.docker.distribution.manifest.v1+JSON; charset=utf-8", [], True),
        # Wildcards name nothing (curl sends */*): schema1 only, as distribution has it.
        ("application/vnd.oci.image.index.v1+json", ["*/*"], False),
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", ["*/*"], True),
        ("application/vnd.oci.image.index.v1+json", ["*/*", "application/*"], False),
        (
            "application/vnd.oci.image.index.v1+json",
            ["a/b", "application/vnd.oci.image.index.v1+json; q=0.5"],
            True,
        ),
        (
            "application/vnd.oci.image.index.v1+json",
            ["application/vnd.docker.distribution.manifest.v2+json"],
            False,
        ),
        ("Application/X; charset=utf-8", ["application/x"], True),
    ],
)
def test_acceptable(media_type: str, accept: list[str], expected: bool) -> None:
    assert acceptable(media_type, accept) is expected
