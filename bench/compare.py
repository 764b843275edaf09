"""dockermirror side by side with distribution's proxy mode and with the upstream itself.

Run from a checkout (nothing is installed; it needs the Debian packages
``docker-registry``, ``skopeo``, ``wrk`` and ``curl``, and twistd with the
project's dependencies)::

    python3 bench/compare.py              # full size: a few minutes
    python3 bench/compare.py --quick      # tiny sizes, one run: seconds

It starts everything on loopback, in a temporary directory: the CNCF
distribution registry as the upstream (token auth, seeded with generated
images: ``library/big`` with one 256 MiB layer, ``library/small00`` to
``small49`` with 10 MiB layers each), distribution in proxy mode
(``proxy: remoteurl:``, its shipped defaults otherwise) as the peer, and
dockermirror as ``twistd -n dockermirror`` on its defaults (one process;
``--workers N`` is passed on when N > 1).  Each measurement runs against the
three targets in turn, the order rotating from one repetition to the next:
``direct`` (the upstream, every request with a Bearer token), ``peer`` and
``dockermirror`` (anonymous clients); for ``direct``, "cold" and "warm" are the
same thing.  The upstream and its token server are the test suite's
(tests/support), the token server fast enough (its key loaded once, connections
kept alive) not to hold back the peer, which asks it for a token on every
request it passes upstream.  The table shows medians of the runs
(peak RSS: the largest), with the ratios dockermirror/peer and
dockermirror/direct; whether higher or lower is better is in its own column.
It is printed, and written as Markdown and JSON to ``bench/results/`` with the
date, the machine, the versions and the load average.

The rows:

warm blob, 1 client
    MB/s (10^6 bytes) of one curl GET of the 256 MiB layer, already cached by the
    peer and the mirror (a long-lived instance of each, filled before the first
    measurement).
cold blob, 1 client
    The same on a fresh peer or mirror (new process, empty storage) per run.
upstream bytes per cold blob pull
    Response body bytes the upstream registry wrote during that cold pull and
    until the server under test was done with it (the peer copies the blob to
    its storage in the background: the run waits for the copy to commit), in
    multiples of the layer's size.  From the upstream's own access log (each
    request's line carries the body bytes it wrote), so it is exact and costs
    the servers nothing.  For ``direct`` it is the client's own download.
skopeo copy, cold / warm
    Seconds of ``skopeo copy docker://HOST/library/big:latest dir:...`` from a
    fresh peer or mirror (cold), or from the long-lived one (warm).  ``direct``
    is timed twice per run, once in each row.
20 cold clients, last done
    Seconds from releasing 20 curl processes on the same uncached layer at once
    until the last has the whole body, on a fresh peer or mirror per run.
20 cold clients vs 1
    That time divided by the time of one cold client (row "cold blob"), medians.
upstream bytes per 20-client cold pull
    As above, for the 20 clients together (1.0: one upstream read for all).
50 warm clients, 50 blobs
    Aggregate MB/s of 50 curl processes each pulling a different cached 10 MiB
    layer at once: all bytes over the time until the last finished.
manifest by tag / by digest: req/s, p50, p99
    ``wrk`` with 50 kept-alive connections for ``--seconds`` seconds on GET
    ``/v2/library/big/manifests/latest`` (by tag) or ``/manifests/sha256:...``,
    with an ``Accept`` of every manifest type, after a warming GET; requests a
    second and latency percentiles from wrk's own histogram.  Any non-2xx answer
    or socket error fails the run.  The peer asks its upstream for every tag (a
    token, then a HEAD); the mirror trusts a tag for ``tag_ttl``.
peak RSS during skopeo / 20 cold clients / 50 warm clients
    The kernel's record of the server process's peak resident memory (VmHWM,
    reset through ``/proc/PID/clear_refs`` before each measurement and read
    once it is done, including the peer's copy to its storage that goes on after
    its clients have their bytes; for ``direct``, the upstream registry; with
    workers, the largest single process), the largest over the runs.

Clients are released together: each curl is started first and waits for its
configuration on stdin, so that process creation is not timed.  Every client
must get a 200 and exactly the blob's size; the warming pulls check sha256.
After each fresh peer or mirror is stopped the disk is synced, so that its
writes are not flushed during the next target's measurement.

``--workers N`` (N > 1) is passed to ``twistd dockermirror``; ``--results DIR``
puts the tables elsewhere; the sizes, counts, runs and wrk's seconds can each
be set (``--help``).

``--profile DIR`` adds, after the measured runs of "cold blob" and "20 cold
clients", one unmeasured run of each against a fresh mirror under ``py-spy
record`` (collapsed stacks in DIR, and the hottest functions printed).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dockermirror
import twisted
from bench.measure import (
    WRK_SCRIPT,
    Skopeo,
    curl_together,
    hottest,
    peak_rss_mib,
    py_spy,
    reset_peak_rss,
    wrk,
)
from bench.stack import (
    ACCEPT,
    DIRECT,
    MIB,
    MIRROR,
    PEER,
    ROOT,
    TARGETS,
    Servers,
    build_corpus,
    layer_of,
    wait_stored,
)

RESULTS = Path(__file__).resolve().parent / "results"
# Debian packages that provide the tools, by command.
PACKAGES = {"docker-registry": "docker-registry", "skopeo": "skopeo", "wrk": "wrk", "curl": "curl"}


@attrs.frozen
class Settings:
    big_mib: int
    small_mib: int
    small_count: int
    clients: int
    connections: int
    runs: int
    seconds: int
    workers: int
    quick: bool
    profile: Path | None
    results: Path


@attrs.frozen
class Row:
    key: str
    label: str
    unit: str
    better: str
    digits: int
    worst: bool = False  # the largest of the runs instead of the median


ROWS = (
    Row("warm_blob", "warm blob, 1 client", "MB/s", "higher", 0),
    Row("cold_blob", "cold blob, 1 client", "MB/s", "higher", 0),
    Row("cold_upstream", "upstream bytes per cold blob pull", "x blob", "lower", 2),
    Row("skopeo_cold", "skopeo copy, cold", "s", "lower", 2),
    Row("skopeo_warm", "skopeo copy, warm", "s", "lower", 2),
    Row("crowd", "{clients} cold clients, last done", "s", "lower", 2),
    Row("crowd_vs_one", "{clients} cold clients vs 1", "x", "lower", 2),
    Row("crowd_upstream", "upstream bytes per {clients}-client cold pull", "x blob", "lower", 2),
    Row("many", "{many} warm clients, {many} blobs", "MB/s", "higher", 0),
    Row("tag_rate", "manifest by tag, {connections} conns", "req/s", "higher", 0),
    Row("tag_p50", "manifest by tag, p50", "ms", "lower", 2),
    Row("tag_p99", "manifest by tag, p99", "ms", "lower", 2),
    Row("digest_rate", "manifest by digest, {connections} conns", "req/s", "higher", 0),
    Row("digest_p50", "manifest by digest, p50", "ms", "lower", 2),
    Row("digest_p99", "manifest by digest, p99", "ms", "lower", 2),
    Row("rss_skopeo", "peak RSS, skopeo copies", "MiB", "lower", 1, worst=True),
    Row("rss_crowd", "peak RSS, {clients} cold clients", "MiB", "lower", 1, worst=True),
    Row("rss_many", "peak RSS, {many} warm clients", "MiB", "lower", 1, worst=True),
)


class Results:
    """Every sample, by row and target, and the load average after each measurement."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.load: dict[str, float] = {}

    def add(self, key: str, target: str, value: float) -> None:
        self.samples.setdefault(key, {}).setdefault(target, []).append(value)

    def value(self, row: Row, target: str) -> float | None:
        if row.key == "crowd_vs_one":
            crowd, one = self._median("crowd", target), self._median("cold_seconds", target)
            return None if crowd is None or not one else crowd / one
        values = self.samples.get(row.key, {}).get(target)
        if not values:
            return None
        return max(values) if row.worst else statistics.median(values)

    def _median(self, key: str, target: str) -> float | None:
        values = self.samples.get(key, {}).get(target)
        return statistics.median(values) if values else None

    def mark_load(self, key: str) -> None:
        self.load[key] = os.getloadavg()[0]


def rotation(run: int) -> tuple[str, ...]:
    """The targets in the order of run ``run``: each goes first in turn."""
    shift = run % len(TARGETS)
    return TARGETS[shift:] + TARGETS[:shift]


def fetch_checked(url: str, headers: dict[str, str], digest: str) -> None:
    """GET ``url`` whole and check its sha256 against ``digest``."""
    hasher = hashlib.sha256()
    request = urllib.request.Request(url, headers={**headers, "Accept": ACCEPT})
    with urllib.request.urlopen(request, timeout=300) as response:
        while chunk := response.read(MIB):
            hasher.update(chunk)
    if "sha256:" + hasher.hexdigest() != digest:
        raise RuntimeError(f"{url}: the body does not match {digest}")


def warm_up(servers: Servers, skopeo: Skopeo, scratch: Path) -> None:
    """Every blob and manifest through each long-lived target once, checked, and stored."""
    corpus = servers.corpus
    big = corpus.big.tags["latest"]
    for target in servers.warm.values():
        headers = target.header_dict()
        blobs = []
        for image in (corpus.big, *corpus.small):
            for blob in image.blobs:
                fetch_checked(target.blob_url(image.name, blob), headers, blob.digest)
                blobs.append((image.name, blob.digest))
        base = f"{target.url}/v2/library/big/manifests/"
        for reference in ("latest", big.digest):
            fetch_checked(base + reference, headers, big.digest)
        skopeo.copy(f"{target.address}/library/big:latest", scratch / "warm-up")
        wait_stored(target, blobs)
        wait_stored(target, [("library/big", big.digest)], manifest=True)
        if target.name == MIRROR:  # the peer asks its upstream for every tag
            wait_stored(target, [("library/big", "latest")], manifest=True)


def cold_clients(
    servers: Servers, name: str, clients: int, profile: Path | None = None
) -> tuple[float, float, float]:
    """``clients`` at once on the big layer of a fresh target: (seconds until the last is
    done, upstream bytes in multiples of the layer, peak RSS in MiB)."""
    layer = servers.corpus.big_layer
    with servers.fresh(name) as target:
        url = target.blob_url(servers.corpus.big.name, layer)
        mark = servers.log.mark()
        reset_peak_rss(target.pid)
        spy: AbstractContextManager[None] = (
            nullcontext() if profile is None else py_spy(target.pid, profile)
        )
        with spy:
            seconds = curl_together([url] * clients, target.headers, [layer.size] * clients)
        # The peer goes on copying the blob to its storage after its clients are done.
        wait_stored(target, [(servers.corpus.big.name, layer.digest)])
        rss = peak_rss_mib(target.pid)
        servers.log.settle()
        upstream = servers.log.body_bytes(mark) / layer.size
    return seconds, upstream, rss


def measure_blobs(servers: Servers, settings: Settings, results: Results) -> None:
    """Rows: warm blob, cold blob and its upstream bytes."""
    corpus = servers.corpus
    layer = corpus.big_layer
    for run in range(settings.runs):
        for name in rotation(run):
            target = servers.warm[name]
            url = target.blob_url(corpus.big.name, layer)
            seconds = curl_together([url], target.headers, [layer.size])
            results.add("warm_blob", name, layer.size / seconds / 1e6)
    results.mark_load("warm_blob")
    for run in range(settings.runs):
        for name in rotation(run):
            seconds, upstream, _ = cold_clients(servers, name, 1)
            results.add("cold_seconds", name, seconds)
            results.add("cold_blob", name, layer.size / seconds / 1e6)
            results.add("cold_upstream", name, upstream)
    results.mark_load("cold_blob")
    if settings.profile is not None:
        profiled(servers, settings, 1, "cold-blob")


def profiled(servers: Servers, settings: Settings, clients: int, label: str) -> None:
    """One more cold run against a fresh mirror under py-spy; not counted."""
    assert settings.profile is not None
    raw = settings.profile / f"{label}.raw"
    seconds = cold_clients(servers, MIRROR, clients, raw)[0]
    summary = f"{hottest(raw)}\n(profiled run, not counted: {seconds:.2f} s)"
    raw.with_suffix(".top.txt").write_text(summary + "\n")
    print(summary, flush=True)


def measure_skopeo(servers: Servers, settings: Settings, results: Results, skopeo: Skopeo) -> None:
    """Rows: skopeo copy cold and warm, and peak RSS during them."""
    corpus = servers.corpus
    reference = f"{corpus.big.name}:latest"
    destination = servers.root / "copy"
    for run in range(settings.runs):
        for name in rotation(run):
            with servers.fresh(name) as target:
                reset_peak_rss(target.pid)
                results.add(
                    "skopeo_cold", name, skopeo.copy(f"{target.address}/{reference}", destination)
                )
                # The peer goes on copying to its storage after the client is done.
                wait_stored(target, [(corpus.big.name, b.digest) for b in corpus.big.blobs])
                results.add("rss_skopeo", name, peak_rss_mib(target.pid))
        for name in rotation(run):
            target = servers.warm[name]
            reset_peak_rss(target.pid)
            results.add(
                "skopeo_warm", name, skopeo.copy(f"{target.address}/{reference}", destination)
            )
            results.add("rss_skopeo", name, peak_rss_mib(target.pid))
    results.mark_load("skopeo")


def measure_crowds(servers: Servers, settings: Settings, results: Results) -> None:
    """Rows: concurrent cold clients of one blob; concurrent warm clients of many blobs."""
    for run in range(settings.runs):
        for name in rotation(run):
            seconds, upstream, rss = cold_clients(servers, name, settings.clients)
            results.add("crowd", name, seconds)
            results.add("crowd_upstream", name, upstream)
            results.add("rss_crowd", name, rss)
    results.mark_load("crowd")
    if settings.profile is not None:
        profiled(servers, settings, settings.clients, f"cold-{settings.clients}-clients")
    small = servers.corpus.small
    layers = [layer_of(image) for image in small]
    total = sum(layer.size for layer in layers)
    for run in range(settings.runs):
        for name in rotation(run):
            target = servers.warm[name]
            urls = [target.blob_url(i.name, layer) for i, layer in zip(small, layers, strict=True)]
            reset_peak_rss(target.pid)
            seconds = curl_together(urls, target.headers, [layer.size for layer in layers])
            results.add("rss_many", name, peak_rss_mib(target.pid))
            results.add("many", name, total / seconds / 1e6)
    results.mark_load("many")


def measure_manifests(servers: Servers, settings: Settings, results: Results) -> None:
    """Rows: warm manifest GETs by tag and by digest under wrk."""
    script = servers.root / "summary.lua"
    script.write_text(WRK_SCRIPT)
    manifest = servers.corpus.big.tags["latest"]
    for kind, reference in (("tag", "latest"), ("digest", manifest.digest)):
        for run in range(settings.runs):
            for name in rotation(run):
                target = servers.warm[name]
                url = f"{target.url}/v2/{servers.corpus.big.name}/manifests/{reference}"
                # A tag the mirror trusted for tag_ttl is revalidated here, not under load.
                fetch_checked(url, target.header_dict(), manifest.digest)
                headers = [f"Accept: {ACCEPT}", *target.headers]
                load = wrk(script, url, headers, settings.connections, settings.seconds)
                results.add(f"{kind}_rate", name, load.rate)
                results.add(f"{kind}_p50", name, load.p50 * 1000)
                results.add(f"{kind}_p99", name, load.p99 * 1000)
        results.mark_load(kind)


def _version(command: list[str], pattern: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "unknown"
    match = re.search(pattern, result.stdout + result.stderr)
    return match[1] if match else "unknown"


def describe(settings: Settings, registry_bin: str) -> dict[str, object]:
    """The date, the machine, the versions and the settings of this run."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], r"(\w+)")
    # Read-only: no optional locks, so git never refreshes the index of a shared checkout.
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "dockermirror", "twisted"],
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        capture_output=True,
    ).returncode
    if changed == 1:
        commit += " with uncommitted changes"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu[1].strip() if cpu else platform.processor(),
            "cores": os.cpu_count(),
            "kernel": f"{platform.system()} {platform.release()}",
            "memory_gib": round(int(memory[1]) / MIB, 1) if memory else None,
        },
        "versions": {
            "dockermirror": f"{dockermirror.__version__} ({commit})",
            "distribution": _version([registry_bin, "--version"], r"(\d+\.\d+\.\d+\S*)"),
            "skopeo": _version(["skopeo", "--version"], r"version (\S+)"),
            "wrk": _version(["wrk", "--version"], r"wrk (\S+)"),
            "curl": _version(["curl", "--version"], r"curl (\S+)"),
            "python": platform.python_version(),
            "twisted": twisted.__version__,
        },
        "settings": {
            "big_layer_mib": settings.big_mib,
            "small_layer_mib": settings.small_mib,
            "small_images": settings.small_count,
            "cold_clients": settings.clients,
            "wrk_connections": settings.connections,
            "wrk_seconds": settings.seconds,
            "runs": settings.runs,
            "workers": settings.workers,
            "quick": settings.quick,
        },
    }


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def label(row: Row, settings: Settings) -> str:
    return row.label.format(
        clients=settings.clients, many=settings.small_count, connections=settings.connections
    )


def markdown(info: dict[str, object], settings: Settings, results: Results) -> str:
    machine, versions = info["machine"], info["versions"]
    assert isinstance(machine, dict) and isinstance(versions, dict)
    load = results.load
    lines = [
        "## dockermirror vs distribution's proxy (peer) vs the upstream (direct)",
        "",
        f"{info['date']}; {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB,"
        f" {machine['kernel']}.",
        f"dockermirror {versions['dockermirror']} with {settings.workers} worker(s),"
        f" distribution {versions['distribution']}, skopeo {versions['skopeo']},"
        f" wrk {versions['wrk']}, curl {versions['curl']}, Python {versions['python']},"
        f" Twisted {versions['twisted']}.",
        f"A {settings.big_mib} MiB layer, {settings.small_count} images of {settings.small_mib}"
        f" MiB layers; medians of {settings.runs} run(s), peak RSS the largest."
        f" Load average (1 min) {load.get('start', 0):.2f} at start,"
        f" {max(load.values(), default=0):.2f} at most after a row,"
        f" {load.get('end', 0):.2f} at the end.",
        "",
        "| measurement | unit | better | direct | peer | dockermirror"
        " | dockermirror/peer | dockermirror/direct |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        values = [results.value(row, name) for name in TARGETS]
        direct, peer, mirror = values
        cells = [label(row, settings), row.unit, row.better]
        cells += [_number(v, row.digits) for v in values]
        cells += [_number(_ratio(mirror, peer), 2), _number(_ratio(mirror, direct), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def as_json(info: dict[str, object], settings: Settings, results: Results) -> dict[str, object]:
    rows = []
    for row in ROWS:
        medians = {name: results.value(row, name) for name in TARGETS}
        rows.append(
            {
                "key": row.key,
                "label": label(row, settings),
                "unit": row.unit,
                "better": row.better,
                "statistic": "derived"
                if row.key == "crowd_vs_one"
                else ("max" if row.worst else "median"),
                "values": medians,
                "samples": results.samples.get(row.key, {}),
                "dockermirror/peer": _ratio(medians[MIRROR], medians[PEER]),
                "dockermirror/direct": _ratio(medians[MIRROR], medians[DIRECT]),
            }
        )
    cold_seconds = results.samples.get("cold_seconds", {})
    return {**info, "load_average": results.load, "rows": rows, "cold_seconds": cold_seconds}


def missing_tools(profile: bool) -> list[str]:
    missing = [f"{c} (Debian: {p})" for c, p in PACKAGES.items() if shutil.which(c) is None]
    if shutil.which("twistd") is None:
        missing.append("twistd (pip install the project)")
    if profile and shutil.which("py-spy") is None:
        missing.append("py-spy (pip install py-spy)")
    return missing


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one run")
    parser.add_argument("--big-mib", type=int, help="the big layer (256; quick 4)")
    parser.add_argument("--small-mib", type=int, help="each small layer (10; quick 1)")
    parser.add_argument("--small-count", type=int, help="small images and clients (50; quick 8)")
    parser.add_argument("--clients", type=int, help="concurrent cold clients (20; quick 4)")
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections (50)")
    parser.add_argument("--runs", type=int, help="repetitions (3; quick 1)")
    parser.add_argument("--seconds", type=int, help="each wrk run (5; quick 1)")
    parser.add_argument(
        "--workers", type=int, default=1, help="mirror processes, passed on when > 1 (1)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy profiles of the mirror go here")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the tables go (bench/results)"
    )
    args = parser.parse_args(argv)
    full = {"big_mib": 256, "small_mib": 10, "small_count": 50, "clients": 20, "runs": 3}
    quick = {"big_mib": 4, "small_mib": 1, "small_count": 8, "clients": 4, "runs": 1}
    preset = quick if args.quick else full
    preset["seconds"] = 1 if args.quick else 5

    def pick(name: str) -> int:
        value = getattr(args, name)
        return preset[name] if value is None else int(value)

    return Settings(
        big_mib=pick("big_mib"),
        small_mib=pick("small_mib"),
        small_count=pick("small_count"),
        clients=pick("clients"),
        connections=args.connections,
        runs=pick("runs"),
        seconds=pick("seconds"),
        workers=args.workers,
        quick=args.quick,
        profile=args.profile,
        results=args.results,
    )


def run(settings: Settings, root: Path) -> tuple[str, dict[str, object]]:
    """Start everything under ``root``, measure, stop; the Markdown table and the JSON."""
    registry_bin = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    info = describe(settings, registry_bin)
    results = Results()
    results.mark_load("start")
    print(f"building the images under {root}", flush=True)
    corpus = build_corpus(
        root / "images", settings.big_mib * MIB, settings.small_mib * MIB, settings.small_count
    )
    servers = Servers.start(
        root / "servers",
        corpus,
        twistd=shutil.which("twistd") or "twistd",
        registry_bin=registry_bin,
        workers=settings.workers,
    )
    shutil.rmtree(root / "images")  # pushed: the upstream has them
    try:
        skopeo = Skopeo.make(root / "skopeo")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("warming the peer and the mirror", lambda: warm_up(servers, skopeo, root)),
            ("blobs, one client", lambda: measure_blobs(servers, settings, results)),
            ("skopeo copy", lambda: measure_skopeo(servers, settings, results, skopeo)),
            ("concurrent clients", lambda: measure_crowds(servers, settings, results)),
            ("manifests under wrk", lambda: measure_manifests(servers, settings, results)),
        ]
        for title, step in steps:
            started = time.monotonic()
            print(f"{title}...", end=" ", flush=True)
            step()
            print(f"{time.monotonic() - started:.0f} s", flush=True)
        tracebacks = servers.tracebacks()
    finally:
        servers.close()
    results.mark_load("end")
    info["mirror_tracebacks"] = len(tracebacks)
    if tracebacks:
        print(f"the mirror logged {len(tracebacks)} traceback(s); the first:\n{tracebacks[0]}")
    return markdown(info, settings, results), as_json(info, settings, results)


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    missing = missing_tools(settings.profile is not None)
    if missing:
        sys.exit("missing: " + ", ".join(missing))
    if settings.profile is not None:
        settings.profile.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="dm-compare-"))
    try:
        table, document = run(settings, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    settings.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = settings.results / (stamp + ("-quick" if settings.quick else ""))
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(table)
    print(f"written: {stem}.md, {stem}.json")


if __name__ == "__main__":
    main()
