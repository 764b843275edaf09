"""The cache's figures: cold vs warm pulls, upstream requests per warm pull, a stampede of
clients on one uncached layer, and how fast the index of 100,000 blobs loads.

Starts the real distribution registry (token auth) and the mirror under twistd on
loopback, as the tests do.  Usage: python bench/cache.py [--size-mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.task import Clock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.index import Index
from dockermirror.storage.interface import Scope
from dockermirror.storage.workers import InlineWorker
from tests.support.clients import client_env, copy
from tests.support.images import build_images
from tests.support.peers import Front, Mirror, Upstream, start_front, start_mirror, start_upstream

MIB = 1024 * 1024


def skopeo_copy(env: dict[str, str], source: str, target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    copy(env, f"docker://{source}/library/big:latest", target)
    return time.perf_counter() - started


def stampede(url: str, clients: int) -> float:
    """Seconds until the last of ``clients`` concurrent curl processes has the whole blob.

    curl, not Python threads: on two cores, a client that hashes under the GIL
    measures itself.  The tests check the bytes; this measures time.
    """
    started = time.perf_counter()
    processes = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", url]) for _ in range(clients)]
    assert all(p.wait() == 0 for p in processes)
    return time.perf_counter() - started


def index_load(blobs: int) -> float:
    """Seconds for FilesystemStorage.open() over an index (and files) of ``blobs`` blobs."""
    root = Path(tempfile.mkdtemp(prefix="dm-index-"))

    def storage() -> FilesystemStorage:
        return FilesystemStorage(
            root, Clock(), 10**15, 0, lookups=InlineWorker(), writes=InlineWorker()
        )

    try:
        index = Index(root / "index.sqlite", writer=True)
        index.connect()
        first = storage()
        for i in range(blobs):
            digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
            path = first.path(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            index.add_blob(digest, 1, Scope("u", "r"), None, float(i))
        index.close()
        again = storage()
        started = time.perf_counter()
        again.open()
        elapsed = time.perf_counter() - started
        assert again.is_open and again.total == blobs
        again.close()
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dm-bench-cache-"))
    (root / "images").mkdir()
    upstream: Upstream | None = None
    mirrors: list[Mirror] = []
    fronts: list[Front] = []
    try:
        images = build_images(root / "images", args.size_mib * MIB)
        upstream = start_upstream(root / "upstream", "/usr/bin/docker-registry", images)
        twistd = shutil.which("twistd") or "twistd"
        config = f'[registries."docker.io"]\nurl = "{upstream.url}"\n'
        env = client_env(root)

        print(f"image: library/big, one {args.size_mib} MiB layer; median of {args.runs} runs")
        layer = max(images["big"].blobs, key=lambda b: b.size)
        slow = start_front(root, upstream, "slow")
        fronts.append(slow)
        routes = {
            "loopback upstream": (config, "docker.io"),
            "64 MB/s upstream (a WAN link)": (
                f'[registries."slow.test"]\nurl = "{slow.url}"\n',
                "slow.test",
            ),
        }
        for label, (route_config, prefix) in routes.items():
            colds, warms, upstream_requests = [], [], []
            for run in range(args.runs):
                mirror = start_mirror(
                    root, twistd, route_config, cache=root / f"pull-{label}-{run}"
                )
                mirrors.append(mirror)
                source = f"{mirror.address}/{prefix}"
                colds.append(skopeo_copy(env, source, root / "copy"))
                mark, front_mark = upstream.log_mark(), len(slow.peer.output())
                warms.append(skopeo_copy(env, source, root / "copy"))
                front_requests = slow.peer.output()[front_mark:].count('HTTP/1.1"')
                upstream_requests.append(len(upstream.requests(mark)) + front_requests)
            cold, warm = statistics.median(colds), statistics.median(warms)
            print(
                f"{label}: skopeo copy {cold:.2f} s cold, {warm:.2f} s warm ({cold / warm:.1f}x);"
                f" upstream requests per warm pull: {max(upstream_requests)}"
            )

        for label, (route_config, prefix) in routes.items():
            path = f"/v2/{prefix}/library/big/blobs/{layer.digest}"
            timings: dict[str, list[float]] = {"single": [], "cold": [], "warm": []}
            downloads = []
            for run in range(args.runs):
                single = start_mirror(
                    root, twistd, route_config, cache=root / f"single-{label}-{run}"
                )
                mirrors.append(single)
                timings["single"].append(stampede(single.url + path, 1))
                crowd = start_mirror(
                    root, twistd, route_config, cache=root / f"crowd-{label}-{run}"
                )
                mirrors.append(crowd)
                mark = upstream.log_mark()
                timings["cold"].append(stampede(crowd.url + path, args.clients))
                downloads.append(
                    sum(1 for r in upstream.requests(mark) if r[2] == 200 and "/blobs/" in r[1])
                )
                timings["warm"].append(stampede(crowd.url + path, args.clients))
            one, cold, warm = (statistics.median(timings[k]) for k in ("single", "cold", "warm"))
            crowd_size = args.clients
            print(f"{label}: uncached layer to 1 client {one:.2f} s;")
            print(
                f"  to {crowd_size} at once {cold:.2f} s for the last ({cold / one:.2f}x),", end=""
            )
            print(f" {warm:.2f} s once cached")
            if prefix == "docker.io":  # the registry serves these blobs itself, and logs them
                print(f"  upstream downloads of the layer per stampede: {max(downloads)}")
        print(f"index of 100,000 blobs opens in {index_load(100_000):.2f} s")
    finally:
        for mirror in mirrors:
            mirror.stop()
        for front in fronts:
            front.peer.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
