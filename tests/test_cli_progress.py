"""The progress bar: drawn on a terminal (stderr), never in a pipe or a log.

On a fake terminal, and on a real one (a pty) for the console script; with
stdout a pipe, stdout carries only the results either way.
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from dockermirror import cli
from dockermirror.cli.progress import Progress
from tests.support.clients import require
from tests.test_cli_cache import fill

CLEAR = "\r\x1b[2K"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    fill(directory).close()
    return directory


def test_a_bar_is_drawn_on_a_terminal() -> None:
    out = Terminal()
    progress = Progress(out, 4 * 1024**2, "verifying", unit="B")
    progress.advance(1024**2)
    assert out.getvalue() == (
        f"{CLEAR}verifying [#######-----------------------]  25% 1.0 MiB/4.0 MiB"
    )
    progress.finish()
    assert out.getvalue().endswith(CLEAR)


def test_a_bar_without_a_total_counts() -> None:
    out = Terminal()
    progress = Progress(out, None, "warming", unit="B")
    progress.advance(10)
    assert out.getvalue() == f"{CLEAR}warming 10 B"


def test_nothing_is_written_where_it_is_no_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, 10, "verifying")
    progress.add_total(5)
    progress.advance(3)
    progress.finish()
    assert out.getvalue() == ""


def test_verify_draws_on_stderr_when_it_is_a_terminal(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["cache", "verify", "--cache-dir", str(cache_dir)]) == 0
    assert terminal.getvalue().startswith(f"{CLEAR}verifying [")
    assert terminal.getvalue().endswith(CLEAR)
    assert capsys.readouterr().out.startswith("checked 16 blobs, ")


def test_verify_is_quiet_in_a_pipe(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cache", "verify", "--cache-dir", str(cache_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count("\n") == 1


def test_purge_draws_on_stderr_when_it_is_a_terminal(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["cache", "purge", "redis", "--cache-dir", str(cache_dir)]) == 0
    drawn = terminal.getvalue()
    assert f"{CLEAR}reading manifests [" in drawn
    assert f"{CLEAR}removing [" in drawn
    assert drawn.endswith(CLEAR)
    assert CLEAR not in capsys.readouterr().out


def test_the_console_script_on_a_real_terminal(cache_dir: Path) -> None:
    """stderr a pty, stdout a pipe: the bar on the terminal, only results in the pipe."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [require("dockermirror"), "cache", "verify", "--cache-dir", str(cache_dir)],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        stdout, _ = process.communicate(timeout=60)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert process.returncode == 0
    assert stdout.startswith("checked 16 blobs, ") and stdout.count("\n") == 1
    assert b"verifying [" in drawn
