"""``--workers 2`` with real peers: two processes on one port and one cache directory.

The kernel spreads connections over both (SO_REUSEPORT); twenty clients of one
uncached 256 MiB layer, whichever worker they reach, cause one upstream
download (the other worker follows the first one's file); a worker that dies is
started again; stopping the mirror stops every worker.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import fetch, require
from tests.support.peers import Mirror, Upstream, assert_clean_log, registry_config, start_mirror
from tests.support.processes import wait_for
from tests.test_cache_interop import big_layer, leftovers, read_at_once, stored


@pytest.fixture
def two_workers(upstream: Upstream, tmp_path: Path) -> Iterator[Mirror]:
    config = registry_config("docker.io", upstream.url)
    mirror = start_mirror(tmp_path, require("twistd"), config, server="workers = 2")
    yield mirror
    mirror.stop()
    assert_clean_log(mirror)


def worker_pids(mirror: Mirror) -> list[int]:
    """The pids of the workers worker 0 started, in the order it (re)started them."""
    found = re.findall(r"started worker 1 \(pid (\d+)\)", mirror.peer.output())
    return [int(pid) for pid in found]


def served_by(mirror: Mirror, path: str) -> set[int]:
    return {
        int(pid)
        for line in mirror.peer.output().splitlines()
        if f"GET {path} -> 200" in line
        for pid in re.findall(r"pid=(\d+)", line)
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_port_and_one_upstream_download(
    upstream: Upstream, two_workers: Mirror
) -> None:
    mirror = two_workers
    # Worker 1 listens too once its log says so; requests before that go to worker 0.
    wait_for(lambda: mirror.peer.output().count(f"listening on tcp:{mirror.port}") == 2)
    digest, size = big_layer(upstream)
    path = f"/v2/library/big/blobs/{digest}"
    mark = upstream.log_mark()
    assert read_at_once(mirror.url + path, 20) == [digest] * 20
    # Both workers served, and the layer came from the upstream once.
    assert served_by(mirror, path) == {mirror.peer.process.pid, *worker_pids(mirror)}
    downloads = [r for r in upstream.requests(mark) if r[:2] == ("GET", path) and r[2] == 200]
    assert downloads == [("GET", path, 200)]
    assert stored(mirror)[digest] == size
    wait_for(lambda: leftovers(mirror) == [] and not list((mirror.cache / "claims").iterdir()))


def test_a_worker_that_dies_is_started_again_and_stops_with_the_mirror(
    two_workers: Mirror,
) -> None:
    mirror = two_workers
    wait_for(lambda: len(worker_pids(mirror)) == 1)
    first = worker_pids(mirror)[0]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(mirror)) == 2, seconds=30)
    second = worker_pids(mirror)[1]
    assert second != first and alive(second)
    wait_for(lambda: fetch(mirror.url + "/v2/")[0] == 200)
    mirror.stop()
    deadline = time.monotonic() + 15
    while alive(second) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(second)
    assert "worker 1 (pid" in mirror.peer.output() and "starting it again" in mirror.peer.output()
