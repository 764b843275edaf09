"""TLS end to end: the mirror on an ``ssl:`` port with a certificate from a private CA.

skopeo verifies the mirror's certificate against the CA given with
``--src-cert-dir`` (as an operator's clients would have it in
``/etc/containers/certs.d``), and refuses the mirror without it.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.clients import require, same_tree, skopeo
from tests.support.peers import Mirror, Upstream, registry_config, start_mirror


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("dockermirror test CA"))
        .issuer_name(_name("dockermirror test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_mirror(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[tuple[Mirror, Path]]:
    root = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(root / "pki")
    endpoint = f"ssl:{{port}}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    mirror = start_mirror(
        root, require("twistd"), registry_config("docker.io", upstream.url), endpoint=endpoint
    )
    yield mirror, ca
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
