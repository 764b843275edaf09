"""A one-line progress bar for long operator commands, drawn only on a terminal.

Scripts and logs get nothing from it: when ``out`` is not a TTY every call is a
no-op, so a command's real output stays parseable.
"""

from __future__ import annotations

import time
from typing import TextIO

_WIDTH = 30
# Redraw at most this often: a bar must not cost more than the work it shows.
_INTERVAL = 0.1


class Progress:
    def __init__(self, out: TextIO, total: int | None, label: str, *, unit: str = "") -> None:
        self._out = out
        self._total = total
        self._label = label
        self._unit = unit
        self._done = 0
        self._drawn = 0.0
        self._shown = _is_terminal(out)

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        now = time.monotonic()
        if self._shown and now - self._drawn >= _INTERVAL:
            self._drawn = now
            self._draw()

    def add_total(self, amount: int) -> None:
        """More work found on the way (an index's manifests, their layers)."""
        self._total = (self._total or 0) + amount

    def finish(self) -> None:
        """Clear the bar, so that the next line of output starts clean."""
        if self._shown:
            self._out.write("\r\x1b[2K")
            self._out.flush()

    def _draw(self) -> None:
        done = _amount(self._done, self._unit)
        if self._total:
            share = min(1.0, self._done / self._total)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            line = f"{self._label} [{bar}] {share:4.0%} {done}/{_amount(self._total, self._unit)}"
        else:
            line = f"{self._label} {done}"
        self._out.write("\r\x1b[2K" + line)
        self._out.flush()


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _amount(value: int, unit: str) -> str:
    if unit != "B":
        return f"{value}{unit}"
    size = float(value)
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or suffix == "GiB":
            return f"{size:.0f} {suffix}" if suffix == "B" else f"{size:.1f} {suffix}"
        size /= 1024
    raise AssertionError("unreachable")
