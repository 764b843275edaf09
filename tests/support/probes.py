"""Probing a running mirror from outside: clients that poll and time every answer, index reads.

Shared by the index-lock test and its benchmark: both watch how long the mirror
takes to answer while something (another process's lock) gets in its way.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from itertools import pairwise

import attrs

from tests.support.images import DOCKER_LIST, OCI_INDEX, Blob, Image
from tests.support.peers import Mirror

Check = Callable[[int, http.client.HTTPMessage, bytes], None]


@attrs.define
class Sample:
    started: float
    ended: float

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Poller(threading.Thread):
    """GETs one path over and over on a kept-alive connection until stopped; checks each answer."""

    def __init__(self, mirror: Mirror, path: str, check: Check) -> None:
        super().__init__(daemon=True)
        self.mirror = mirror
        self.path = path
        self.check = check
        self.stopping = threading.Event()
        self.samples: list[Sample] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.mirror.port, timeout=60)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                connection.request("GET", self.path)
                response = connection.getresponse()
                body = response.read()
                ended = time.monotonic()
                self.check(response.status, response.headers, body)
                self.samples.append(Sample(started, ended))
        except BaseException as e:  # re-raised by finish(), in the main thread
            self.error = e
        finally:
            connection.close()

    def finish(self) -> None:
        self.stopping.set()
        self.join(60)
        assert not self.is_alive(), f"GET {self.path} still waits"
        if self.error is not None:
            raise AssertionError(f"GET {self.path} failed") from self.error

    def within(self, start: float, end: float) -> list[Sample]:
        """The requests sent from ``start`` to ``end``, however long they took to answer."""
        return [s for s in self.samples if start <= s.started < end]


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def largest_gap(samples: list[Sample], start: float) -> float:
    """The longest time without an answer, from ``start`` on."""
    return max(b - a for a, b in pairwise([start, *sorted(s.ended for s in samples)]))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_base(status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
    assert (status, body) == (200, b"{}"), (status, body[:200])
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


def check_blob(blob: Blob) -> Check:
    """Checks a cached blob's answer: whole, right, and from the cache."""

    def check(status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        assert status == 200 and sha256(body) == blob.digest, (status, len(body))
        assert headers["X-Dockermirror-Cache"] == "HIT"

    return check


def layer_of(image: Image) -> Blob:
    return next(b for b in image.blobs if b.path.name.endswith(".layer"))


def cold_pull(mirror: Mirror, image: Image) -> list[float]:
    """GET an uncached image's manifest list and one of its layers, check both; their times."""
    name, layer, top = image.name, layer_of(image), image.tags["latest"]
    gets = [
        (f"/v2/{name}/manifests/latest", {"Accept": f"{DOCKER_LIST}, {OCI_INDEX}"}, top.digest),
        (f"/v2/{name}/blobs/{layer.digest}", {}, layer.digest),
    ]
    times = []
    for path, headers, digest in gets:
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=60)
        try:
            started = time.monotonic()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            times.append(time.monotonic() - started)
        finally:
            connection.close()
        assert (response.status, sha256(body)) == (200, digest), path
    return times


def indexed(mirror: Mirror) -> tuple[set[str], dict[tuple[str, str], str]]:
    """The mirror's index, read-only: its blob digests, and (repository, tag) to digest."""
    path = mirror.cache / "index.sqlite"
    if not path.exists():
        return set(), {}
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1)) as db:
        try:
            blobs = {digest for (digest,) in db.execute("SELECT digest FROM blobs")}
            rows = db.execute("SELECT repository, tag, digest FROM tags")
            return blobs, {(repository, tag): digest for repository, tag, digest in rows}
        except sqlite3.OperationalError:  # the schema is not there yet
            return set(), {}
