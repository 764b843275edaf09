"""Fixtures: logged errors fail tests, and the real peers of the interop tests.

The interop peers (the CNCF distribution registry with token auth, a token
server, a CDN-style redirecting front, and the mirror itself under twistd) are
separate processes started once per session on free loopback ports.  They are
processes rather than objects on the test reactor because the tests drive
skopeo, podman and containerd synchronously.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from tests.support.clients import client_env, require
from tests.support.docker import start_containerd
from tests.support.images import Image, build_images
from tests.support.peers import (
    CDN_HOST,
    Front,
    Mirror,
    Upstream,
    assert_clean_log,
    start_front,
    start_mirror,
    start_upstream,
)

HERE = Path(__file__).parent
BIG_LAYER = 256 * 1024 * 1024


@pytest.fixture(scope="session", autouse=True)
def state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Mirrors built in the test process keep their token key here, not in ~/.local/state."""
    previous = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        del os.environ["STATE_DIRECTORY"]
    else:
        os.environ["STATE_DIRECTORY"] = previous


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


@pytest.fixture
def log_events() -> Iterator[list[dict[str, object]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, object]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


@pytest.fixture(scope="module")
def containerd() -> Iterator[str]:
    """A private containerd (CRI off) for a module's tests; yields its socket path."""
    # Unix socket paths are limited to 108 bytes: keep the state directory short.
    root = Path(tempfile.mkdtemp(prefix="ctd"))
    peer, socket_path = start_containerd(root)
    yield socket_path
    peer.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture(scope="session")
def containers_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Isolate skopeo and podman from the machine's /etc/containers."""
    return client_env(tmp_path_factory.mktemp("containers"))


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    """The suite's images, built once (a 256 MiB layer among them)."""
    return build_images(tmp_path_factory.mktemp("images"), BIG_LAYER)


@pytest.fixture(scope="session")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, Image]
) -> Iterator[Upstream]:
    """The real distribution registry, token auth on, seeded with the suite's images."""
    result = start_upstream(
        tmp_path_factory.mktemp("upstream"), require("docker-registry"), images
    )
    yield result
    result.stop()


@pytest.fixture(scope="session")
def front(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """A registry front that answers blob GETs with 307 to a CDN on another loopback host."""
    result = start_front(tmp_path_factory.mktemp("front"), upstream)
    yield result
    result.peer.stop()


@pytest.fixture
def new_mirror(tmp_path: Path) -> Iterator[Callable[..., Mirror]]:
    """Start mirrors of their own on demand; all are stopped and their logs checked afterwards."""
    started: list[Mirror] = []

    def start(config: str, cache: Path | None = None) -> Mirror:
        mirror = start_mirror(tmp_path, require("twistd"), config, cache)
        started.append(mirror)
        return mirror

    yield start
    for mirror in started:
        mirror.stop()
        assert_clean_log(mirror)


@pytest.fixture(scope="session")
def mirror(
    upstream: Upstream, front: Front, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mirror]:
    """``twistd -n dockermirror`` with docker.io pointed at the test registry."""
    root = tmp_path_factory.mktemp("mirror")
    # A registry that accepts connections (the kernel's backlog does) and never answers.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    secret = root / "password"
    secret.write_text("s3cret\n")
    config = f"""[routes]
"*" = "docker.io"
"localhost" = "cdn.test"

[registries."docker.io"]
url = "{upstream.url}"

[registries."cdn.test"]
url = "{front.url}"
# Its "CDN" is on another loopback address, which only an operator may allow.
trusted_networks = ["{CDN_HOST}/32"]

[registries."private.test"]
url = "{upstream.url}"
username = "mirror"
password_file = "{secret}"
# The tests reach it by prefix; an operator's credentials need this said out loud.
by_prefix = true

[registries."blackhole.test"]
url = "http://127.0.0.1:{blackhole.getsockname()[1]}"

[upstream]
idle_timeout = 30
response_timeout = 3
"""
    result = start_mirror(root, require("twistd"), config)
    yield result
    result.stop()
    blackhole.close()
    assert_clean_log(result)
