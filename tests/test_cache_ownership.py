"""Opening the cache only touches what the mirror created.

A directory that holds other things (``--cache-dir /var`` by mistake) is
refused: an error is logged, pulls stream through, and nothing in it is
deleted or added.  The mirror's own directory is marked with a ``CACHEDIR.TAG``;
a cache made before the mark (index.sqlite with the mirror's tables) is
recognised and marked.  Even in its own directory, it deletes only what its
layout names.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dockermirror.reference import digest_of
from dockermirror.storage import layout
from tests.fakes import FakeRegistry, Harness, blob_handler

BLOB = bytes(range(256)) * 64
DIGEST = digest_of(BLOB)
UPSTREAM_BLOB = f"/v2/library/redis/blobs/{DIGEST}"
# A name the mirror might give a blob, for a file it did not write.
BLOB_LIKE = f"blobs/sha256/ab/ab{'0' * 62}"


@pytest.fixture
def registry() -> FakeRegistry:
    registry = FakeRegistry()
    registry.handlers[UPSTREAM_BLOB] = blob_handler(BLOB)
    return registry


def pull(harness: Harness) -> tuple[int, str, bytes]:
    response = harness.request("GET", f"/v2/redis/blobs/{DIGEST}")
    outcome = response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0]
    return response.code, outcome, harness.body(response)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def foreign(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def refused(events: list[dict[str, object]]) -> list[str]:
    return [str(e["error"]) for e in events if "cannot open the cache" in str(e.get("log_format"))]


@pytest.mark.parametrize(
    "files",
    [
        # /var by mistake: its tmp/ is not the mirror's.
        {"tmp/session-1234": b"keep me", "log/syslog": b"...", BLOB_LIKE: b"x"},
        # Another program's cache, tagged as its own.
        {
            "CACHEDIR.TAG": b"Signature: 8a477f597d28d172789f06886806bc55\n# by othertool\n",
            "tmp/x": b"keep me",
        },
        # Some other program's SQLite database by the name the mirror uses.
        {"index.sqlite": b"", "tmp/x": b"keep me"},
    ],
    ids=["var", "other-cachedir-tag", "other-index"],
)
def test_a_directory_holding_other_things_is_refused_and_left_alone(
    tmp_path: Path,
    registry: FakeRegistry,
    files: dict[str, bytes],
    log_events: list[dict[str, object]],
) -> None:
    root = tmp_path / "var"
    foreign(root, files)
    if "index.sqlite" in files:
        db = sqlite3.connect(root / "index.sqlite")
        db.execute("CREATE TABLE blobs (name TEXT)")
        db.commit()
        db.close()
    before = tree(root)
    harness = Harness(registry, {"cache": {"dir": str(root)}})
    assert [pull(harness) for _ in range(2)] == [(200, "-", BLOB)] * 2  # streamed through
    assert registry.paths("GET").count(UPSTREAM_BLOB) == 2
    assert tree(root) == before
    assert sorted(p.name for p in root.iterdir()) == sorted({n.split("/")[0] for n in files})
    (problem,) = refused(log_events)
    assert "is not empty and is no dockermirror cache" in problem
    # Tried again a minute later: still refused, still untouched.
    harness.clock.advance(61)
    assert len(refused(log_events)) == 2
    assert tree(root) == before


@pytest.mark.parametrize("existing", [False, True])
def test_a_new_or_empty_directory_is_marked_as_the_mirrors(
    tmp_path: Path, registry: FakeRegistry, existing: bool
) -> None:
    root = tmp_path / "cache"
    if existing:
        (root / "lost+found").mkdir(parents=True)  # a fresh filesystem's
    harness = Harness(registry, {"cache": {"dir": str(root)}})
    assert pull(harness) == (200, "MISS", BLOB)
    assert (root / "CACHEDIR.TAG").read_text() == layout.MARKER_TEXT
    assert (
        (root / "CACHEDIR.TAG")
        .read_text()
        .startswith("Signature: 8a477f597d28d172789f06886806bc55")
    )
    assert pull(harness) == (200, "HIT", BLOB)


def test_a_cache_from_before_the_mark_is_recognised_and_marked(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    root = tmp_path / "cache"
    first = Harness(registry, {"cache": {"dir": str(root)}})
    pull(first)
    assert first.cache is not None
    first.cache.stopService()
    # What the previous version left: blobs/, tmp/ (with a crash's leftover), index.sqlite.
    (root / "CACHEDIR.TAG").unlink()
    (root / "tmp" / "0123456789abcdef0123456789abcdef").write_bytes(b"partial")
    again = Harness(registry, {"cache": {"dir": str(root)}})
    assert pull(again) == (200, "HIT", BLOB)
    assert (root / "CACHEDIR.TAG").read_text() == layout.MARKER_TEXT
    assert list((root / "tmp").iterdir()) == []
    assert registry.paths("GET").count(UPSTREAM_BLOB) == 1


def test_in_its_own_directory_it_deletes_only_what_its_layout_names(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    root = tmp_path / "cache"
    first = Harness(registry, {"cache": {"dir": str(root)}})
    pull(first)
    assert first.cache is not None
    first.cache.stopService()
    leftovers = {"tmp/partial": b"a crash's", BLOB_LIKE: b"renamed, never indexed"}
    kept = {
        "tmp/somebody/file": b"not a file the mirror writes in tmp/",
        "blobs/README": b"no digest's path",
        "blobs/sha256/ab/notadigest": b"",
        "blobs/md5/ab/ab00": b"",
        "notes.txt": b"",
    }
    foreign(root, {**leftovers, **kept})
    again = Harness(registry, {"cache": {"dir": str(root)}})
    assert pull(again) == (200, "HIT", BLOB)
    left = tree(root)
    assert not set(leftovers) & set(left)
    assert {name: left.get(name) for name in kept} == kept
