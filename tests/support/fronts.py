"""A registry front that sends blob downloads to a "CDN" on a second loopback host.

This is how Docker Hub behaves: blob GETs answer 307 to a signed CDN URL, and
the CDN (like S3) rejects requests that carry the registry's Authorization.
Everything else is passed to the real registry.  Both log each request to stderr.  Usage:

    python fronts.py FRONT_PORT CDN_HOST CDN_PORT REGISTRY_PORT STORAGE_DIR [MODE]

MODE "corrupt" makes the CDN flip one byte in the middle of every blob, and
"slow" makes it send at 64 MB/s.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

TAGS = re.compile(r"^/v2/(.+)/tags/list$")
BLOB = re.compile(r"^/v2/(.+)/blobs/(sha256):([a-f0-9]{64})$")
FORWARDED = ("Authorization", "Accept", "Range")


def main() -> None:
    front_port, cdn_host, cdn_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    registry_port, storage = int(sys.argv[4]), Path(sys.argv[5])
    mode = sys.argv[6] if len(sys.argv) > 6 else "normal"

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            match = BLOB.match(self.path.split("?")[0])
            if match:
                self.send_response(307)
                self.send_header(
                    "Location", f"http://{cdn_host}:{cdn_port}/blobs/{match[3]}?sig=a%2Bb%3D"
                )
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            upstream = http.client.HTTPConnection("127.0.0.1", registry_port, timeout=30)
            headers = {
                h: ", ".join(self.headers.get_all(h) or []) for h in FORWARDED if self.headers[h]
            }
            path, _, query = self.path.partition("?")
            paginate = TAGS.match(path) and parse_qs(query)
            upstream.request(self.command, path if paginate else self.path, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status)
            if paginate and response.status == 200:
                self._paginate(path, paginate, json.loads(response.read()))
                return
            for name, value in response.getheaders():
                if name.lower() not in (
                    "connection",
                    "transfer-encoding",
                    "keep-alive",
                    "content-length",
                ):
                    self.send_header(name, value)
            body = response.read()
            length = (
                response.getheader("Content-Length", "0") if self.command == "HEAD" else len(body)
            )
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)
            upstream.close()

        do_HEAD = do_GET

        def _paginate(
            self, path: str, query: dict[str, list[str]], document: dict[str, object]
        ) -> None:
            """Paginate tags as Docker Hub and distribution 3 do (Debian's 2.8 does not)."""
            n, last = int(query.get("n", ["100"])[0]), query.get("last", [""])[0]
            tags = sorted(t for t in document["tags"] if t > last)  # type: ignore[attr-defined]
            body = json.dumps({"name": document["name"], "tags": tags[:n]}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if len(tags) > n:
                self.send_header("Link", f'<{path}?last={tags[n - 1]}&n={n}>; rel="next"')
            self.end_headers()
            self.wfile.write(body)

    class Cdn(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if self.headers.get("Authorization") or query != "sig=a%2Bb%3D":
                self._fail(400, b"<Error><Code>InvalidArgument</Code></Error>")
                return
            hexdigest = path.rpartition("/")[2]
            data = storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
            if not data.exists():
                self._fail(404, b"<Error><Code>NoSuchKey</Code></Error>")
                return
            size = data.stat().st_size
            start, end, status = 0, size - 1, 200
            match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
            if match:
                start = int(match[1])
                end = min(int(match[2]) if match[2] else size - 1, size - 1)
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with open(data, "rb") as f:
                f.seek(start)
                position, middle = start, size // 2
                while position <= end:
                    chunk = f.read(min(end + 1 - position, 1 << 20))
                    if mode == "corrupt" and position <= middle < position + len(chunk):
                        flipped = chunk[middle - position] ^ 0xFF
                        chunk = (
                            chunk[: middle - position]
                            + bytes([flipped])
                            + chunk[middle - position + 1 :]
                        )
                    self.wfile.write(chunk)
                    position += len(chunk)
                    if mode == "slow":
                        time.sleep(len(chunk) / 64e6)

        do_HEAD = do_GET

        def _fail(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    cdn = ThreadingHTTPServer((cdn_host, cdn_port), Cdn)
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", front_port), Front).serve_forever()


if __name__ == "__main__":
    main()
