"""The real Docker engine pulling through the mirror, configured as the README tells users.

Debian's dockerd, its own containerd, the token-auth registry upstream and the mirror run
in a private network namespace with only loopback (tests/support/docker.py), so Docker's
fallback to the real Docker Hub can never leave the machine: a pull that the mirror did
not serve fails.  None of these tests is skipped; a missing peer fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
import time
from collections.abc import Iterator

import pytest

from tests.conftest import BIG_LAYER
from tests.support.docker import Docker, running_docker
from tests.support.images import Image, Manifest


@pytest.fixture(scope="module")
def docker(images: dict[str, Image]) -> Iterator[Docker]:
    yield from running_docker(images)


@pytest.fixture(autouse=True)
def no_images(docker: Docker) -> Iterator[None]:
    """Every test starts with an empty image store, so every pull downloads its layers."""
    docker.remove_all_images()
    yield
    docker.remove_all_images()


def platform_manifest(image: Image, tag: str, architecture: str) -> Manifest:
    """The manifest a pull of ``tag`` on ``architecture`` ends at (a list's child, or itself)."""
    top = image.tags[tag]
    document = json.loads(top.body)
    if "manifests" not in document:
        return top
    for entry in document["manifests"]:
        if entry["platform"]["architecture"] == architecture:
            return next(m for m in image.manifests if m.digest == entry["digest"])
    raise AssertionError(f"{image.name}:{tag} has no {architecture} image")


def assert_pulled(docker: Docker, reference: str, repository: str, image: Image, tag: str) -> None:
    """``reference`` is in Docker's store with the upstream's digests: manifest, config, layers."""
    architecture = docker("version", "--format", "{{.Server.Arch}}").stdout.strip()
    manifest = platform_manifest(image, tag, architecture)
    config_digest = json.loads(manifest.body)["config"]["digest"]
    config = next(b for b in image.blobs if b.digest == config_digest)
    details = docker.inspect(reference)
    assert details["Id"] == config_digest
    assert details["RepoDigests"] == [f"{repository}@{image.tags[tag].digest}"]
    assert details["Architecture"] == architecture
    diff_ids = json.loads(config.path.read_bytes())["rootfs"]["diff_ids"]
    assert details["RootFS"] == {"Type": "layers", "Layers": diff_ids}


def mirror_log(docker: Docker, since: int) -> str:
    return docker.mirror.peer.output()[since:]


def test_pull_through_registry_mirrors(docker: Docker) -> None:
    """``docker pull alpine`` asks the mirror for library/alpine, and gets the upstream's image."""
    image = docker.upstream.images["schema2"]
    mark = len(docker.mirror.peer.output())
    docker("pull", "alpine:latest")
    assert_pulled(docker, "alpine:latest", "alpine", image, "latest")
    log = mirror_log(docker, mark)
    manifest = image.tags["latest"]
    assert f"/v2/library/alpine/manifests/{manifest.digest} -> 200" in log, log
    for blob in image.blobs:
        assert f"GET /v2/library/alpine/blobs/{blob.digest} -> 200 complete" in log, log


@pytest.mark.parametrize("label", ["manifest-list", "oci-index"])
def test_pull_of_a_multi_platform_image(docker: Docker, label: str) -> None:
    """A Docker manifest list and an OCI image index: Docker picks its platform's image."""
    image = docker.upstream.images[label]
    short = image.name.removeprefix("library/")
    mark = len(docker.mirror.peer.output())
    docker("pull", f"{short}:latest")
    assert_pulled(docker, f"{short}:latest", short, image, "latest")
    log = mirror_log(docker, mark)
    assert f"/v2/{image.name}/manifests/latest -> 200" in log, log


def test_pull_by_the_mirror_s_own_name(docker: Docker) -> None:
    """``docker pull HOST:PORT/library/alpine:3.20``: the mirror as an insecure registry."""
    image = docker.upstream.images["schema2"]
    repository = f"{docker.mirror.address}/library/alpine"
    mark = len(docker.mirror.peer.output())
    docker("pull", f"{repository}:3.20")
    assert_pulled(docker, f"{repository}:3.20", repository, image, "3.20")
    assert "/v2/library/alpine/manifests/3.20 -> 200" in mirror_log(docker, mark)


def test_private_image_with_the_mirror_s_credentials(docker: Docker) -> None:
    """private.test is the upstream with the mirror's credentials; Docker itself has none."""
    image = docker.upstream.images["private"]
    repository = f"{docker.mirror.address}/private.test/private/secret"
    tokens = len(docker.upstream.token_log.read_text().splitlines())
    docker("pull", f"{repository}:latest")
    assert_pulled(docker, f"{repository}:latest", repository, image, "latest")
    requests = [json.loads(line) for line in docker.upstream.token_log.read_text().splitlines()]
    assert {"scope": ["repository:private/secret:pull"], "basic": True} in requests[tokens:]

    # Through registry-mirrors the docker.io route is anonymous: the upstream refuses, Docker
    # falls back to Docker Hub, and that fails on loopback (no network, resolver on 127.0.0.1).
    mark = len(docker.mirror.peer.output())
    result = docker("pull", "private/secret:latest", check=False)
    assert result.returncode != 0
    assert "registry-1.docker.io" in result.stderr, result.stderr
    assert "127.0.0.1:53" in result.stderr, result.stderr
    assert "/v2/private/secret/manifests/latest -> 403" in mirror_log(docker, mark)


def saved_content(docker: Docker, reference: str) -> tuple[dict[str, bytes], list[str]]:
    """``docker save``: its files other than layers, and the sha256 of each layer in order."""
    files: dict[str, bytes] = {}
    layers: dict[str, str] = {}
    with docker.save(reference) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isfile() else None
            if data is None:
                continue
            if member.name.endswith("layer.tar"):
                hasher = hashlib.sha256()
                while chunk := data.read(1 << 20):
                    hasher.update(chunk)
                layers[member.name] = "sha256:" + hasher.hexdigest()
            else:
                files[member.name] = data.read()
    [entry] = json.loads(files["manifest.json"])
    return files, [layers[name] for name in entry["Layers"]]


def test_big_layer_cold_then_warm(docker: Docker) -> None:
    """The 256 MiB layer: digests and ``docker save`` content are the upstream's, cold and warm."""
    image = docker.upstream.images["big"]
    layer = max(image.blobs, key=lambda b: b.size)
    assert layer.size > BIG_LAYER
    config = next(b for b in image.blobs if b is not layer)
    blob_path = f"GET /v2/library/big/blobs/{layer.digest} -> 200 complete"

    times = []
    for attempt in ("cold", "warm"):
        docker.remove_all_images()
        mark, upstream_mark = len(docker.mirror.peer.output()), docker.upstream.log_mark()
        started = time.monotonic()
        docker("pull", "big:latest")
        times.append(time.monotonic() - started)
        assert_pulled(docker, "big:latest", "big", image, "latest")
        log = mirror_log(docker, mark)
        line = next((x for x in log.splitlines() if blob_path in x), "")
        assert f" cache={'MISS' if attempt == 'cold' else 'HIT'} " in line, log
        blobs_upstream = [r for r in docker.upstream.requests(upstream_mark) if "/blobs/" in r[1]]
        assert bool(blobs_upstream) == (attempt == "cold"), blobs_upstream
    print(f"256 MiB image, docker pull via the mirror: cold {times[0]:.2f}s, warm {times[1]:.2f}s")

    files, layer_digests = saved_content(docker, "big:latest")
    assert files[f"{config.digest.removeprefix('sha256:')}.json"] == config.path.read_bytes()
    assert layer_digests == [layer.diff_id]


def test_a_pulled_image_pulls_again_with_the_upstream_stopped(docker: Docker) -> None:
    """The issue's headline: Docker resolves a tag with HEAD and GETs by digest; from its
    first pull on, the tag and the image come from the cache, whatever the upstream does."""
    image = docker.upstream.images["manifest-list"]
    short = image.name.removeprefix("library/")
    docker("pull", f"{short}:latest")
    docker.remove_all_images()
    upstream = [docker.upstream.registry.process, docker.upstream.tokens.process]
    for process in upstream:
        os.kill(process.pid, signal.SIGSTOP)  # a hung upstream: no answer, ever
    try:
        mark = len(docker.mirror.peer.output())
        docker("pull", f"{short}:latest")
    finally:
        for process in upstream:
            os.kill(process.pid, signal.SIGCONT)
    assert_pulled(docker, f"{short}:latest", short, image, "latest")
    log = mirror_log(docker, mark)
    assert "cache=HIT" in log and "cache=MISS" not in log, log
