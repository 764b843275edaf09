"""Pass-through throughput and memory of the mirror, against pulling from the registry directly.

Starts the real distribution registry (token auth) with the test suite's images,
and the mirror under twistd, all on loopback, then measures:

- a raw HTTP GET of the big layer (read in 1 MiB chunks and sha256-checked),
  directly and through the mirror;
- ``skopeo copy`` of the big image to ``dir:``, directly and through the mirror;
- the mirror's resident memory while a client stalls mid-layer, and its peak.

Usage: python bench/passthrough.py [--size-mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.clients import client_env, copy
from tests.support.images import build_images
from tests.support.peers import start_mirror, start_upstream

MIB = 1024 * 1024


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def timed(runs: int, action: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def read_blob(url: str, headers: dict[str, str], digest: str) -> None:
    hasher = hashlib.sha256()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
        while chunk := response.read(MIB):
            hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == digest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dm-bench-"))
    (root / "images").mkdir()
    images = build_images(root / "images", args.size_mib * MIB)
    upstream = start_upstream(root, "/usr/bin/docker-registry", images)
    # Pass-through is what this measures: the cache has its own benchmark.
    config = f'[registries."docker.io"]\nurl = "{upstream.url}"\n\n[cache]\nenabled = false\n'
    mirror = start_mirror(root, shutil.which("twistd") or "twistd", config)
    port = mirror.port
    try:
        big = upstream.images["big"]
        layer = max(big.blobs, key=lambda b: b.size)
        size_mb = layer.size / 1e6
        token = {"Authorization": "Bearer " + upstream.token("library/big")}
        path = f"/v2/library/big/blobs/{layer.digest}"
        print(f"layer: {layer.size / MIB:.1f} MiB, {args.runs} runs each, median")

        direct = timed(args.runs, lambda: read_blob(upstream.url + path, token, layer.digest))
        mirrored = timed(
            args.runs, lambda: read_blob(f"http://127.0.0.1:{port}{path}", {}, layer.digest)
        )
        print(f"raw GET   direct  {direct:6.2f} s  {size_mb / direct:7.1f} MB/s")
        print(f"raw GET   mirror  {mirrored:6.2f} s  {size_mb / mirrored:7.1f} MB/s")

        env = client_env(root)

        def skopeo(source: str) -> Callable[[], None]:
            def run() -> None:
                shutil.rmtree(root / "copy", ignore_errors=True)
                copy(env, f"docker://{source}/library/big:latest", root / "copy")

            return run

        direct = timed(args.runs, skopeo(upstream.url.removeprefix("http://")))
        mirrored = timed(args.runs, skopeo(f"127.0.0.1:{port}"))
        print(f"skopeo    direct  {direct:6.2f} s  {size_mb / direct:7.1f} MB/s")
        print(f"skopeo    mirror  {mirrored:6.2f} s  {size_mb / mirrored:7.1f} MB/s")

        pid = mirror.peer.process.pid
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as response:
            response.read(MIB)
            time.sleep(5)  # the client stalls; backpressure must pause the upstream
            stalled = rss_kib(pid, "VmRSS")
            while response.read(MIB):
                pass
        print(f"mirror RSS during a 5 s client stall mid-layer: {stalled / 1024:.1f} MiB")
        print(
            f"mirror peak RSS (VmHWM) over the whole run: {rss_kib(pid, 'VmHWM') / 1024:.1f} MiB"
        )
    finally:
        mirror.stop()
        upstream.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
