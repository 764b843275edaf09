"""The web layer against a fake of the domain: how manifests, blobs and failures are rendered.

No upstream and no storage here: a scripted Registry hands out values, and
these tests check only what the HTTP side makes of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.test.requesthelper import DummyRequest

from dockermirror.config import build_config
from dockermirror.errors import TOOMANYREQUESTS, RegistryError
from dockermirror.metrics import Metrics
from dockermirror.registry.model import (
    BlobBody,
    BlobInfo,
    ByteRange,
    CacheOutcome,
    LocalFile,
    Manifest,
    RangeRequest,
    Referrers,
    TagPage,
)
from dockermirror.routing import Target
from dockermirror.service import build_app
from dockermirror.web.site import MirrorSite
from tests.fakes import result_of, stub_client
from tests.test_registry_caching import BytesStream

DIGEST = "sha256:" + "a" * 64
DATA = b"0123456789"


class Broken:
    """A stream that fails after some bytes, as a corrupt or truncated upstream blob does."""

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(DATA[:5])
        return fail(RegistryError(TOOMANYREQUESTS))


class ScriptedBlob:
    def __init__(self, registry: ScriptedRegistry) -> None:
        self.digest = DIGEST
        self._registry = registry

    async def stat(self) -> BlobInfo:
        return BlobInfo(DIGEST, len(DATA), "application/x-test", CacheOutcome.HIT)

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        self._registry.ranges.append(wanted)
        info = BlobInfo(DIGEST, len(DATA), "application/x-test", CacheOutcome.COALESCED)
        if self._registry.broken:
            # No length: a chunked body that only an abort can mark as incomplete.
            return BlobBody(attrs.evolve(info, size=None), None, Broken())
        if wanted is None:
            return BlobBody(info, None, BytesStream(DATA))
        byte_range = wanted.resolve(len(DATA))
        assert byte_range is not None
        part = DATA[byte_range.first : byte_range.last + 1]
        return BlobBody(info, ByteRange(byte_range.first, byte_range.last), BytesStream(part))

    def local_file(self) -> LocalFile | None:
        return None

    def direct_url(self) -> str | None:
        return None


class ScriptedRegistry:
    def __init__(self) -> None:
        self.manifest_calls: list[tuple[str, str, tuple[str, ...], bool]] = []
        self.ranges: list[RangeRequest | None] = []
        self.broken = False

    async def manifest(
        self, target: Target, reference: str, accept: Sequence[str], *, head: bool = False
    ) -> Manifest:
        self.manifest_calls.append((target.name, reference, tuple(accept), head))
        return Manifest(DIGEST, "application/x-m", 3, None if head else b"abc", CacheOutcome.STALE)

    async def blob(self, target: Target, digest: str) -> ScriptedBlob:
        return ScriptedBlob(self)

    async def tags(self, target: Target, n: str | None, last: str | None) -> TagPage:
        return TagPage(target.name, ("a", "b"), (("n", n or ""), ("last", "b")))

    async def referrers(self, target: Target, digest: str, artifact_type: str | None) -> Referrers:
        return Referrers("application/vnd.oci.image.index.v1+json", b"{}", artifact_type)


@pytest.fixture
def registry() -> ScriptedRegistry:
    return ScriptedRegistry()


@pytest.fixture
def client(registry: ScriptedRegistry) -> Any:
    clock = Clock()
    app = build_app(build_config({}), clock, registry, {}, metrics=Metrics(clock, {}))
    return stub_client(MirrorSite(app.resource(), reactor=clock))


def call(client: Any, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
    response = result_of(client.request(method, "http://mirror.test" + path, **kwargs))
    d = response.content()
    client.flush()
    return response, result_of(d)


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else str(values[0])


def test_manifest_outcome_and_stale_warning(client: Any, registry: ScriptedRegistry) -> None:
    response, body = call(client, "GET", "/v2/redis/manifests/7", headers={"Accept": "a/b, c/d"})
    assert (response.code, body) == (200, b"abc")
    assert header(response, "x-dockermirror-cache") == "STALE"
    assert header(response, "warning") == '110 - "Response is Stale"'
    assert header(response, "docker-content-digest") == DIGEST
    assert registry.manifest_calls == [("library/redis", "7", ("a/b, c/d",), False)]
    response, body = call(client, "HEAD", "/v2/redis/manifests/7")
    assert (body, header(response, "content-length")) == (b"", "3")
    assert registry.manifest_calls[-1][3] is True


def test_blob_head_range_and_whole(client: Any, registry: ScriptedRegistry) -> None:
    response, body = call(client, "HEAD", f"/v2/redis/blobs/{DIGEST}")
    assert (response.code, body, header(response, "content-length")) == (200, b"", "10")
    assert header(response, "x-dockermirror-cache") == "HIT"
    assert registry.ranges == []  # a HEAD opens nothing
    response, body = call(
        client, "GET", f"/v2/redis/blobs/{DIGEST}", headers={"Range": "bytes=2-4"}
    )
    assert (response.code, body, header(response, "content-range")) == (
        206,
        b"234",
        "bytes 2-4/10",
    )
    assert registry.ranges == [RangeRequest(first=2, last=4)]
    response, body = call(client, "GET", f"/v2/redis/blobs/{DIGEST}")
    # A Twisted client moves a GET's Content-Length into .length.
    assert (response.code, body, response.length) == (200, DATA, 10)
    assert header(response, "content-type") == "application/x-test"
    assert header(response, "etag") == f'"{DIGEST}"'


def test_unsatisfiable_range_is_416(client: Any) -> None:
    response, body = call(
        client, "GET", f"/v2/redis/blobs/{DIGEST}", headers={"Range": "bytes=10-"}
    )
    assert (response.code, header(response, "content-range")) == (416, "bytes */10")
    assert header(response, "content-type") == "application/json"
    assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"


def test_failed_stream_aborts_the_client_and_is_logged(
    client: Any, registry: ScriptedRegistry, log_events: list[dict[str, object]]
) -> None:
    registry.broken = True
    response = result_of(client.request("GET", f"http://mirror.test/v2/redis/blobs/{DIGEST}"))
    d = response.content()
    client.flush()
    with pytest.raises((ResponseFailed, ResponseNeverReceived)):
        result_of(d)
    warnings = [e for e in log_events if e.get("log_level") is LogLevel.warn]
    assert any(e.get("action") == "aborting response" for e in warnings)


def test_tags_link_and_referrers(client: Any) -> None:
    response, body = call(client, "GET", "/v2/ghcr.io/o/app/tags/list?n=2&ns=ghcr.io")
    assert body == b'{"name": "o/app", "tags": ["a", "b"]}'
    assert header(response, "link") == (
        '</v2/ghcr.io/o/app/tags/list?n=2&last=b&ns=ghcr.io>; rel="next"'
    )
    response, body = call(client, "GET", f"/v2/redis/referrers/{DIGEST}?artifactType=x/y")
    assert (body, header(response, "oci-filters-applied")) == (b"{}", "x/y")


def test_access_log_reads_the_typed_request(
    client: Any, log_events: list[dict[str, object]]
) -> None:
    call(client, "GET", "/v2/redis/manifests/7")
    access = [e for e in log_events if e.get("log_namespace") == "dockermirror.access"]
    assert [(e["route"], e["cache"], e["status"]) for e in access] == [
        ("docker.io/library/redis", "STALE", 200)
    ]


def test_a_path_that_is_not_utf8_gets_an_oci_error(
    registry: ScriptedRegistry, log_events: list[dict[str, object]]
) -> None:
    clock = Clock()
    resource = build_app(
        build_config({}), clock, registry, {}, metrics=Metrics(clock, {})
    ).resource()
    request = DummyRequest([b"v2", b"%ff", b"manifests", b"7"])
    # As a client sends it: percent-encoded bytes that are not UTF-8 once decoded.
    request.path = b"/v2/library%ff/manifests/7"  # type: ignore[attr-defined]
    request.isSecure = lambda: False  # type: ignore[attr-defined]  # DummyRequest lacks it
    body = resource.render(request)
    assert isinstance(body, bytes)
    assert (request.responseCode, json.loads(body)["errors"][0]["code"]) == (400, "NAME_INVALID")
    assert not [e for e in log_events if e.get("log_level") is LogLevel.critical]
