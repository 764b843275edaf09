"""The clients and probes of ``bench/compare.py``: curl processes released at once, skopeo,
wrk, peak resident memory from /proc, and py-spy around a measurement.

Clients are separate native processes (curl, skopeo, wrk), never Python threads:
on a machine of two cores a client that reads under the GIL would measure itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

# Written by curl for each transfer: status, body bytes, seconds.
_CURL_FORMAT = "%{http_code} %{size_download} %{time_total}\\n"
# wrk's Lua hook: the summary as one JSON line (latencies in microseconds).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d,'
    .. ' "read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


PY_SPY_RATE = 250


def _waiting_on_stdin(pid: int) -> bool:
    """Whether the process sleeps in a pipe read (curl reading its ``-K -`` configuration)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state == "S" and "pipe" in wchan


def curl_together(urls: Sequence[str], headers: Sequence[str], size: Sequence[int]) -> float:
    """Seconds from releasing one curl per URL, all at once, until the last has its whole body.

    Each curl is started first and waits for its configuration on stdin, so that
    neither process creation nor curl's own start-up is timed; then all are
    released within microseconds.  Every transfer must answer 200 with exactly
    ``size[i]`` body bytes.
    """
    curl = shutil.which("curl") or "curl"
    processes = [
        subprocess.Popen(
            [curl, "-K", "-", "-sS", "-o", "/dev/null", "-w", _CURL_FORMAT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in urls
    ]
    deadline = time.monotonic() + 10
    for process in processes:
        while not _waiting_on_stdin(process.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
    configs = []
    for url in urls:
        lines = [f'url = "{url}"', *(f'header = "{h}"' for h in headers)]
        configs.append(("\n".join(lines) + "\n").encode())
    started = time.perf_counter()
    for config, process in zip(configs, processes, strict=True):
        assert process.stdin is not None
        process.stdin.write(config)
        process.stdin.close()
    for process in processes:
        process.wait()
    elapsed = time.perf_counter() - started
    for url, expected, process in zip(urls, size, processes, strict=True):
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.read().decode(), process.stderr.read().decode()
        process.stdout.close()
        process.stderr.close()
        fields = out.split()
        if process.returncode != 0 or fields[:2] != ["200", str(expected)]:
            raise RuntimeError(f"curl {url}: exit {process.returncode}, {out.strip()} {err}")
    return elapsed


@attrs.frozen
class Skopeo:
    """skopeo isolated from the machine's /etc/containers, copying to a ``dir:``."""

    env: dict[str, str]
    policy: Path

    @classmethod
    def make(cls, directory: Path) -> Skopeo:
        directory.mkdir(parents=True, exist_ok=True)
        policy = directory / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        registries = directory / "registries.conf"
        registries.write_text("")
        return cls({"CONTAINERS_REGISTRIES_CONF": str(registries)}, policy)

    def copy(self, reference: str, destination: Path) -> float:
        """Seconds for ``skopeo copy docker://REFERENCE dir:DESTINATION`` (plain HTTP)."""
        shutil.rmtree(destination, ignore_errors=True)
        command = [shutil.which("skopeo") or "skopeo", "--policy", str(self.policy), "copy"]
        command += ["--src-tls-verify=false", f"docker://{reference}", f"dir:{destination}"]
        started = time.perf_counter()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=900, env={**os.environ, **self.env}
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{command} failed:\n{result.stderr}")
        shutil.rmtree(destination, ignore_errors=True)
        return elapsed


@attrs.frozen
class Load:
    """What wrk measured: requests a second and latency percentiles, in seconds."""

    rate: float
    p50: float
    p99: float


def wrk(script: Path, url: str, headers: Sequence[str], connections: int, seconds: int) -> Load:
    """``wrk`` with ``connections`` kept-alive connections for ``seconds``; every answer a 2xx."""
    threads = max(1, min(connections, os.cpu_count() or 1))
    command = [shutil.which("wrk") or "wrk", "-t", str(threads), "-c", str(connections)]
    command += ["-d", f"{seconds}s", "--timeout", "10s", "-s", str(script)]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60)
    lines = [line for line in result.stdout.splitlines() if line.startswith("WRK ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    summary = json.loads(lines[-1].removeprefix("WRK "))
    errors = {k: v for k, v in summary.items() if k.endswith(("_errors", "timeouts")) and v}
    if errors or not summary["requests"]:
        raise RuntimeError(f"wrk {url}: {summary}")
    return Load(
        summary["requests"] / (summary["duration_us"] / 1e6),
        summary["p50_us"] / 1e6,
        summary["p99_us"] / 1e6,
    )


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a mirror's workers, once it has them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def reset_peak_rss(pid: int) -> None:
    """Start the kernel's peak-RSS record (VmHWM) afresh for the process tree.

    ``5`` in ``/proc/PID/clear_refs`` resets VmHWM to the current RSS (Linux 4.0+).
    """
    for each in process_tree(pid):
        try:
            Path(f"/proc/{each}/clear_refs").write_text("5")
        except OSError:
            pass


def peak_rss_mib(pid: int) -> float:
    """The largest VmHWM of the process tree, in MiB: the peak of one process (one worker)."""
    peaks = []
    for each in process_tree(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        if match := re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE):
            peaks.append(int(match[1]))
    if not peaks:
        raise RuntimeError(f"no VmHWM for {pid}")
    return max(peaks) / 1024


@contextmanager
def py_spy(pid: int, output: Path) -> Iterator[None]:
    """``py-spy record`` of the process tree around a block: collapsed stacks (``raw``)."""
    command = [shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--subprocesses"]
    command += [
        "--threads",
        "--rate",
        str(PY_SPY_RATE),
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    # py-spy says it is sampling once it has attached.
    line = process.stdout.readline()
    if "Sampling" not in line:
        process.kill()
        raise RuntimeError(f"py-spy did not attach: {line}{process.stdout.read()}")
    started = time.monotonic()
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
        (output.with_suffix(".seconds")).write_text(f"{time.monotonic() - started:.3f}\n")


def hottest(raw: Path, rate: int = PY_SPY_RATE, count: int = 15) -> str:
    """The functions with most samples in a py-spy raw profile, and how busy each thread was.

    py-spy leaves idle samples out, so a thread's samples over the recording's
    length at the sampling rate is the share of the time it was busy; function
    shares are of all busy samples: own (the function itself) and inclusive.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    lines_own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        total += samples
        lines_own[stack.rpartition(";")[2]] += samples
        frames = []
        for frame in stack.split(";"):
            if frame.startswith("thread ("):
                tid, _, name = frame.removeprefix("thread (").partition(")")
                threads[f"{name.removeprefix(': ') or 'thread'} ({tid})"] += samples
            elif not frame.startswith("process "):
                frames.append(re.sub(r":\d+\)$", ")", frame))
        if frames:
            own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return f"{raw.name}: no busy samples"
    seconds_file = raw.with_suffix(".seconds")
    seconds = float(seconds_file.read_text()) if seconds_file.exists() else 0.0
    lines = [f"{raw.name}: {total} busy samples over {seconds:.1f} s at {rate} Hz"]
    for thread, samples in threads.most_common():
        busy = f"busy {samples / (rate * seconds):.0%}" if seconds else ""
        lines.append(f"  {thread}: {samples} samples, {busy}")
    lines.append("  own%  incl%  function (file)")
    for frame, samples in own.most_common(count):
        lines.append(f"{samples / total:6.1%} {inclusive[frame] / total:6.1%}  {frame}")
    lines.append("  own%  line")
    for frame, samples in lines_own.most_common(count // 2):
        lines.append(f"{samples / total:6.1%}  {frame}")
    return "\n".join(lines)
