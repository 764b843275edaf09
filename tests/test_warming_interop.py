"""``dockermirror cache warm`` against real peers: warm, stop the upstream, pull from the cache.

A registry of this module's own (the CNCF distribution registry, token auth)
is stopped halfway; skopeo then pulls through the mirrors that were warmed:
one warmed over HTTP (``--mirror``), one whose cache directory was warmed
directly (``--cache-dir``) while that mirror ran on it.  Everything warmed
comes from the caches; a platform that was not warmed does not.  The command
runs as operators run it, as a process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt

from tests.support.clients import copy, require, skopeo
from tests.support.images import Image
from tests.support.peers import ROOT, Mirror, registry_config, start_upstream
from tests.support.processes import wait_for

SMALL = ("schema2", "manifest-list", "oci-index")
ALPINE, MULTIARCH, OCI = (
    "library/alpine:latest",
    "library/multiarch:latest",
    "library/ociimage:latest",
)


def warm(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The command, as a process (``dockermirror cache warm``)."""
    return subprocess.run(
        [sys.executable, "-m", "dockermirror.cli", "cache", "warm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
        cwd=ROOT,
    )


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_warmed_caches_serve_pulls_with_the_upstream_stopped(
    images: dict[str, Image],
    new_mirror: Callable[..., Mirror],
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    own = start_upstream(
        tmp_path / "own", require("docker-registry"), {k: images[k] for k in SMALL}
    )
    config = registry_config("docker.io", own.url)
    try:
        # (a) Through a running mirror, over HTTP.
        through = new_mirror(config)
        first = warm("--mirror", through.url, ALPINE, MULTIARCH, OCI)
        assert first.returncode == 0, first.stderr
        assert [line.split(" (")[0] for line in lines(first.stdout)] == [
            f"warmed {ALPINE}",
            f"warmed {MULTIARCH}",
            f"warmed {OCI}",
        ]
        assert " 0 already cached" in first.stdout and first.stderr == ""
        # Asked again, the mirror says HIT to each blob's HEAD: nothing is downloaded.
        mark = own.log_mark()
        again = warm("--mirror", through.url, ALPINE, MULTIARCH, OCI)
        assert again.returncode == 0, again.stderr
        assert all("0 blobs fetched (0 B)" in line for line in lines(again.stdout)), again.stdout
        assert not [r for r in own.requests(mark) if "/blobs/" in r[1]]

        # (b) Straight into a cache directory, while a mirror runs on it.
        directory = tmp_path / "warmed"
        beside = new_mirror(config, directory)
        config_file = tmp_path / "warm.toml"
        config_file.write_text(config)
        listing = tmp_path / "images.txt"
        listing.write_text(f"# what the nodes run\n{ALPINE}\n\n{MULTIARCH}  # arm64 only\n")
        direct = warm(
            "--cache-dir",
            str(directory),
            "--config",
            str(config_file),
            "--file",
            str(listing),
            "--platform",
            "linux/arm64",
        )
        assert direct.returncode == 0, direct.stderr
        summaries = lines(direct.stdout)
        assert summaries[0].startswith(f"warmed {ALPINE} (sha256:"), direct.stdout
        # The index and the arm64 image; its config and its layer.
        assert summaries[1].startswith(f"warmed {MULTIARCH} (sha256:")
        assert ": 2 manifests, 2 blobs fetched (" in summaries[1]
        assert list((directory / "tmp").iterdir()) == []
    finally:
        own.stop()

    # The upstream is gone: every pull below is served from a cache or fails.
    for label, reference, extra in [
        ("schema2", ALPINE, ()),
        ("manifest-list", MULTIARCH, ("--all",)),
        ("oci-index", OCI, ("--all",)),
    ]:
        copy(containers_env, f"docker://{through.address}/{reference}", tmp_path / label, *extra)
        assert (tmp_path / label / "manifest.json").read_bytes() == images[label].tags[
            "latest"
        ].body

    copy(containers_env, f"docker://{beside.address}/{ALPINE}", tmp_path / "beside-alpine")
    arm64 = ("--override-os", "linux", "--override-arch", "arm64")
    copy(containers_env, f"docker://{beside.address}/{MULTIARCH}", tmp_path / "arm64", *arm64)
    # The platform that was not warmed is not there: the mirror has only the upstream to ask.
    amd64 = ("--override-os", "linux", "--override-arch", "amd64")
    failed = skopeo(
        containers_env,
        "copy",
        "--src-tls-verify=false",
        *amd64,
        f"docker://{beside.address}/{MULTIARCH}",
        f"dir:{tmp_path / 'amd64'}",
        check=False,
    )
    assert failed.returncode != 0


def htpasswd_line(user: str, password: str) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:$2y${hashed[4:]}\n"


def test_a_mirror_with_users_is_warmed_with_a_password_from_stdin(
    images: dict[str, Image], new_mirror: Callable[..., Mirror], tmp_path: Path
) -> None:
    own = start_upstream(tmp_path / "own", require("docker-registry"), {"s": images["schema2"]})
    try:
        htpasswd = tmp_path / "htpasswd"
        htpasswd.write_text(htpasswd_line("ops", "warm-secret"))
        mirror = new_mirror(
            registry_config("docker.io", own.url)
            + f'\n[auth]\nhtpasswd = "{htpasswd}"\ntoken_key_file = "{tmp_path / "key"}"\n'
            + "anonymous = false\n"
        )
        refused = warm("--mirror", mirror.url, ALPINE)
        assert (refused.returncode, refused.stdout) == (2, "")
        assert lines(refused.stderr) == [
            f"dockermirror: the mirror at {mirror.url} has users:"
            " give --username and --password-stdin"
        ]
        login = ("--mirror", mirror.url, "--username", "ops", "--password-stdin", ALPINE)
        wrong = warm(*login, stdin="guess\n")
        assert (wrong.returncode, wrong.stdout) == (2, "")
        assert lines(wrong.stderr) == [
            f"dockermirror: the mirror at {mirror.url} refused the password of user ops"
        ]
        logged_in = warm(*login, stdin="warm-secret\n")
        assert logged_in.returncode == 0, logged_in.stderr
        assert logged_in.stdout.startswith(f"warmed {ALPINE} (sha256:")
        assert "warm-secret" not in mirror.peer.output()
    finally:
        own.stop()


def test_prefetch_keeps_a_running_mirror_warm(
    images: dict[str, Image],
    new_mirror: Callable[..., Mirror],
    containers_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """``[[prefetch]]`` in a real mirror's configuration fills its cache by itself."""
    own = start_upstream(
        tmp_path / "own", require("docker-registry"), {"schema2": images["schema2"]}
    )
    prefetch = f'\n[[prefetch]]\nimages = ["{ALPINE}"]\ninterval = 60\n'
    try:
        mirror = new_mirror(registry_config("docker.io", own.url, prefetch))
        # The first run comes soon after start (FIRST_DELAY).
        wait_for(lambda: "1 of 1 images warmed" in mirror.peer.output(), seconds=30)
    finally:
        own.stop()
    copy(containers_env, f"docker://{mirror.address}/{ALPINE}", tmp_path / "pulled")


def test_a_mirror_that_cannot_be_reached_is_named_as_such(closed_port: int) -> None:
    result = warm("--mirror", f"http://127.0.0.1:{closed_port}", "redis")
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"dockermirror: cannot use the mirror at http://127.0.0.1:{closed_port}: "
    )
    assert "upstream" not in result.stderr
