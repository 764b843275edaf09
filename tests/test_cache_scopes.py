"""Cached content is served per upstream identity and per repository, as the upstream shows it.

A blob or manifest stored from one repository is served under another only once
the upstream has shown it there (one HEAD, then remembered); a repository the
upstream does not have gets its 404 whatever the cache holds; a manifest's media
type is each upstream's own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror.reference import digest_of
from tests.fakes import WITH_PRIVATE, FakeRegistry, Harness, blob_handler, result_of

BLOB = bytes(range(256)) * 64
DIGEST = digest_of(BLOB)
OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI}).encode()
MANIFEST_DIGEST = digest_of(MANIFEST)


def manifest_handler(content_type: str, digest: str = MANIFEST_DIGEST) -> Any:
    def handle(request: Request) -> bytes:
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"docker-content-digest", digest.encode())
        return MANIFEST

    return handle


def outcome(response: Any) -> str:
    return str(response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0])


@pytest.fixture
def registry() -> FakeRegistry:
    registry = FakeRegistry()
    registry.handlers[f"/v2/library/redis/blobs/{DIGEST}"] = blob_handler(BLOB)
    registry.handlers[f"/v2/library/redis/manifests/{MANIFEST_DIGEST}"] = manifest_handler(OCI)
    return registry


@pytest.fixture
def harness(registry: FakeRegistry, tmp_path: Path) -> Harness:
    return Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})


def get(harness: Harness, path: str) -> tuple[Any, bytes]:
    response = harness.request("GET", path, headers={"Accept": [OCI]})
    return response, harness.body(response)


@pytest.mark.parametrize("kind", ["blobs", "manifests"])
def test_content_of_another_repository_is_served_only_once_the_upstream_shows_it(
    registry: FakeRegistry, harness: Harness, kind: str
) -> None:
    digest = DIGEST if kind == "blobs" else MANIFEST_DIGEST
    body = BLOB if kind == "blobs" else MANIFEST
    get(harness, f"/v2/redis/{kind}/{digest}")
    # The upstream has no such repository: its 404, whatever the cache holds.
    response, _ = get(harness, f"/v2/other/{kind}/{digest}")
    assert response.code == 404
    # Now it has the content there too: one HEAD to confirm, then served from the cache.
    registry.handlers[f"/v2/library/other/{kind}/{digest}"] = registry.handlers[
        f"/v2/library/redis/{kind}/{digest}"
    ]
    before = len(registry.paths())
    for _ in range(2):
        response, served = get(harness, f"/v2/other/{kind}/{digest}")
        assert (response.code, outcome(response), served) == (200, "HIT", body)
    assert registry.paths()[before:] == [f"/v2/library/other/{kind}/{digest}"]
    assert registry.requests[-1][0] == "HEAD"


def test_a_manifest_type_is_each_upstreams_own(registry: FakeRegistry, tmp_path: Path) -> None:
    """The same bytes, served by another identity with another Content-Type."""
    registry.handlers[f"/v2/private/app/manifests/{MANIFEST_DIGEST}"] = manifest_handler(
        "application/x-other"
    )
    registry.handlers[f"/v2/library/app/manifests/{MANIFEST_DIGEST}"] = manifest_handler(OCI)
    toml = {
        "registries": WITH_PRIVATE,
        "cache": {"dir": str(tmp_path / "cache")},
    }
    harness = Harness(registry, toml)
    paths = {
        "private": f"/v2/private.test/private/app/manifests/{MANIFEST_DIGEST}",
        "public": f"/v2/app/manifests/{MANIFEST_DIGEST}",
    }
    for _ in range(2):  # a miss, then a hit, for each
        for name, path in paths.items():
            accept = [f"{OCI}, application/x-other"]
            response = harness.request("GET", path, headers={"Accept": accept})
            expected = "application/x-other" if name == "private" else OCI
            assert response.headers.getRawHeaders("content-type") == [expected], name
    assert len(registry.paths("GET")) == 2


def test_sha512_manifests_keep_the_digest_asked_for(
    registry: FakeRegistry, harness: Harness
) -> None:
    sha512 = "sha512:" + hashlib.sha512(MANIFEST).hexdigest()
    registry.handlers[f"/v2/library/redis/manifests/{sha512}"] = manifest_handler(OCI)
    for expected in ("MISS", "HIT"):
        response, body = get(harness, f"/v2/redis/manifests/{sha512}")
        assert (response.code, outcome(response), body) == (200, expected, MANIFEST)
        assert response.headers.getRawHeaders("docker-content-digest") == [sha512]


def test_a_download_for_another_repository_is_joined_only_once_the_upstream_shows_it(
    registry: FakeRegistry, harness: Harness
) -> None:
    held: list[Request] = []

    def slow(request: Request) -> int:
        request.setHeader(b"content-length", str(len(BLOB)).encode())
        request.write(BLOB[:1000])
        held.append(request)
        return NOT_DONE_YET

    registry.handlers[f"/v2/library/redis/blobs/{DIGEST}"] = slow
    first = harness.client.get(f"http://mirror.test/v2/redis/blobs/{DIGEST}")
    harness.settle()
    assert len(held) == 1  # the fill is running
    response, _ = get(harness, f"/v2/other/blobs/{DIGEST}")
    assert response.code == 404
    registry.handlers[f"/v2/library/other/blobs/{DIGEST}"] = blob_handler(BLOB)
    second = harness.client.get(f"http://mirror.test/v2/other/blobs/{DIGEST}")
    harness.settle()
    held[0].write(BLOB[1000:])
    held[0].finish()
    harness.settle()
    assert harness.body(result_of(first)) == BLOB
    joined = result_of(second)
    assert (outcome(joined), harness.body(joined)) == ("COALESCED", BLOB)
    assert registry.paths("GET").count(f"/v2/library/redis/blobs/{DIGEST}") == 1
    assert f"/v2/library/other/blobs/{DIGEST}" not in registry.paths("GET")
