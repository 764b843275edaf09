"""The mirror while another process holds its cache index locked: latency and reactor stalls.

Starts the real distribution registry (token auth) and the mirror under twistd on
loopback, as the tests do, and warms the cache with one pull of library/alpine.
Then, for N seconds, one client polls GET /v2/ and another polls GET of a cached
blob (the whole body, sha256-checked), each continuously on a kept-alive
connection, and 1 s in a third fetches an image the cache does not have yet (its
manifest list, then a layer), so that the mirror has index writes to make.  This
runs twice: once as a baseline, once while another process holds
``BEGIN EXCLUSIVE`` on ``index.sqlite``.  The index's writes wait up to 5 s
(SQLite's busy timeout) for that lock; a mirror whose reactor waited with them
would show it as a 5 s latency and a 5 s gap between /v2/ answers.

Reported per run: the largest and the 99th-percentile latency of /v2/ and of the
cached blob, the largest gap between consecutive /v2/ answers (the reactor-stall
probe), and how long the uncached GETs took.

Usage: python3 bench/index_lock.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.clients import client_env, copy
from tests.support.images import Blob, Image, build_images
from tests.support.peers import Mirror, Upstream, registry_config, start_mirror, start_upstream
from tests.support.probes import (
    Poller,
    Sample,
    check_base,
    check_blob,
    cold_pull,
    indexed,
    largest_gap,
    layer_of,
    percentile,
)

MIB = 1024 * 1024
# Holds the lock from a process of its own: argv is the index and the seconds to hold it.
LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
print("released", flush=True)
"""
COLD_AFTER = 1.0


@attrs.frozen
class Run:
    label: str
    seconds: float
    base: list[Sample]
    blob: list[Sample]
    gap: float
    cold: list[float]


def wait_indexed(mirror: Mirror, digests: set[str], seconds: float = 60) -> None:
    """Until the index has rows for ``digests`` (written in the background after a pull)."""
    deadline = time.monotonic() + seconds
    while not digests <= indexed(mirror)[0]:
        if time.monotonic() > deadline:
            raise RuntimeError("the index did not get the warm pull's rows")
        time.sleep(0.05)


def measure(
    label: str, mirror: Mirror, cached: Blob, cold: Image, seconds: float, lock: bool
) -> Run:
    base = Poller(mirror, "/v2/", check_base)
    blob = Poller(mirror, f"/v2/library/alpine/blobs/{cached.digest}", check_blob(cached))
    base.start()
    blob.start()
    time.sleep(0.5)  # both connections open and polling before the window starts
    locker: subprocess.Popen[str] | None = None
    if lock:
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(mirror.cache / "index.sqlite"), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None
        if locker.stdout.readline().strip() != "locked":
            raise RuntimeError("the locker did not take the lock")
    start = time.monotonic()
    cold_times: list[float] = []

    def pull_cold() -> None:
        time.sleep(COLD_AFTER)
        cold_times.extend(cold_pull(mirror, cold))

    cold_puller = threading.Thread(target=pull_cold, daemon=True)
    cold_puller.start()
    if locker is not None:
        assert locker.stdout is not None
        if locker.stdout.readline().strip() != "released":
            raise RuntimeError("the locker did not release the lock")
        locker.wait(10)
    else:
        time.sleep(seconds)
    end = time.monotonic()
    cold_puller.join(60)
    base.finish()
    blob.finish()
    if len(cold_times) != 2:
        raise RuntimeError("the uncached pull failed")
    answered = base.within(start, end)
    return Run(
        label,
        end - start,
        answered,
        blob.within(start, end),
        largest_gap(answered, start),
        cold_times,
    )


def report(runs: list[Run]) -> None:
    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("window", lambda r: f"{r.seconds:.1f} s"),
        ("/v2/ answers", lambda r: str(len(r.base))),
        ("/v2/ p99 latency", lambda r: ms(percentile([s.latency for s in r.base], 0.99))),
        ("/v2/ max latency", lambda r: ms(max(s.latency for s in r.base))),
        ("cached blob answers", lambda r: str(len(r.blob))),
        ("cached blob p99 latency", lambda r: ms(percentile([s.latency for s in r.blob], 0.99))),
        ("cached blob max latency", lambda r: ms(max(s.latency for s in r.blob))),
        ("largest gap between /v2/ answers", lambda r: ms(r.gap)),
        ("uncached manifest list GET", lambda r: ms(r.cold[0])),
        ("uncached layer GET", lambda r: ms(r.cold[1])),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}" + "".join(f"{r.label:>16}" for r in runs))
    for name, cell in rows:
        print(f"{name:{width}}" + "".join(f"{cell(r):>16}" for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="how long the lock is held (default 10)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dm-bench-lock-"))
    (root / "images").mkdir()
    upstream: Upstream | None = None
    mirror: Mirror | None = None
    try:
        # The big image is not pulled here: 1 MiB keeps building it quick.
        images = build_images(root / "images", MIB)
        upstream = start_upstream(root / "upstream", "/usr/bin/docker-registry", images)
        twistd = shutil.which("twistd") or "twistd"
        mirror = start_mirror(root, twistd, registry_config("docker.io", upstream.url))
        alpine = images["schema2"]
        copy(client_env(root), f"docker://{mirror.address}/library/alpine:latest", root / "warm")
        wait_indexed(mirror, {b.digest for b in alpine.blobs} | {alpine.tags["latest"].digest})
        cached = layer_of(alpine)
        failures = mirror.peer.output().count("a write was dropped")
        runs = [
            measure("no lock", mirror, cached, images["manifest-list"], args.seconds, False),
            measure("index locked", mirror, cached, images["oci-index"], args.seconds, True),
        ]
        failures = mirror.peer.output().count("a write was dropped") - failures
        print(
            f"one client each on /v2/ and on a cached {cached.size}-byte blob, polling"
            f" continuously; the lock held {args.seconds:g} s by another process"
        )
        report(runs)
        print(f"index writes that gave up on the lock (the mirror logged each): {failures}")
        log = mirror.peer.output()
        if "Traceback" in log:
            print("the mirror logged a traceback:\n" + log[log.index("Traceback") :][:3000])
    finally:
        if mirror is not None:
            mirror.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
