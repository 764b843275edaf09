"""The Docker engine pulling from the mirror over verified TLS.

The mirror listens on an ``ssl:`` endpoint with a certificate signed by a private CA;
dockerd trusts that CA through ``/etc/docker/certs.d/HOST:PORT/ca.crt``.  dockerd runs
in the private network and mount namespaces of tests/support/docker.py: the
``/etc/docker`` it sees is the test's own directory, so the CA is written there
(``Docker.certs_d``) and the machine's ``/etc/docker`` is never touched.

dockerd counts every registry in 127.0.0.0/8 as insecure, always (its built-in
``insecure-registries`` entry, which no option removes): it talks TLS to
``127.0.0.1:PORT`` without verifying anything.  So the namespace's loopback gets one
more address, 192.0.2.1 (TEST-NET-1, RFC 5737), the mirror's certificate names it, and
Docker reaches the mirror there; ``test_loopback_is_never_verified`` shows why.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import require
from tests.support.docker import Docker, running_docker
from tests.support.images import Image
from tests.support.peers import Mirror
from tests.support.pki import Pki, make_pki
from tests.test_docker_interop import assert_pulled, mirror_log

# Outside 127.0.0.0/8, so that dockerd verifies the mirror's certificate.
TLS_HOST = "192.0.2.1"
UNKNOWN_AUTHORITY = "x509: certificate signed by unknown authority"


def add_tls_host() -> None:
    """In the namespace: TLS_HOST on its loopback (the namespace is still loopback only)."""
    command = [require("ip"), "address", "add", f"{TLS_HOST}/32", "dev", "lo"]
    subprocess.run(command, check=True, timeout=30)


def tls_daemon_json(mirror: Mirror) -> dict[str, list[str]]:
    """An https mirror, and no insecure-registries."""
    return {"registry-mirrors": [f"https://{TLS_HOST}:{mirror.port}"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("docker-pki"), [TLS_HOST, "127.0.0.1"])


@pytest.fixture(scope="module")
def docker(images: dict[str, Image], pki: Pki) -> Iterator[Docker]:
    # Every address of the namespace (127.0.0.1, where readiness is checked, and TLS_HOST).
    endpoint = f"ssl:{{port}}:interface=0.0.0.0:privateKey={pki.key}:certKey={pki.cert}"
    yield from running_docker(
        {"schema2": images["schema2"]},
        endpoint=endpoint,
        daemon=tls_daemon_json,
        setup=add_tls_host,
    )


def tls_address(docker: Docker) -> str:
    return f"{TLS_HOST}:{docker.mirror.port}"


def trust(docker: Docker, ca: Path | None) -> None:
    """dockerd's certs.d for the mirror holds ``ca`` (or nothing); read at the next pull."""
    shutil.rmtree(docker.certs_d, ignore_errors=True)
    if ca is not None:
        directory = docker.certs_d / tls_address(docker)
        directory.mkdir(parents=True)
        (directory / "ca.crt").write_bytes(ca.read_bytes())


@pytest.fixture(autouse=True)
def clean(docker: Docker) -> Iterator[None]:
    """Every test starts with no image and no CA trusted."""
    trust(docker, None)
    docker.remove_all_images()
    yield
    docker.remove_all_images()
    trust(docker, None)


def test_pull_by_name_over_verified_tls(docker: Docker, pki: Pki) -> None:
    """``docker pull HOST:PORT/library/alpine``: the mirror's certificate checks out."""
    image = docker.upstream.images["schema2"]
    repository = f"{tls_address(docker)}/library/alpine"
    trust(docker, pki.ca)
    mark = len(docker.mirror.peer.output())
    docker("pull", f"{repository}:latest")
    assert_pulled(docker, f"{repository}:latest", repository, image, "latest")
    log = mirror_log(docker, mark)
    assert "/v2/library/alpine/manifests/latest -> 200" in log, log
    for blob in image.blobs:
        assert f"GET /v2/library/alpine/blobs/{blob.digest} -> 200 complete" in log, log


@pytest.mark.parametrize("ca", ["none", "other"])
def test_an_untrusted_certificate_is_refused(docker: Docker, pki: Pki, ca: str) -> None:
    """No CA in certs.d, or a CA that did not sign the mirror's certificate: no pull."""
    trust(docker, pki.other_ca if ca == "other" else None)
    mark = len(docker.mirror.peer.output())
    result = docker("pull", f"{tls_address(docker)}/library/alpine:latest", check=False)
    assert result.returncode != 0
    assert UNKNOWN_AUTHORITY in result.stderr, result.stderr
    assert "/v2/library/alpine/" not in mirror_log(docker, mark)
    assert docker("images", "--quiet").stdout.split() == []


def test_registry_mirrors_over_verified_tls(docker: Docker, pki: Pki) -> None:
    """``"registry-mirrors": ["https://HOST:PORT"]``: ``docker pull alpine`` through it."""
    image = docker.upstream.images["schema2"]
    trust(docker, pki.ca)
    mark = len(docker.mirror.peer.output())
    docker("pull", "alpine:latest")
    assert_pulled(docker, "alpine:latest", "alpine", image, "latest")
    log = mirror_log(docker, mark)
    assert f"/v2/library/alpine/manifests/{image.tags['latest'].digest} -> 200" in log, log
    for blob in image.blobs:
        assert f"GET /v2/library/alpine/blobs/{blob.digest} -> 200 complete" in log, log


def test_an_untrusted_registry_mirror_is_passed_over(docker: Docker, pki: Pki) -> None:
    """Without its CA the mirror fails verification; Docker falls back to Docker Hub,
    which is unreachable in the namespace, and the pull fails."""
    trust(docker, pki.other_ca)
    mark, daemon_mark = len(docker.mirror.peer.output()), len(docker.dockerd.output())
    result = docker("pull", "alpine:latest", check=False)
    assert result.returncode != 0
    assert "registry-1.docker.io" in result.stderr, result.stderr
    daemon_log = docker.dockerd.output()[daemon_mark:]
    assert f"https://{tls_address(docker)}/v2/" in daemon_log, daemon_log
    assert UNKNOWN_AUTHORITY in daemon_log, daemon_log
    assert "/v2/library/alpine/" not in mirror_log(docker, mark)


def test_loopback_is_never_verified(docker: Docker) -> None:
    """Why TLS_HOST: at 127.0.0.1 dockerd pulls over TLS with no CA at all (127.0.0.0/8
    is always an insecure registry to it), so a refusal there could never be shown."""
    repository = f"127.0.0.1:{docker.mirror.port}/library/alpine"
    docker("pull", f"{repository}:latest")
    image = docker.upstream.images["schema2"]
    assert_pulled(docker, f"{repository}:latest", repository, image, "latest")
