"""Fixtures: logged errors fail tests, and the real peers of the interop tests.

The interop peers (the CNCF distribution registry with token auth, a token
server, a CDN-style redirecting front, and the mirror itself under twistd) are
separate processes started once per session on free loopback ports.  They are
processes rather than objects on the test reactor because the tests drive
skopeo, podman and containerd synchronously.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import attrs
import pytest
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from tests.support.peers import Upstream, start_upstream
from tests.support.processes import Peer, free_port

HERE = Path(__file__).parent
BIG_LAYER = 256 * 1024 * 1024
CDN_HOST = "127.0.0.2"


@pytest.fixture
def observe_errors() -> Iterator[list[object]]:
    """Fail the test if anything logs an error or critical event."""
    errors: list[object] = []

    def observer(event: dict[str, object]) -> None:
        level = event.get("log_level")
        if level in (LogLevel.error, LogLevel.critical):
            errors.append(event)

    # A plain callable is what Twisted's publisher calls; the cast is for the interface check.
    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    yield errors
    globalLogPublisher.removeObserver(cast(ILogObserver, observer))
    assert errors == [], errors


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        # A missing peer is a failure, never a skip: .ci/run installs them all.
        pytest.fail(f"{tool} is not installed; run .ci/run, which installs the test peers")
    return path


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The real distribution registry, token auth on, seeded with the suite's images."""
    registry_bin = _require("docker-registry")
    root = tmp_path_factory.mktemp("upstream")
    result = start_upstream(root, registry_bin, tmp_path_factory.mktemp("images"), BIG_LAYER)
    yield result
    result.stop()


@attrs.frozen
class Front:
    url: str
    port: int


@pytest.fixture(scope="session")
def front(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """A registry front that answers blob GETs with 307 to a CDN on another loopback host."""
    root = tmp_path_factory.mktemp("front")
    port, cdn_port = free_port(), free_port(CDN_HOST)
    registry_port = upstream.url.rpartition(":")[2]
    peer = Peer(
        "redirecting front",
        [
            sys.executable,
            str(HERE / "support" / "fronts.py"),
            str(port),
            CDN_HOST,
            str(cdn_port),
            registry_port,
            str(upstream.storage),
        ],
        ("127.0.0.1", port),
        root / "front.log",
    )
    yield Front(f"http://127.0.0.1:{port}", port)
    peer.stop()


@attrs.frozen
class Mirror:
    port: int
    peer: Peer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@pytest.fixture(scope="session")
def mirror(
    upstream: Upstream, front: Front, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mirror]:
    """``twistd -n dockermirror`` with docker.io pointed at the test registry."""
    root = tmp_path_factory.mktemp("mirror")
    port = free_port()
    # A registry that accepts connections (the kernel's backlog does) and never answers.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    secret = root / "password"
    secret.write_text("s3cret\n")
    config = root / "dockermirror.toml"
    config.write_text(
        f"""[server]
ports = ["tcp:{port}:interface=127.0.0.1"]

[routes]
"*" = "docker.io"
"localhost" = "cdn.test"

[registries."docker.io"]
url = "{upstream.url}"

[registries."cdn.test"]
url = "{front.url}"

[registries."private.test"]
url = "{upstream.url}"
username = "mirror"
password_file = "{secret}"

[registries."blackhole.test"]
url = "http://127.0.0.1:{blackhole.getsockname()[1]}"

[upstream]
idle_timeout = 30
response_timeout = 3

[cache]
dir = "{root / "cache"}"
"""
    )
    twistd = _require("twistd")
    peer = Peer(
        "mirror",
        [twistd, "-n", "--pidfile=", "dockermirror", "--config", str(config)],
        ("127.0.0.1", port),
        root / "mirror.log",
        env={"PYTHONPATH": str(HERE.parent)},
    )
    yield Mirror(port, peer)
    peer.stop()
    blackhole.close()
    log = peer.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
