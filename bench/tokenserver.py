"""The token server of the benchmark's upstream, for distribution's ``auth: token``.

Anyone may pull anything.  Unlike the test suite's token server, it loads the
signing key once (loading it costs about 37 ms, signing about 0.3 ms), keeps
connections alive and sends without Nagle's delay: distribution's proxy asks for
a token on every request it passes upstream, so a slow token server would make
the peer look slower than it is.

Usage: python3 bench/tokenserver.py PORT KEY CERT
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.tokens import ISSUER, SERVICE

TTL = 300


def main() -> None:
    port, key_path, cert_path = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    key: rsa.RSAPrivateKey = loaded
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            access = []
            for scope in parse_qs(urlsplit(self.path).query).get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository":
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            claims = {
                "iss": ISSUER,
                "sub": "bench",
                "aud": SERVICE,
                "exp": now + TTL,
                "nbf": now - 10,
                "iat": now,
                "jti": secrets.token_hex(8),
                "access": access,
            }
            token = jwt.encode(claims, key, algorithm="RS256", headers={"x5c": [x5c]})
            body = json.dumps({"token": token, "access_token": token, "expires_in": TTL}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
