"""TLS end to end: the mirror on an ``ssl:`` port with a certificate from a private CA.

skopeo verifies the mirror's certificate against the CA given with
``--src-cert-dir`` (as an operator's clients would have it in
``/etc/containers/certs.d``), and refuses the mirror without it.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import require, same_tree, skopeo
from tests.support.peers import Mirror, Upstream, registry_config, start_mirror
from tests.support.pki import make_pki


@pytest.fixture(scope="module")
def tls_mirror(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[tuple[Mirror, Path]]:
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root / "pki", ["127.0.0.1"])
    endpoint = f"ssl:{{port}}:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.cert}"
    mirror = start_mirror(
        root, require("twistd"), registry_config("docker.io", upstream.url), endpoint=endpoint
    )
    yield mirror, pki.ca
    mirror.stop()


def test_skopeo_pulls_over_verified_tls(
    tls_mirror: tuple[Mirror, Path],
    upstream: Upstream,
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    mirror, ca = tls_mirror
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(ca.read_bytes())
    registry = upstream.url.removeprefix("http://")
    skopeo(
        containers_env,
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry}/library/alpine:latest",
        f"dir:{tmp_path / 'direct'}",
    )
    skopeo(
        containers_env,
        "copy",
        f"--src-cert-dir={certs}",
        f"docker://{mirror.address}/library/alpine:latest",
        f"dir:{tmp_path / 'tls'}",
    )
    same_tree(tmp_path / "direct", tmp_path / "tls")
    # Without the CA, the certificate is not trusted: TLS is really verified.
    refused = skopeo(
        containers_env,
        "inspect",
        f"docker://{mirror.address}/library/alpine:latest",
        check=False,
    )
    assert refused.returncode != 0
    assert "certificate" in refused.stderr


def test_the_challenge_names_the_https_realm(tls_mirror: tuple[Mirror, Path]) -> None:
    mirror, ca = tls_mirror
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(
        f"https://{mirror.address}/v2/library/alpine/manifests/latest",
        headers={"Authorization": "Bearer forged"},
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, context=context, timeout=30)
    assert error.value.code == 401
    assert error.value.headers["WWW-Authenticate"].startswith(
        f'Bearer realm="https://{mirror.address}/v2/auth"'
    )
