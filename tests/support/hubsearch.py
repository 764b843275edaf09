"""A stand-in for Docker Hub's search API (``/v1/search``), for ``docker search`` tests.

Run as ``python3 tests/support/hubsearch.py PORT``: it answers every search with
the repositories below whose name contains the query, in Hub's JSON shape, and
prints each request line it gets (its log is the record of what reached it).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REPOSITORIES = [
    {"name": "alpine", "description": "A minimal image", "star_count": 10000, "is_official": True},
    {"name": "someone/alpine-tools", "description": "Tools", "star_count": 12},
    {"name": "blocked/alpine", "description": "Not for this mirror", "star_count": 3},
]


def answer(query: str, page_size: int) -> dict[str, object]:
    results = [
        {"is_automated": False, "is_official": False, **repository}
        for repository in REPOSITORIES
        if query in str(repository["name"])
    ][:page_size]
    return {
        "num_pages": 1,
        "num_results": len(results),
        "page_size": page_size,
        "page": 1,
        "query": query,
        "results": results,
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path != "/v1/search":
            self.send_error(404)
            return
        body = json.dumps(answer(query.get("q", [""])[0], int(query.get("n", ["25"])[0]))).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(self.requestline, flush=True)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
