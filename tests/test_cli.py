"""``dockermirror cache verify``, run as operators run it: the installed console script.

A cache with good blobs and a damaged one: the damaged one is reported and
dropped (exit 1), then all is intact (exit 0); a directory that is no cache and
a usage error exit 2.  It runs beside a mirror on the same directory: it waits
for a lock the mirror holds, and the mirror, which sees the blob gone, counts
its cache afresh before it evicts anything.  Also the command as a whole: its
usage errors, its help naming the exit statuses, ``python3 -m dockermirror.cli``.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from dockermirror import cli
from dockermirror.cli import verify as verify_command
from dockermirror.reference import digest_of
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.index import Index
from dockermirror.storage.interface import Scope
from dockermirror.storage.verify import Damage, Stored
from dockermirror.storage.workers import InlineWorker
from tests.fakes import result_of
from tests.support.clients import require

SCOPE = Scope("u", "library/redis")
GOOD = bytes(range(256)) * 256
BAD = bytes(reversed(range(256))) * 256
MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
OCI = "application/vnd.oci.image.manifest.v1+json"


def storage(directory: Path, max_size: int = 10**9) -> FilesystemStorage:
    store = FilesystemStorage(
        directory, Clock(), max_size, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    store.open()
    assert store.is_open
    return store


def store_blob(store: FilesystemStorage, data: bytes) -> None:
    writer = store.begin_write(digest_of(data), len(data), SCOPE)
    writer.write(data)
    result_of(writer.commit())


def rot(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    return "its bytes have digest sha256:"


def grow(path: Path) -> str:
    with open(path, "ab") as f:
        f.write(b"more")  # the first bytes are still right: only the size tells
    return f"the file has {len(BAD) + 4} bytes, not {len(BAD)}"


def truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:10])
    return f"the file has 10 bytes, not {len(BAD)}"


def delete(path: Path) -> str:
    path.unlink()
    return "the file is missing"


@pytest.fixture(params=[rot, grow, truncate, delete])
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A cache holding two blobs and a manifest, one blob damaged; and what is wrong with it."""
    directory = tmp_path / "cache"
    store = storage(directory)
    store_blob(store, GOOD)
    store_blob(store, BAD)
    assert result_of(store.put_manifest(digest_of(MANIFEST), OCI, MANIFEST, SCOPE))
    result_of(store.close())
    problem = request.param(store.path(digest_of(BAD)))
    return directory, problem


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache holding two blobs and a manifest; one blob has rotted."""
    directory = tmp_path / "cache"
    store = storage(directory)
    store_blob(store, GOOD)
    store_blob(store, BAD)
    assert result_of(store.put_manifest(digest_of(MANIFEST), OCI, MANIFEST, SCOPE))
    result_of(store.close())
    rot(store.path(digest_of(BAD)))
    return directory


def verify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("dockermirror"), "cache", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def indexed(directory: Path) -> set[str]:
    db = sqlite3.connect(directory / "index.sqlite")
    try:
        return {digest for (digest,) in db.execute("SELECT digest FROM blobs")}
    finally:
        db.close()


def checked(directory: Path, digest: str) -> float:
    db = sqlite3.connect(directory / "index.sqlite")
    try:
        (verified,) = db.execute("SELECT verified FROM blobs WHERE digest = ?", (digest,))
        return float(verified[0])
    finally:
        db.close()


def test_a_damaged_blob_is_reported_and_dropped(damaged: tuple[Path, str]) -> None:
    cache, problem = damaged
    bad, good, manifest = digest_of(BAD), digest_of(GOOD), digest_of(MANIFEST)
    first = verify("--cache-dir", str(cache))
    assert first.returncode == 1, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith(f"damaged {bad}: {problem}")
    assert lines[0].endswith("; dropped")
    total = len(GOOD) + len(BAD) + len(MANIFEST)
    assert lines[1:] == [f"checked 3 blobs, {total} bytes: 1 damaged"]
    assert first.stderr == ""
    assert indexed(cache) == {good, manifest}
    # What it found good, the mirror's scrub will not read again soon.
    assert checked(cache, good) > time.time() - 60
    assert not (cache / "blobs" / "sha256" / bad[7:9] / bad[7:]).exists()
    again = verify("--cache-dir", str(cache))
    assert (again.returncode, again.stdout) == (
        0,
        f"checked 2 blobs, {len(GOOD) + len(MANIFEST)} bytes: all intact\n",
    )


def test_its_default_directory_is_the_mirrors(cache: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CACHE_DIRECTORY"}
    env["XDG_CACHE_HOME"] = str(tmp_path)  # the mirror's default: $XDG_CACHE_HOME/dockermirror
    cache.rename(tmp_path / "dockermirror")
    result = verify(env=env)
    assert result.returncode == 1
    assert result.stdout.endswith(": 1 damaged\n")


def test_a_directory_that_is_no_cache_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "file").write_bytes(b"keep")
    result = verify("--cache-dir", str(tmp_path))
    assert (result.returncode, result.stdout) == (2, "")
    problem = f"cannot verify the cache in {tmp_path}: {tmp_path} is no dockermirror cache"
    assert result.stderr == f"dockermirror: {problem}\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "tmp"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["cache"],
        ["cache", "frobnicate"],
        ["cache", "verify", "x"],
        ["cache", "purge"],
        ["cache", "ls", "a", "b"],
        ["check-config"],
        ["htpasswd", "add", "alice"],  # no file named
        ["htpasswd", "add", "--file", "f", "--cost", "3", "alice"],
    ],
)
def test_a_usage_error_exits_2(args: list[str]) -> None:
    result = subprocess.run(
        [require("dockermirror"), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "usage: dockermirror" in result.stderr


def test_it_runs_beside_a_mirror_on_the_same_directory(cache: Path) -> None:
    bad, good = digest_of(BAD), digest_of(GOOD)
    # The mirror's storage, open on the same directory; its limit is below what it counted.
    mirror = storage(cache, max_size=len(GOOD) + len(BAD) + len(MANIFEST) - 1)
    counted = mirror.total
    # The mirror holds the index for a while, as a long write would.
    holder = sqlite3.connect(cache / "index.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen(
        [require("dockermirror"), "cache", "verify", "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    holder.execute("COMMIT")
    holder.close()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert stdout.startswith(f"damaged {bad}:") and "; dropped\n" in stdout
    # The mirror finds the blob gone: it will fetch it again.
    assert result_of(mirror.stored_blob(bad, SCOPE)) is None
    # Its count is stale; before evicting, it counts afresh, and finds nothing to evict.
    assert mirror.total == counted
    assert result_of(mirror.evict(set())) == 0
    assert mirror.total == len(GOOD) + len(MANIFEST)
    assert result_of(mirror.stored_blob(good, SCOPE)) is not None
    result_of(mirror.close())


def test_a_blob_evicted_while_it_is_checked_is_no_damage(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running mirror may evict a blob the command is about to check: gone is not damaged."""
    good = digest_of(GOOD)
    real_check = verify_command.check_file

    def evicted_meanwhile(path: Path, stored: Stored) -> Damage | None:
        if stored.digest == good:
            path.unlink()
            db = sqlite3.connect(cache / "index.sqlite")
            db.execute("DELETE FROM blobs WHERE digest = ?", (good,))
            db.commit()
            db.close()
        return real_check(path, stored)

    monkeypatch.setattr(verify_command, "check_file", evicted_meanwhile)
    index = Index(cache / "index.sqlite", writer=True)
    index.connect()
    out = io.StringIO()
    try:
        assert verify_command.verify_cache(cache, index, out, io.StringIO()) == 1
    finally:
        index.close()
    assert out.getvalue().count("damaged") == 2  # the rotted blob's line, and the summary
    assert good not in out.getvalue()


def test_it_runs_as_a_module_too(tmp_path: Path) -> None:
    """``python3 -m dockermirror.cli`` is the same command (a directory that is no cache: 2)."""
    (tmp_path / "foreign").write_text("not the mirror's")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockermirror.cli",
            "cache",
            "verify",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (tmp_path / "foreign").read_text() == "not the mirror's"


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["cache"],
        ["cache", "verify"],
        ["cache", "stats"],
        ["cache", "ls"],
        ["cache", "purge"],
        ["check-config"],
        ["htpasswd"],
        ["htpasswd", "add"],
        ["htpasswd", "remove"],
    ],
)
def test_every_help_names_the_exit_statuses(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).lower()
    assert "exit status: 0" in text
    assert ", 2 " in text or "; 2 " in text


def test_the_cache_directory_comes_from_the_configuration(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text(f'[cache]\ndir = "{cache}"\n')
    assert cli.main(["cache", "verify", "--config", str(config)]) == 1
    assert capsys.readouterr().out.endswith(": 1 damaged\n")
    # --cache-dir wins over the configuration.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert (
        cli.main(["cache", "verify", "--config", str(config), "--cache-dir", str(elsewhere)]) == 2
    )
    assert capsys.readouterr().err == (
        f"dockermirror: cannot verify the cache in {elsewhere}: {elsewhere} is no dockermirror"
        " cache\n"
    )


def test_a_configuration_it_cannot_use_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text("[cache]\nmax_size = 'lots'\n")
    assert cli.main(["cache", "stats", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"dockermirror: {config}: cache.max_size: 'lots' is not a size (e.g. 50GiB, 500MB or a"
        " byte count)\n"
    )
