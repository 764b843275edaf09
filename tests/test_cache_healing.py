"""A cache that heals: files damaged, truncated or deleted behind the mirror's back, in memory.

- A manifest is re-hashed on each read; a damaged or missing one is fetched again, and the
  client gets the right bytes, not an error.
- A blob whose file has another size than the index says (truncated, grown) or is gone is
  dropped and fetched again; never served short.
- A deleted ``tmp/`` or ``blobs/`` directory is made again, and caching goes on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.web.server import Request

from dockermirror.reference import digest_of
from dockermirror.storage.verify import Stored, check_file
from tests.fakes import FakeRegistry, Harness, blob_handler, result_of

OCI = "application/vnd.oci.image.manifest.v1+json"
CLIENT = {"Accept": [OCI]}
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": []}).encode()
MANIFEST_DIGEST = digest_of(MANIFEST)
BLOB = bytes(range(256)) * 1024  # 256 KiB
BLOB_DIGEST = digest_of(BLOB)
BLOB_PATH = f"/v2/redis/blobs/{BLOB_DIGEST}"
UPSTREAM_BLOB = f"/v2/library/redis/blobs/{BLOB_DIGEST}"


def serve_manifest(request: Request) -> bytes:
    request.setHeader(b"content-type", OCI.encode())
    request.setHeader(b"docker-content-digest", MANIFEST_DIGEST.encode())
    return MANIFEST


@pytest.fixture
def registry() -> FakeRegistry:
    registry = FakeRegistry()
    registry.handlers["/v2/library/redis/manifests/7"] = serve_manifest
    registry.handlers[f"/v2/library/redis/manifests/{MANIFEST_DIGEST}"] = serve_manifest
    registry.handlers[UPSTREAM_BLOB] = blob_handler(BLOB)
    return registry


@pytest.fixture
def harness(registry: FakeRegistry, tmp_path: Path) -> Harness:
    return Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})


def get(harness: Harness, path: str) -> tuple[int, str, bytes]:
    response = harness.request("GET", path, headers=CLIENT)
    body = harness.body(response)
    return response.code, response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0], body


def warnings(events: list[dict[str, object]]) -> list[str]:
    return [str(e.get("digest")) for e in events if "cache damage" in str(e.get("log_format"))]


# Manifests


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reference", ["7", MANIFEST_DIGEST])
def test_a_corrupted_manifest_is_fetched_again(
    harness: Harness,
    registry: FakeRegistry,
    reference: str,
    log_events: list[dict[str, object]],
) -> None:
    assert get(harness, "/v2/redis/manifests/7") == (200, "MISS", MANIFEST)
    path = harness.storage().path(MANIFEST_DIGEST)
    flip_a_byte(path)
    before = len(registry.paths("GET"))
    assert get(harness, f"/v2/redis/manifests/{reference}") == (200, "MISS", MANIFEST)
    assert len(registry.paths("GET")) == before + 1
    assert warnings(log_events) == [MANIFEST_DIGEST]
    # Stored again, right this time: the next read is a hit.
    assert path.read_bytes() == MANIFEST
    assert get(harness, f"/v2/redis/manifests/{reference}") == (200, "HIT", MANIFEST)
    assert len(registry.paths("GET")) == before + 1


def test_a_deleted_manifest_is_fetched_again_without_an_error(
    harness: Harness, registry: FakeRegistry, observe_errors: list[object]
) -> None:
    get(harness, "/v2/redis/manifests/7")
    harness.storage().path(MANIFEST_DIGEST).unlink()
    assert get(harness, f"/v2/redis/manifests/{MANIFEST_DIGEST}") == (200, "MISS", MANIFEST)
    assert get(harness, f"/v2/redis/manifests/{MANIFEST_DIGEST}") == (200, "HIT", MANIFEST)


# Blobs


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def grow(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def delete(path: Path) -> None:
    path.unlink()


def delete_its_directory(path: Path) -> None:
    shutil.rmtree(path.parent)


def delete_blobs(path: Path) -> None:
    shutil.rmtree(path.parents[2])


@pytest.mark.parametrize("damage", [truncate, grow, delete, delete_its_directory, delete_blobs])
def test_a_blob_changed_behind_the_mirrors_back_is_fetched_again(
    harness: Harness,
    registry: FakeRegistry,
    damage: Callable[[Path], None],
    log_events: list[dict[str, object]],
) -> None:
    assert get(harness, BLOB_PATH) == (200, "MISS", BLOB)
    store = harness.storage()
    damage(store.path(BLOB_DIGEST))
    code, outcome, body = get(harness, BLOB_PATH)
    assert (code, outcome, hashlib.sha256(body).hexdigest()) == (200, "MISS", BLOB_DIGEST[7:])
    assert registry.paths("GET").count(UPSTREAM_BLOB) == 2
    assert warnings(log_events) == [BLOB_DIGEST]
    # Stored again (its directories made again), counted once.
    assert store.path(BLOB_DIGEST).read_bytes() == BLOB
    assert store.total == len(BLOB)
    assert get(harness, BLOB_PATH) == (200, "HIT", BLOB)
    assert registry.paths("GET").count(UPSTREAM_BLOB) == 2


def test_a_deleted_tmp_directory_is_made_again(
    harness: Harness, registry: FakeRegistry, observe_errors: list[object]
) -> None:
    store = harness.storage()
    shutil.rmtree(store.directory / "tmp")
    assert get(harness, BLOB_PATH) == (200, "MISS", BLOB)
    assert get(harness, "/v2/redis/manifests/7") == (200, "MISS", MANIFEST)
    assert store.writable()
    assert get(harness, BLOB_PATH) == (200, "HIT", BLOB)
    assert get(harness, "/v2/redis/manifests/7") == (200, "HIT", MANIFEST)
    assert registry.paths("GET").count(UPSTREAM_BLOB) == 1
    assert list((store.directory / "tmp").iterdir()) == []


def test_a_signed_schema1_manifest_is_not_taken_for_damage(
    registry: FakeRegistry, harness: Harness, observe_errors: list[object]
) -> None:
    """Its digest is its payload's, not its bytes': the re-hash computes it as registries do."""
    body, digest = signed_schema1()
    assert digest != digest_of(body)

    def serve(request: Request) -> bytes:
        request.setHeader(b"content-type", SCHEMA1_SIGNED.encode())
        request.setHeader(b"docker-content-digest", digest.encode())
        return body

    registry.handlers[f"/v2/library/redis/manifests/{digest}"] = serve
    path = f"/v2/redis/manifests/{digest}"
    headers = {"Accept": [SCHEMA1_SIGNED]}
    for expected in ("MISS", "HIT"):
        response = harness.request("GET", path, headers=headers)
        assert (response.code, harness.body(response)) == (200, body)
        assert response.headers.getRawHeaders("x-dockermirror-cache") == [expected]


SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def signed_schema1() -> tuple[bytes, str]:
    """A signed schema1 manifest (its signature's bytes do not matter here) and its digest."""

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = b'{\n   "schemaVersion": 1,\n   "name": "library/redis",\n   "tag": "7"\n}'
    length = len(payload) - 2  # before "\n}", the tail the signatures replace
    protected = b64url(json.dumps({"formatLength": length, "formatTail": b64url(b"\n}")}).encode())
    signature = json.dumps([{"protected": protected, "signature": "x"}])
    body = payload[:length] + f',\n   "signatures": {signature}\n}}'.encode()
    return body, digest_of(payload)


def test_damage_is_not_dropped_once_a_fresh_copy_took_its_place(
    harness: Harness, log_events: list[dict[str, object]]
) -> None:
    """Found damaged, then stored afresh (a fill for another upstream identity): kept."""
    assert get(harness, BLOB_PATH) == (200, "MISS", BLOB)
    store = harness.storage()
    path = store.path(BLOB_DIGEST)
    flip_a_byte(path)
    damage = check_file(path, Stored(BLOB_DIGEST, len(BLOB), ()))
    assert damage is not None
    fresh = path.with_name("fresh")
    fresh.write_bytes(BLOB)
    fresh.replace(path)
    result_of(store.drop_damaged(damage))
    assert path.read_bytes() == BLOB
    assert warnings(log_events) == []
    assert get(harness, BLOB_PATH) == (200, "HIT", BLOB)
