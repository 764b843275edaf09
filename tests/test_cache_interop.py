"""The cache against real peers: the distribution registry (requests counted in its access log),
skopeo as the client, and mirrors that are stopped, killed and restarted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import IMAGES, copy, fetch, require, same_tree
from tests.support.images import Image
from tests.support.peers import Mirror, Upstream, registry_config, start_front, start_upstream
from tests.support.processes import wait_for

SMALL = ("schema2", "manifest-list", "oci-index")


def stored(mirror: Mirror) -> dict[str, int]:
    """Digest to size of every blob file in the mirror's cache."""
    files = (mirror.cache / "blobs").rglob("*")
    return {f"{p.parent.parent.name}:{p.name}": p.stat().st_size for p in files if p.is_file()}


def leftovers(mirror: Mirror) -> list[Path]:
    tmp = mirror.cache / "tmp"
    return list(tmp.iterdir()) if tmp.is_dir() else []  # (made as the cache opens)


def big_layer(upstream: Upstream) -> tuple[str, int]:
    layer = max(upstream.images["big"].blobs, key=lambda b: b.size)
    return layer.digest, layer.size


def read_verified(url: str) -> str:
    hasher = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as response:
        while chunk := response.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def read_at_once(url: str, clients: int) -> list[str]:
    """The digests ``clients`` clients read from ``url``, all asking at once."""
    results: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(read_verified(url))
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=pull) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    return results


@pytest.mark.parametrize("label", sorted(IMAGES))
def test_second_pull_makes_no_upstream_request(
    label: str,
    upstream: Upstream,
    new_mirror: Callable[..., Mirror],
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    mirror = new_mirror(registry_config("docker.io", upstream.url))
    reference, extra = IMAGES[label]
    copy(containers_env, f"docker://{mirror.address}/{reference}", tmp_path / "cold", *extra)
    mark = upstream.log_mark()
    copy(containers_env, f"docker://{mirror.address}/{reference}", tmp_path / "warm", *extra)
    # Within the tag TTL a warm pull asks the upstream nothing at all.
    assert upstream.requests(mark) == []
    copy(containers_env, f"docker://{upstream.address}/{reference}", tmp_path / "direct", *extra)
    same_tree(tmp_path / "direct", tmp_path / "warm")


def test_pulls_keep_working_with_the_upstream_down(
    images: dict[str, Image],
    new_mirror: Callable[..., Mirror],
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    own = start_upstream(
        tmp_path / "own", require("docker-registry"), {k: images[k] for k in SMALL}
    )
    # A short TTL: with the upstream gone, tags are revalidated, fail, and are served stale.
    mirror = new_mirror(registry_config("docker.io", own.url, "[cache]\ntag_ttl = 1\n"))
    try:
        for label in SMALL:
            reference, extra = IMAGES[label]
            copy(
                containers_env, f"docker://{mirror.address}/{reference}", tmp_path / label, *extra
            )
    finally:
        own.stop()
    time.sleep(1.5)
    for label in SMALL:
        reference, extra = IMAGES[label]
        name = reference.partition(":")[0]
        digest = (
            "sha256:"
            + hashlib.sha256((tmp_path / label / "manifest.json").read_bytes()).hexdigest()
        )
        copy(
            containers_env,
            f"docker://{mirror.address}/{reference}",
            tmp_path / f"{label}-tag",
            *extra,
        )
        copy(
            containers_env,
            f"docker://{mirror.address}/{name}@{digest}",
            tmp_path / f"{label}-digest",
            *extra,
        )
        same_tree(tmp_path / label, tmp_path / f"{label}-tag")
        same_tree(tmp_path / label, tmp_path / f"{label}-digest")
    assert "cache=STALE" in mirror.peer.output()


def test_concurrent_clients_share_one_upstream_download(
    upstream: Upstream, new_mirror: Callable[..., Mirror]
) -> None:
    mirror = new_mirror(registry_config("docker.io", upstream.url))
    digest, size = big_layer(upstream)
    path = f"/v2/library/big/blobs/{digest}"
    mark = upstream.log_mark()
    assert read_at_once(mirror.url + path, 20) == [digest] * 20
    # The first GET may meet a 401 and come again with a token: one download is one 200.
    downloads = [r for r in upstream.requests(mark) if r[:2] == ("GET", path) and r[2] == 200]
    assert downloads == [("GET", path, 200)]
    assert stored(mirror)[digest] == size
    assert leftovers(mirror) == []


def test_fill_goes_on_when_the_client_leaves(
    upstream: Upstream, new_mirror: Callable[..., Mirror]
) -> None:
    mirror = new_mirror(registry_config("docker.io", upstream.url))
    digest, size = big_layer(upstream)
    path = f"/v2/library/big/blobs/{digest}"
    with urllib.request.urlopen(mirror.url + path, timeout=60) as response:
        response.read(1 << 20)
    wait_for(lambda: stored(mirror).get(digest) == size)
    status, headers, _ = fetch(mirror.url + path, "HEAD")
    assert (status, headers["x-dockermirror-cache"]) == (200, "HIT")


def test_corrupt_upstream_never_reaches_the_cache(
    upstream: Upstream,
    new_mirror: Callable[..., Mirror],
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    front = start_front(tmp_path, upstream, "corrupt")
    try:
        mirror = new_mirror(registry_config("corrupt.test", front.url, via_cdn=True))
        for attempt in range(2):  # the second finds nothing cached, and fails again
            assert copy_fails(containers_env, mirror, tmp_path / f"try{attempt}")
    finally:
        front.peer.stop()
    layers = {b.digest for b in upstream.images["schema2"].blobs}
    assert not layers & set(stored(mirror)), "a blob with flipped bytes was stored"
    assert leftovers(mirror) == []


def copy_fails(env: dict[str, str], mirror: Mirror, destination: Path) -> bool:
    try:
        copy(env, f"docker://{mirror.address}/corrupt.test/library/alpine:latest", destination)
    except AssertionError:
        return True
    return False


def test_sigkill_during_a_fill_leaves_nothing_behind(
    upstream: Upstream, new_mirror: Callable[..., Mirror], tmp_path: Path
) -> None:
    front = start_front(tmp_path, upstream, "slow")  # 64 MB/s: the fill takes seconds
    try:
        config = registry_config("slow.test", front.url, via_cdn=True)
        first = new_mirror(config)
        digest, size = big_layer(upstream)
        path = f"/v2/slow.test/library/big/blobs/{digest}"
        cut_short: list[BaseException] = []

        def read() -> None:
            try:
                fetch(first.url + path)
            except http.client.IncompleteRead as e:
                cut_short.append(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: any(p.stat().st_size > 1 << 20 for p in leftovers(first)))
        os.kill(first.peer.process.pid, signal.SIGKILL)
        first.peer.process.wait(10)
        reader.join(10)
        assert cut_short, "the client of the killed mirror must see an incomplete body"
        assert leftovers(first) and digest not in stored(first)
        second = new_mirror(config, cache=first.cache)
        # Cleared as the cache opens, which may finish just after the port listens.
        wait_for(lambda: leftovers(second) == [])
        assert read_verified(second.url + path) == digest
        # The index row is written in the background, just after the client has its bytes.
        wait_for(lambda: digest in stored(second))
        assert stored(second)[digest] == size
        assert leftovers(second) == []
    finally:
        front.peer.stop()


def test_max_size_is_respected(
    upstream: Upstream,
    new_mirror: Callable[..., Mirror],
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    limit = 3000
    mirror = new_mirror(
        registry_config("docker.io", upstream.url, f"[cache]\nmax_size = {limit}\nmin_free = 1\n")
    )
    for label in SMALL:
        reference, extra = IMAGES[label]
        copy(containers_env, f"docker://{mirror.address}/{reference}", tmp_path / label, *extra)
    wait_for(lambda: sum(stored(mirror).values()) <= limit, 10)
    assert "cache eviction: removed" in mirror.peer.output()
