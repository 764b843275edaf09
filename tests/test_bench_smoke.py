"""The side-by-side benchmark (bench/compare.py) runs end to end at tiny sizes.

No timing is checked: only that every process starts, every measurement runs
against all three targets, and the table it writes has every row filled.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.support.clients import require

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("direct", "peer", "dockermirror")
# The measurements, in the table's order.
ROWS = [
    "warm_blob",
    "cold_blob",
    "cold_upstream",
    "skopeo_cold",
    "skopeo_warm",
    "crowd",
    "crowd_vs_one",
    "crowd_upstream",
    "many",
    "tag_rate",
    "tag_p50",
    "tag_p99",
    "digest_rate",
    "digest_p50",
    "digest_p99",
    "rss_skopeo",
    "rss_crowd",
    "rss_many",
]


def test_quick_run_fills_every_row(tmp_path: Path) -> None:
    for tool in ("docker-registry", "skopeo", "wrk", "curl", "twistd"):
        require(tool)
    results = tmp_path / "results"
    command = [
        sys.executable,
        str(ROOT / "bench/compare.py"),
        "--quick",
        "--results",
        str(results),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    [markdown] = results.glob("*-quick.md")
    [document] = results.glob("*-quick.json")
    data = json.loads(document.read_text())
    assert {"date", "machine", "versions", "settings", "load_average"} <= data.keys()
    assert data["machine"]["cores"] >= 1
    assert isinstance(data["mirror_tracebacks"], int)
    assert [row["key"] for row in data["rows"]] == ROWS
    for row in data["rows"]:
        values = [row["values"][target] for target in TARGETS]
        values += [row["dockermirror/peer"], row["dockermirror/direct"]]
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values), row

    text = markdown.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(ROWS)
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == 8 and all(cell and cell != "-" for cell in cells), line
    assert text in run.stdout
