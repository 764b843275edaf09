"""A tiny token server for distribution's ``auth: token``, run as its own process.

Anyone may pull; repositories under ``private/`` need Basic credentials
``mirror:s3cret``.  Every request is appended to a log file so tests can count
token requests.  Usage: python tokenserver.py PORT KEY CERT LOGFILE
"""

from __future__ import annotations

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.tokens import Signer

CREDENTIALS = ("mirror", "s3cret")


def main() -> None:
    port, key, cert, logfile = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    signer = Signer(key, cert)

    class Handler(BaseHTTPRequestHandler):
        # Kept alive, as real token servers are: a peer that asks for a token per request
        # is measured, not this server.
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            authorized = (
                self.headers.get("Authorization")
                == "Basic " + base64.b64encode(":".join(CREDENTIALS).encode()).decode()
            )
            if self.headers.get("Authorization", "").startswith("Basic ") and not authorized:
                self._answer(401, {"details": "bad credentials"})
                return
            access = []
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or (name.startswith("private/") and not authorized):
                    continue
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            with open(logfile, "a") as f:
                f.write(json.dumps({"scope": query.get("scope", []), "basic": authorized}) + "\n")
            token = signer.sign(access)
            self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
