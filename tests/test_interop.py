"""Interop with real peers: the distribution registry upstream, skopeo, podman and containerd.

Every test here runs against real processes on loopback; none is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BIG_LAYER
from tests.support.clients import (
    IMAGES,
    copy,
    ctr_pull,
    fetch,
    mirror_registries_conf,
    require,
    same_tree,
    skopeo,
)
from tests.support.peers import Mirror, Upstream


@pytest.mark.parametrize("label", sorted(IMAGES))
def test_skopeo_copy_through_mirror_is_byte_identical(
    label: str, mirror: Mirror, upstream: Upstream, containers_env: dict[str, str], tmp_path: Path
) -> None:
    reference, extra = IMAGES[label]
    direct, mirrored = tmp_path / "direct", tmp_path / "mirrored"
    registry = upstream.url.removeprefix("http://")
    copy(containers_env, f"docker://{registry}/{reference}", direct, *extra)
    copy(containers_env, f"docker://{mirror.address}/{reference}", mirrored, *extra)
    same_tree(direct, mirrored)
    assert len(list(mirrored.iterdir())) >= 3


def oci_error(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


def test_skopeo_inspect_by_tag_and_by_digest(
    mirror: Mirror, upstream: Upstream, containers_env: dict[str, str]
) -> None:
    manifest = upstream.images["schema2"].tags["latest"]
    by_tag = skopeo(
        containers_env,
        "inspect",
        "--tls-verify=false",
        "--raw",
        f"docker://{mirror.address}/library/alpine:latest",
    )
    by_digest = skopeo(
        containers_env,
        "inspect",
        "--tls-verify=false",
        "--raw",
        f"docker://{mirror.address}/library/alpine@{manifest.digest}",
    )
    assert by_tag.stdout.encode() == by_digest.stdout.encode() == manifest.body
    details = json.loads(
        skopeo(
            containers_env,
            "inspect",
            "--tls-verify=false",
            f"docker://{mirror.address}/library/alpine:latest",
        ).stdout
    )
    assert details["Digest"] == manifest.digest
    assert sorted(details["RepoTags"]) == ["3.19", "3.20", "3.21", "edge", "latest"]


def test_official_image_short_name_reaches_library(mirror: Mirror, upstream: Upstream) -> None:
    manifest = upstream.images["schema2"].tags["latest"]
    status, headers, body = fetch(
        f"{mirror.url}/v2/alpine/manifests/latest", headers={"Accept": manifest.media_type}
    )
    assert (status, body) == (200, manifest.body)
    assert headers["docker-content-digest"] == manifest.digest
    assert headers["content-type"] == manifest.media_type


def test_blob_redirect_to_second_host_is_followed(
    mirror: Mirror,
    upstream: Upstream,
    front: object,
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The front answers blob GETs with 307 to 127.0.0.2, which refuses an Authorization header."""
    registry = upstream.url.removeprefix("http://")
    copy(containers_env, f"docker://{registry}/library/alpine:latest", tmp_path / "direct")
    # By host route (localhost -> cdn.test) and by path prefix (/v2/cdn.test/...).
    copy(
        containers_env,
        f"docker://localhost:{mirror.port}/library/alpine:latest",
        tmp_path / "host",
    )
    copy(
        containers_env,
        f"docker://{mirror.address}/cdn.test/library/alpine:latest",
        tmp_path / "prefix",
    )
    same_tree(tmp_path / "direct", tmp_path / "host")
    same_tree(tmp_path / "direct", tmp_path / "prefix")


@pytest.mark.parametrize("prefix", ["", "/cdn.test"])
def test_blob_range_and_head(mirror: Mirror, upstream: Upstream, prefix: str) -> None:
    blob = upstream.images["schema2"].blobs[0]
    url = f"{mirror.url}/v2{prefix}/library/alpine/blobs/{blob.digest}"
    status, headers, body = fetch(url, "HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) == blob.size
    status, headers, body = fetch(url, headers={"Range": "bytes=10-19"})
    assert status == 206
    assert headers["content-range"] == f"bytes 10-19/{blob.size}"
    assert body == blob.path.read_bytes()[10:20]
    status, headers, body = fetch(url)
    assert (status, body) == (200, blob.path.read_bytes())


def test_manifest_head_goes_upstream_as_head(mirror: Mirror, upstream: Upstream) -> None:
    manifest = upstream.images["oci-index"].tags["latest"]
    status, headers, body = fetch(
        f"{mirror.url}/v2/library/ociimage/manifests/latest",
        "HEAD",
        {"Accept": manifest.media_type},
    )
    assert (status, body) == (200, b"")
    assert headers["docker-content-digest"] == manifest.digest
    assert int(headers["content-length"]) == len(manifest.body)


def test_tags_pagination_links_point_at_the_mirror(mirror: Mirror) -> None:
    """The front paginates like Docker Hub; its Link must come back pointing at the mirror."""
    url, tags, pages = f"{mirror.url}/v2/cdn.test/library/alpine/tags/list?n=2", [], 0
    while url:
        status, headers, body = fetch(url)
        assert status == 200
        document = json.loads(body)
        assert document["name"] == "library/alpine"
        tags += document["tags"]
        pages += 1
        link = headers.get("link", "")
        assert not link or link.startswith("</v2/cdn.test/library/alpine/tags/list?"), link
        url = mirror.url + link[1 : link.index(">")] if link else ""
    assert pages == 3
    assert sorted(tags) == ["3.19", "3.20", "3.21", "edge", "latest"]


def test_push_is_refused(mirror: Mirror, containers_env: dict[str, str], tmp_path: Path) -> None:
    copy(containers_env, f"docker://{mirror.address}/library/alpine:latest", tmp_path / "image")
    result = skopeo(
        containers_env,
        "copy",
        "--dest-tls-verify=false",
        f"dir:{tmp_path / 'image'}",
        f"docker://{mirror.address}/library/pushed:latest",
        check=False,
    )
    assert result.returncode != 0
    status, _, body = fetch(f"{mirror.url}/v2/library/pushed/blobs/uploads/", "POST")
    assert (status, oci_error(body)) == (405, "UNSUPPORTED")
    status, _, body = fetch(f"{mirror.url}/v2/library/alpine/manifests/latest", "DELETE")
    assert (status, oci_error(body)) == (405, "UNSUPPORTED")


def test_configured_credentials_are_used_for_private_repositories(
    mirror: Mirror, upstream: Upstream
) -> None:
    manifest = upstream.images["private"].tags["latest"]
    accept = {"Accept": manifest.media_type}
    # The docker.io route is anonymous: the token server grants nothing, the registry refuses.
    status, _, body = fetch(f"{mirror.url}/v2/private/secret/manifests/latest", headers=accept)
    assert (status, oci_error(body)) == (403, "DENIED")
    # private.test has the mirror's credentials for the same registry.
    status, _, body = fetch(
        f"{mirror.url}/v2/private.test/private/secret/manifests/latest", headers=accept
    )
    assert (status, body) == (200, manifest.body)
    requests = [json.loads(line) for line in upstream.token_log.read_text().splitlines()]
    assert {"scope": ["repository:private/secret:pull"], "basic": True} in requests


def test_ns_parameter_selects_only_known_registries(mirror: Mirror, upstream: Upstream) -> None:
    manifest = upstream.images["schema2"].tags["latest"]
    accept = {"Accept": manifest.media_type}
    status, _, body = fetch(
        f"{mirror.url}/v2/library/alpine/manifests/latest?ns=cdn.test", headers=accept
    )
    assert (status, body) == (200, manifest.body)
    status, _, body = fetch(
        f"{mirror.url}/v2/library/alpine/manifests/latest?ns=evil.example", headers=accept
    )
    assert (status, oci_error(body)) == (403, "DENIED")


def test_unknown_manifest_and_blob(mirror: Mirror) -> None:
    status, _, body = fetch(f"{mirror.url}/v2/library/alpine/manifests/nope")
    assert (status, oci_error(body)) == (404, "MANIFEST_UNKNOWN")
    status, _, body = fetch(f"{mirror.url}/v2/library/alpine/blobs/sha256:{'0' * 64}")
    assert (status, oci_error(body)) == (404, "BLOB_UNKNOWN")


def test_big_layer_streams_in_bounded_memory(
    mirror: Mirror, containers_env: dict[str, str], tmp_path: Path
) -> None:
    started = time.monotonic()
    copy(containers_env, f"docker://{mirror.address}/library/big:latest", tmp_path / "big")
    elapsed = time.monotonic() - started
    assert max(p.stat().st_size for p in (tmp_path / "big").iterdir()) > BIG_LAYER
    peak = mirror.peer.rss_peak_kib()
    print(f"256 MiB image via the mirror in {elapsed:.2f}s; mirror peak RSS {peak / 1024:.1f} MiB")
    assert peak < 100 * 1024


def test_podman_pulls_through_registry_mirror(
    mirror: Mirror,
    upstream: Upstream,
    containers_env: dict[str, str],
    tmp_path: Path,
    closed_port: int,
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(mirror_registries_conf(mirror.address, closed_port))
    # podman refuses a runroot longer than 50 characters; pytest's tmp_path is longer.
    run = Path(tempfile.mkdtemp(prefix="podrun"))
    storage = ["--root", str(tmp_path / "root"), "--runroot", str(run)]
    command = [
        require("podman"),
        *storage,
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
        "pull",
        "--signature-policy",
        containers_env["POLICY"],
        "docker.io/library/alpine:latest",
    ]
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf), "TMPDIR": str(tmp_path)}
    before = len(mirror.peer.output())
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    manifest = upstream.images["schema2"].tags["latest"]
    config_digest = json.loads(manifest.body)["config"]["digest"].removeprefix("sha256:")
    assert result.stdout.strip() == config_digest
    assert "GET /v2/library/alpine/manifests/latest -> 200" in mirror.peer.output()[before:]


def test_containerd_pulls_through_hosts_toml(
    mirror: Mirror, upstream: Upstream, containerd: str, tmp_path: Path, closed_port: int
) -> None:
    """containerd adds ?ns=docker.io, resolves tags with HEAD and never asks /v2/."""
    hosts = tmp_path / "certs.d" / "docker.io"
    hosts.mkdir(parents=True)
    # The server is a dead loopback port, so a fallback can never leave the machine.
    (hosts / "hosts.toml").write_text(
        f"""server = "http://127.0.0.1:{closed_port}"

[host."http://{mirror.address}"]
  capabilities = ["pull", "resolve"]
"""
    )
    before = len(mirror.peer.output())
    result = ctr_pull(containerd, tmp_path / "certs.d", "docker.io/library/alpine:latest")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = upstream.images["schema2"].tags["latest"]
    listing = subprocess.run(
        [require("ctr"), "--address", containerd, "images", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert manifest.digest in listing
    log = mirror.peer.output()[before:]
    assert "HEAD /v2/library/alpine/manifests/latest -> 200" in log


def test_silent_upstream_gives_504_and_a_leaving_client_is_logged(mirror: Mirror) -> None:
    url = f"{mirror.url}/v2/blackhole.test/library/alpine/manifests/latest"
    before = len(mirror.peer.output())
    # A client that gives up first: the mirror drops the upstream wait, quietly.
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(url, timeout=1)
    started = time.monotonic()
    status, _, body = fetch(url)
    assert (status, oci_error(body)) == (504, "UNAVAILABLE")
    assert time.monotonic() - started < 10
    log = mirror.peer.output()[before:]
    assert "GET /v2/blackhole.test/library/alpine/manifests/latest -> 499 aborted" in log
    assert "Traceback" not in log


def test_client_leaving_mid_layer_stops_the_transfer(mirror: Mirror, upstream: Upstream) -> None:
    layer = max(upstream.images["big"].blobs, key=lambda b: b.size)
    path = f"/v2/library/big/blobs/{layer.digest}"
    before = len(mirror.peer.output())
    with urllib.request.urlopen(mirror.url + path, timeout=30) as response:
        assert len(response.read(1024 * 1024)) == 1024 * 1024
    deadline = time.monotonic() + 10
    while f"GET {path} -> 200 aborted" not in mirror.peer.output()[before:]:
        assert time.monotonic() < deadline, mirror.peer.output()[before:]
        time.sleep(0.1)
    # The mirror is unharmed and serves the next client.
    status, _, _ = fetch(mirror.url + "/v2/")
    assert status == 200
