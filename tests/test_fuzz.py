"""No client input makes the mirror answer 500, log a traceback or hang.

Property-based (hypothesis) over what a client controls: the path (names,
references, digests, empty and dot segments, percent-escapes), the Host header,
the query string (``ns``, ``n``, ``last``, ``scope``) and the Range header.  The
mirror runs in memory against a fake upstream that has one repository with a
manifest and a blob, so inputs reach the cache and the range code too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from dockermirror.reference import digest_of
from dockermirror.web.requests import valid_host
from tests.fakes import FakeRegistry, Harness, blob_handler

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/x-m"}).encode()
BLOB = bytes(range(256)) * 16
BLOB_DIGEST = digest_of(BLOB)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def manifest(request: Any) -> bytes:
    request.setHeader(b"content-type", b"application/x-m")
    request.setHeader(b"docker-content-digest", digest_of(MANIFEST).encode())
    return MANIFEST


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    registry = FakeRegistry()
    registry.handlers["/v2/library/redis/manifests/7"] = manifest
    registry.handlers[f"/v2/library/redis/manifests/{digest_of(MANIFEST)}"] = manifest
    registry.handlers[f"/v2/library/redis/blobs/{BLOB_DIGEST}"] = blob_handler(BLOB)
    cache = tmp_path_factory.mktemp("fuzz-cache")
    return Harness(registry, {"cache": {"dir": str(Path(cache))}})


@pytest.fixture
def errors() -> Iterator[list[dict[str, object]]]:
    logged: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            logged.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield logged
    globalLogPublisher.removeObserver(observer)


def answered(
    harness: Harness, errors: list[dict[str, object]], method: str, url: str, **kw: Any
) -> Any:
    """The response, checked: never a 500, always an OCI error document for an error."""
    # harness.request fails if the answer never came: a hang is a failure here.
    response = harness.request(method, url, **kw)
    assert response.code != 500, url
    body = harness.body(response)
    if response.code >= 400 and method != "HEAD":
        document = json.loads(body)
        assert {"code", "message", "detail"} <= set(document["errors"][0]), body
    assert errors == [], errors
    return response


segment = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "redis",
            "library",
            "manifests",
            "blobs",
            "tags",
            "list",
            "referrers",
            "uploads",
            "_catalog",
            "7",
            "latest",
            BLOB_DIGEST,
            digest_of(MANIFEST),
            "sha256:",
            "sha256:zz",
            "sha512:" + "0" * 128,
            "docker.io",
            "ghcr.io",
            "localhost",
            "a" * 300,
            "%ff",
            "%2F",
            "%00",
            "A",
            "x:y",
            "@",
        ]
    ),
    st.text(max_size=20),
)


@FUZZ
@given(
    parts=st.lists(segment, max_size=8),
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]),
)
def test_any_path(
    harness: Harness, errors: list[dict[str, object]], parts: list[str], method: str
) -> None:
    path = "/".join(parts)
    # Keep a client's own percent-escapes; quote everything else.
    answered(harness, errors, method, "/v2/" + quote(path, safe="/:@%"))


host_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
    st.from_regex(r"\A[a-z0-9.-]{1,30}(:[0-9]{1,6})?\Z"),
    st.sampled_from(
        ["[::1]:5000", "[::1", "::1", "a..b", "-a.b", "x:", "x:99999999", "é.test", '"q"']
    ),
)


@FUZZ
@given(
    value=host_text,
    path=st.sampled_from(
        ["/", "/v2/", "/v2/redis/manifests/7", "/v2/auth?scope=repository:redis:pull"]
    ),
)
def test_any_host(
    harness: Harness, errors: list[dict[str, object]], value: str, path: str
) -> None:
    response = answered(harness, errors, "GET", path, headers={"Host": [value]})
    # An empty Host is no Host (HTTP/1.0): the default route serves it.
    assert (response.code == 400) is not (valid_host(value) or not value) or path != "/"


query_text = st.text(max_size=30)


@FUZZ
@given(
    ns=st.none() | query_text,
    n=st.none() | query_text | st.integers().map(str),
    last=st.none() | query_text,
    scopes=st.lists(query_text, max_size=3),
    path=st.sampled_from(["/v2/redis/tags/list", "/v2/redis/manifests/7", "/v2/auth", "/v2/"]),
)
def test_any_query(
    harness: Harness,
    errors: list[dict[str, object]],
    ns: str | None,
    n: str | None,
    last: str | None,
    scopes: list[str],
    path: str,
) -> None:
    pairs = [(k, v) for k, v in (("ns", ns), ("n", n), ("last", last)) if v is not None]
    pairs += [("scope", scope) for scope in scopes]
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in pairs)
    answered(harness, errors, "GET", f"{path}?{query}", headers={"Accept": ["application/x-m"]})


header_text = st.text(alphabet=st.characters(max_codepoint=255), max_size=30)
# Up to past Python's 4300-digit int() limit.
number = st.one_of(
    st.integers(min_value=0, max_value=2**70).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    header_text,
)
range_text = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", number, number),
    st.builds(lambda a: f"bytes=-{a}", number),
    st.builds(lambda a, b, c: f"bytes={a}-{b},{c}-", number, number, number),
    header_text,
)


@FUZZ
@given(value=range_text, method=st.sampled_from(["GET", "HEAD"]))
def test_any_range(
    harness: Harness, errors: list[dict[str, object]], value: str, method: str
) -> None:
    url = f"/v2/redis/blobs/{BLOB_DIGEST}"
    response = answered(harness, errors, method, url, headers={"Range": [value]})
    # 400: a control character, which the channel refuses as a malformed request.
    assert response.code in (200, 206, 416, 400)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("mirror.example.com", True),
        ("mirror.example.com:5000", True),
        ("localhost", True),
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("[not:an:address]", False),
        ("mirror.example.com:", False),
        ("a b", False),
        ('x"', False),
        ("x/y", False),
        ("user@host", False),
        (".x", False),
        ("a" * 64 + ".com", False),
    ],
)
def test_valid_host(value: str, valid: bool) -> None:
    assert valid_host(value) is valid


@pytest.mark.parametrize(
    "value", ["bytes=0-" + "9" * 5000, "bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000]
)
def test_ranges_past_python_int_limit(
    harness: Harness, errors: list[dict[str, object]], value: str
) -> None:
    url = f"/v2/redis/blobs/{BLOB_DIGEST}"
    response = answered(harness, errors, "GET", url, headers={"Range": [value]})
    assert response.code in (200, 206, 416)
