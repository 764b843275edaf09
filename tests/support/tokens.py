"""Signing registry tokens the way distribution's ``auth: token`` expects them.

The registry trusts a self-signed certificate (its ``rootcertbundle``); tokens
are RS256 JWTs carrying that certificate in ``x5c``.
"""

from __future__ import annotations

import base64
import datetime
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISSUER = "test-issuer"
SERVICE = "test-registry"


def make_pki(directory: Path) -> tuple[Path, Path]:
    """A fresh key and self-signed certificate; returns (key path, cert path)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockermirror test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "token.key", directory / "token.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class Signer:
    """Signs tokens with a key and certificate loaded once (a token server signs many)."""

    def __init__(self, key_path: Path, cert_path: Path) -> None:
        # Parsed once: loading (and checking) an RSA key costs tens of milliseconds.
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._key = key
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def sign(self, access: Sequence[Mapping[str, object]], ttl: int = 300) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "test",
            "aud": SERVICE,
            "exp": now + ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [self._x5c]})


def sign_token(
    key_path: Path, cert_path: Path, access: Sequence[Mapping[str, object]], ttl: int = 300
) -> str:
    return Signer(key_path, cert_path).sign(access, ttl)
