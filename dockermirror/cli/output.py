"""How the commands print: aligned tables, sizes and times for people, JSON for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO


def size(value: int | None) -> str:
    """``1.5 MiB``; ``-`` for nothing known."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def local_time(seconds: float | None) -> str:
    """``2024-05-01 12:00`` in the local time zone; ``-`` for never."""
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def iso_time(seconds: float | None) -> str | None:
    """ISO 8601 in UTC, for JSON; None for never."""
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]), file=out)


def dump(out: TextIO, document: Any) -> None:
    json.dump(document, out, indent=2)
    out.write("\n")
