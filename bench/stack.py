"""The servers of ``bench/compare.py``, all on loopback: the upstream registry seeded with
generated images, distribution in proxy mode (the peer) and dockermirror under twistd.

Each is one of three targets a measurement runs against: ``direct`` (the upstream
itself, with a Bearer token for every request), ``peer`` and ``dockermirror``
(anonymous clients, as a mirror's clients are).  A target is warm (one long-lived
instance, filled before the first measurement) or fresh (a new process on an
empty storage directory, for one cold measurement).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from tests.support.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    single_image,
)
from tests.support.peers import Upstream, start_upstream
from tests.support.processes import Peer, free_port
from tests.support.tokens import sign_token

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
DIRECT, PEER, MIRROR = "direct", "peer", "dockermirror"
TARGETS = (DIRECT, PEER, MIRROR)
# Every manifest type, as Docker and containerd ask for them.
ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
# distribution's access log (combined log format): the request line, the status, the body size.
_ACCESS = re.compile(rb'"[A-Z]+ \S+ HTTP/[\d.]+" \d{3} (\d+) "')


@attrs.frozen
class Corpus:
    """The generated images: one big single-layer image and many small ones."""

    big: Image
    small: tuple[Image, ...]

    @property
    def images(self) -> dict[str, Image]:
        return {image.name: image for image in (self.big, *self.small)}

    @property
    def big_layer(self) -> Blob:
        return layer_of(self.big)


def layer_of(image: Image) -> Blob:
    """The image's one layer (its largest blob; the other is the config)."""
    return max(image.blobs, key=lambda b: b.size)


def build_corpus(directory: Path, big_size: int, small_size: int, small_count: int) -> Corpus:
    """``library/big`` with a ``big_size`` layer and ``library/small00``... with ``small_size``.

    Layers hold random bytes (incompressible) in a tar, gzip'd at level 0.
    """
    directory.mkdir(parents=True, exist_ok=True)

    def image(name: str, size: int) -> Image:
        label = name.rpartition("/")[2]
        blobs, manifest = single_image(directory, label, {"data/random.bin": (size, os.urandom)})
        return Image(name, blobs, [manifest], {"latest": manifest})

    small = tuple(image(f"library/small{i:02d}", small_size) for i in range(small_count))
    return Corpus(image("library/big", big_size), small)


class UpstreamLog:
    """What the upstream registry sent, from its access log: response body bytes per request.

    The registry writes one line per request once its handler has written the whole
    body (or the client left), with the bytes written; the log is read from a byte
    offset so that a long run never re-reads it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def body_bytes(self, since: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(since)
            data = f.read()
        return sum(int(match[1]) for match in _ACCESS.finditer(data))

    def settle(self, quiet: float = 0.3, timeout: float = 30.0) -> None:
        """Until the log has not grown for ``quiet`` seconds: every finished request logged."""
        deadline = time.monotonic() + timeout
        size, since = self.mark(), time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                raise RuntimeError("the upstream's access log kept growing")
            time.sleep(0.05)
            if (now := self.mark()) != size:
                size, since = now, time.monotonic()


@attrs.frozen
class Target:
    """A server to measure: its base URL, the headers its clients send, the process to watch."""

    name: str
    url: str
    headers: tuple[str, ...]
    pid: int
    storage: Path | None = None

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def blob_url(self, repository: str, blob: Blob) -> str:
        return f"{self.url}/v2/{repository}/blobs/{blob.digest}"

    def header_dict(self) -> dict[str, str]:
        return dict(h.split(": ", 1) for h in self.headers)


def _head_cache_status(url: str) -> str:
    request = urllib.request.Request(url, method="HEAD", headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(response.headers.get("X-Dockermirror-Cache", ""))
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"


def is_stored(target: Target, repository: str, digest: str, *, manifest: bool = False) -> bool:
    """Whether the peer or the mirror has the blob (or manifest) in its cache for good.

    The peer: its storage has the repository's link to the blob, written once its
    background copy committed.  The mirror: a HEAD answers ``HIT``.  The upstream
    always has it.
    """
    if target.name == DIRECT:
        return True
    if target.name == PEER:
        assert target.storage is not None
        kind = "_manifests/revisions" if manifest else "_layers"
        algorithm, _, hexdigest = digest.partition(":")
        link = (
            target.storage
            / f"docker/registry/v2/repositories/{repository}/{kind}/{algorithm}/{hexdigest}/link"
        )
        return link.exists()
    kind = "manifests" if manifest else "blobs"
    return _head_cache_status(f"{target.url}/v2/{repository}/{kind}/{digest}") == "HIT"


def wait_stored(
    target: Target, items: list[tuple[str, str]], *, manifest: bool = False, timeout: float = 300
) -> None:
    """Until every (repository, digest) of ``items`` is stored by ``target``."""
    deadline = time.monotonic() + timeout
    for repository, digest in items:
        while not is_stored(target, repository, digest, manifest=manifest):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not store {repository}@{digest}")
            time.sleep(0.05)


@attrs.define
class Servers:
    """The upstream, and the peer and mirror processes started against it."""

    root: Path
    upstream: Upstream
    corpus: Corpus
    twistd: str
    registry_bin: str
    workers: int
    log: UpstreamLog
    token: str
    _started: list[Peer] = attrs.Factory(list)
    warm: dict[str, Target] = attrs.Factory(dict)

    @classmethod
    def start(
        cls, root: Path, corpus: Corpus, *, twistd: str, registry_bin: str, workers: int
    ) -> Servers:
        upstream = start_upstream(root / "upstream", registry_bin, corpus.images)
        # One token for every repository, good for the whole run.
        access = [
            {"type": "repository", "name": name, "actions": ["pull"]} for name in corpus.images
        ]
        token = sign_token(upstream.key, upstream.cert, access, ttl=24 * 3600)
        servers = cls(
            root,
            upstream,
            corpus,
            twistd,
            registry_bin,
            workers,
            UpstreamLog(upstream.registry.log),
            token,
        )
        try:
            servers.warm = {name: servers._launch(name, "warm") for name in TARGETS}
        except BaseException:
            servers.close()
            raise
        return servers

    @property
    def direct(self) -> Target:
        return Target(
            DIRECT,
            self.upstream.url,
            (f"Authorization: Bearer {self.token}",),
            self.upstream.registry.process.pid,
        )

    def _launch(self, name: str, label: str) -> Target:
        if name == DIRECT:
            return self.direct
        storage = self.root / f"{name}-{label}-{time.monotonic_ns()}"
        start = self._start_peer if name == PEER else self._start_mirror
        peer, url = start(storage)
        self._started.append(peer)
        return Target(name, url, (), peer.process.pid, storage)

    def _start_peer(self, storage: Path) -> tuple[Peer, str]:
        """distribution as a pull-through cache: its shipped defaults, plus ``proxy:``."""
        port = free_port()
        config = self.root / f"peer-{port}.yml"
        config.write_text(
            f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: dockermirror-bench
proxy:
  remoteurl: {self.upstream.url}
"""
        )
        peer = Peer(
            "peer",
            [self.registry_bin, "serve", str(config)],
            ("127.0.0.1", port),
            self.root / f"peer-{port}.log",
        )
        return peer, f"http://127.0.0.1:{port}"

    def _start_mirror(self, storage: Path) -> tuple[Peer, str]:
        """``twistd -n dockermirror`` on its defaults, Docker Hub's route sent to the upstream."""
        port = free_port()
        config = self.root / f"dockermirror-{port}.toml"
        config.write_text(
            f'[server]\nports = ["tcp:{port}:interface=127.0.0.1"]\n\n'
            f'[registries."docker.io"]\nurl = "{self.upstream.url}"\n'
        )
        args = [self.twistd, "-n", "--pidfile=", "dockermirror", "--config", str(config)]
        args += ["--cache-dir", str(storage)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        peer = Peer(
            "dockermirror",
            args,
            ("127.0.0.1", port),
            self.root / f"dockermirror-{port}.log",
            # The checkout's code; its token key in the run's directory, not ~/.local/state.
            env={"PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(self.root / f"state-{port}")},
        )
        return peer, f"http://127.0.0.1:{port}"

    @contextmanager
    def fresh(self, name: str) -> Iterator[Target]:
        """A new peer or mirror on an empty cache, stopped and removed afterwards (the
        upstream for ``direct``)."""
        if name == DIRECT:
            yield self.direct
            return
        target = self._launch(name, "cold")
        peer = self._started.pop()  # stopped here, not by close()
        try:
            yield target
        finally:
            peer.stop()
            if target.storage is not None:
                shutil.rmtree(target.storage, ignore_errors=True)
            # What it wrote goes to disk now, not during the next target's measurement.
            os.sync()

    def tracebacks(self) -> list[str]:
        """The tracebacks in every mirror's log, each from its line before."""
        found = []
        for log in sorted(self.root.glob("dockermirror-*.log")):
            text = log.read_text(errors="replace")
            start = text.find("Traceback")
            while start >= 0:
                found.append(text[text.rfind("\n", 0, max(0, start - 1)) + 1 :][:3000])
                start = text.find("Traceback", start + 1)
        return found

    def close(self) -> None:
        for peer in self._started:
            peer.stop()
        self.upstream.stop()
