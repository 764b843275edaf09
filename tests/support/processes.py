"""Starting and stopping the suite's peer processes on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _connect(address: tuple[str, int] | str) -> None:
    if isinstance(address, str):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(address)
    else:
        socket.create_connection(address, timeout=1).close()


class Peer:
    """A background process, ready once it accepts connections on (host, port) or a unix socket."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        address: tuple[str, int] | str,
        log: Path,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.log = log
        self._out = open(log, "ab")
        self.process = subprocess.Popen(
            list(args),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {self.process.returncode}: {self.output()[-4000:]}"
                )
            try:
                _connect(address)
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{name} did not listen on {address}: {self.output()[-4000:]}"
                    ) from None
                time.sleep(0.05)

    def output(self) -> str:
        """The whole log so far."""
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def rss_peak_kib(self) -> int:
        """The process's peak resident set size (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Poll until ``condition`` holds; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
