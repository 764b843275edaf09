"""``dockermirror cache stats`` and ``cache ls`` on a cache the mirror's own storage filled.

The cache: Docker Hub's redis (an index of two platforms, tags 7 and latest)
and alpine (tag 3), sharing a layer; ghcr.io's o/i (tag v1), and o/j pulled by
digest only, sharing a layer.  The module's helpers make that cache for the
purge tests too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from dockermirror import cli
from dockermirror.cli.output import local_time, size
from dockermirror.reference import digest_of
from dockermirror.storage import layout
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.interface import Scope
from dockermirror.storage.workers import InlineWorker
from tests.fakes import result_of
from tests.support.peers import ROOT

HUB = "https://registry-1.docker.io#"
GHCR = "https://ghcr.io#"
REDIS = Scope(HUB, "library/redis")
ALPINE = Scope(HUB, "library/alpine")
OI = Scope(GHCR, "o/i")
OJ = Scope(GHCR, "o/j")
OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
T0 = 1_700_000_000.0


def data(name: str, size: int = 1000) -> bytes:
    return (name.encode() * size)[:size]


def descriptor(body: bytes, media_type: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(body), "size": len(body)}


def image(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE,
            "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [
                descriptor(layer, "application/vnd.oci.image.layer.v1.tar") for layer in layers
            ],
        }
    ).encode()


def index(manifests: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(m, OCI_IMAGE) for m in manifests],
        }
    ).encode()


SHARED = data("shared layer", 5000)
RC1, RL1, RC2, RL2 = (
    data("redis config 1"),
    data("redis layer 1", 3000),
    data("redis config 2"),
    data("redis layer 2", 4000),
)
R_AMD = image(RC1, [SHARED, RL1])
R_ARM = image(RC2, [SHARED, RL2])
RI = index([R_AMD, R_ARM])
AC, AL = data("alpine config"), data("alpine layer", 2000)
AM = image(AC, [SHARED, AL])
GC, GL = data("ghcr config"), data("ghcr layer", 7000)
GM = image(GC, [GL])
UC = data("unnamed config")
UM = image(UC, [GL])


@attrs.define
class Cache:
    """A cache directory and a way to add to it, as the mirror does."""

    directory: Path
    clock: Clock
    store: FilesystemStorage

    def blob(self, body: bytes, scope: Scope) -> str:
        writer = self.store.begin_write(digest_of(body), len(body), scope)
        writer.write(body)
        result_of(writer.commit())
        return digest_of(body)

    def manifest(self, body: bytes, media_type: str, scope: Scope) -> str:
        assert result_of(self.store.put_manifest(digest_of(body), media_type, body, scope))
        return digest_of(body)

    def image(self, manifest: bytes, blobs: list[bytes], scope: Scope) -> str:
        for blob in blobs:
            self.blob(blob, scope)
        return self.manifest(manifest, OCI_IMAGE, scope)

    def tag(self, scope: Scope, tag: str, digest: str) -> None:
        result_of(self.store.set_tag(scope, tag, digest))

    def close(self) -> None:
        result_of(self.store.flush())
        result_of(self.store.close())


def open_cache(directory: Path, clock: Clock | None = None) -> Cache:
    clock = clock or Clock()
    if not clock.seconds():
        clock.advance(T0)
    store = FilesystemStorage(
        directory, clock, 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    store.open()
    assert store.is_open
    return Cache(directory, clock, store)


def fill(directory: Path) -> Cache:
    """The module's cache, still open (the mirror's storage on it); close() it when done."""
    cache = open_cache(directory)
    cache.image(R_AMD, [RC1, SHARED, RL1], REDIS)
    cache.image(R_ARM, [RC2, SHARED, RL2], REDIS)
    cache.manifest(RI, OCI_INDEX, REDIS)
    cache.tag(REDIS, "7", digest_of(RI))
    cache.tag(REDIS, "latest", digest_of(RI))
    cache.clock.advance(3600)
    cache.image(AM, [AC, SHARED, AL], ALPINE)
    cache.tag(ALPINE, "3", digest_of(AM))
    cache.clock.advance(3600)
    cache.image(GM, [GC, GL], OI)
    cache.tag(OI, "v1", digest_of(GM))
    cache.image(UM, [UC, GL], OJ)  # pulled by digest: no tag
    return cache


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    fill(directory).close()
    return directory


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(extra)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(text: str) -> list[list[str]]:
    """A table's rows (the header dropped), split where columns are (two spaces or more)."""
    import re

    return [re.split(r" {2,}", line.strip()) for line in text.splitlines()[1:]]


REDIS_IMAGE = [RI, R_AMD, R_ARM, RC1, RC2, SHARED, RL1, RL2]
ALPINE_IMAGE = [AM, AC, SHARED, AL]
OI_IMAGE = [GM, GC, GL]
OJ_IMAGE = [UM, UC, GL]


def total(parts: list[bytes]) -> int:
    return sum(len(p) for p in parts)


# stats


def test_stats_counts_per_registry_and_in_all(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "cache", "stats", "--cache-dir", str(cache_dir), "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    hub_bytes = total(list(dict.fromkeys(REDIS_IMAGE + ALPINE_IMAGE)))
    ghcr_bytes = total(list(dict.fromkeys(OI_IMAGE + OJ_IMAGE)))
    assert document["registries"] == [
        {
            "registry": "ghcr.io",
            "upstream": "https://ghcr.io",
            "user": "",
            "repositories": 2,
            "tags": 1,
            "manifests": 2,
            "blobs": 3,
            "bytes": ghcr_bytes,
        },
        {
            "registry": "registry-1.docker.io",
            "upstream": "https://registry-1.docker.io",
            "user": "",
            "repositories": 2,
            "tags": 3,
            "manifests": 4,
            "blobs": 7,
            "bytes": hub_bytes,
        },
    ]
    assert document["total"] == {
        "repositories": 4,
        "tags": 4,
        "manifests": 6,
        "blobs": 10,
        "bytes": hub_bytes + ghcr_bytes,
    }
    assert document["directory"] == str(cache_dir)


def test_stats_for_people(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "cache",
        "stats",
        "--cache-dir",
        str(cache_dir),
        "--config",
        str(config_file(tmp_path)),
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == [
        "REGISTRY",
        "REPOSITORIES",
        "TAGS",
        "MANIFESTS",
        "BLOBS",
        "BYTES",
    ]
    hub = size(total(list(dict.fromkeys(REDIS_IMAGE + ALPINE_IMAGE))))
    assert rows(out)[0] == ["docker.io", "2", "3", "4", "7", hub]
    assert rows(out)[1][0] == "ghcr.io"
    assert rows(out)[2][:5] == ["total", "4", "4", "6", "10"]


def test_stats_of_a_directory_that_is_no_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("mine")
    code, out, err = run(capsys, "cache", "stats", "--cache-dir", str(tmp_path))
    assert (code, out) == (2, "")
    problem = f"cannot read the cache in {tmp_path}: {tmp_path} is no dockermirror cache"
    assert err == f"dockermirror: {problem}\n"


def test_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_cache(tmp_path / "cache").close()
    code, out, _ = run(capsys, "cache", "stats", "--cache-dir", str(tmp_path / "cache"), "--json")
    assert code == 0
    assert json.loads(out)["total"] == dict.fromkeys(
        ["repositories", "tags", "manifests", "blobs", "bytes"], 0
    )
    code, out, _ = run(capsys, "cache", "ls", "--cache-dir", str(tmp_path / "cache"))
    assert (code, rows(out)) == (0, [])


# ls


def test_ls_shows_repositories_by_host_without_a_configuration(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "cache", "ls", "--cache-dir", str(cache_dir))
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST", "ACCESS"]
    redis = size(total(REDIS_IMAGE))
    # The shared layer's pull for alpine, an hour later, is redis's last access too.
    first, later = local_time(T0 + 3600), local_time(T0 + 7200)
    assert rows(out) == [
        ["ghcr.io/o/i", "v1", digest_of(GM)[:19], size(total(OI_IMAGE)), later],
        ["ghcr.io/o/j", "-", "-", size(total(OJ_IMAGE)), later],
        [
            "registry-1.docker.io/library/alpine",
            "3",
            digest_of(AM)[:19],
            size(total(ALPINE_IMAGE)),
            local_time(T0 + 3600),
        ],
        ["registry-1.docker.io/library/redis", "7", digest_of(RI)[:19], redis, first],
        ["registry-1.docker.io/library/redis", "latest", digest_of(RI)[:19], redis, first],
    ]


def test_ls_shows_registry_names_with_a_configuration(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    code, out, _ = run(
        capsys, "cache", "ls", "--cache-dir", str(cache_dir), "--config", str(config)
    )
    assert code == 0
    assert [row[0] for row in rows(out)] == [
        "docker.io/library/alpine",
        "docker.io/library/redis",
        "docker.io/library/redis",
        "ghcr.io/o/i",
        "ghcr.io/o/j",
    ]


def test_the_configuration_names_the_cache_directory(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path, f'[cache]\ndir = "{cache_dir}"\n')
    code, out, _ = run(capsys, "cache", "ls", "--config", str(config))
    assert code == 0
    assert len(rows(out)) == 5


@pytest.mark.parametrize(
    "name",
    [
        "redis",
        "library/redis",
        "docker.io/redis",
        "docker.io/library/redis",
        "registry-1.docker.io/library/redis",
        "registry-1.docker.io/redis",
    ],
)
@pytest.mark.parametrize("configured", [False, True])
def test_ls_of_one_repository_accepts_names_as_docker_writes_them(
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    configured: bool,
) -> None:
    options = ["--config", str(config_file(tmp_path))] if configured else []
    code, out, err = run(capsys, "cache", "ls", name, "--cache-dir", str(cache_dir), *options)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == ("docker.io" if configured else "registry-1.docker.io") + "/library/redis"
    redis, when = size(total(REDIS_IMAGE)), local_time(T0 + 3600)
    assert lines[1].split() == ["TAG", "DIGEST", "SIZE", "LAST", "ACCESS"]
    tags = [line.split(None, 2) for line in lines[2:4]]
    assert tags == [
        ["7", digest_of(RI), f"{redis}  {when}"],
        ["latest", digest_of(RI), f"{redis}  {when}"],
    ]
    assert lines[4] == ""
    assert lines[5].split() == ["MANIFEST", "TYPE", "SIZE", "LAST", "ACCESS", "TAGS"]
    manifests = {line.split()[0]: line.split() for line in lines[6:]}
    assert set(manifests) == {digest_of(RI), digest_of(R_AMD), digest_of(R_ARM)}
    assert manifests[digest_of(RI)][1] == OCI_INDEX
    assert manifests[digest_of(RI)][-2:] == ["7,", "latest"]
    assert manifests[digest_of(R_AMD)][1] == OCI_IMAGE
    assert manifests[digest_of(R_AMD)][-1] == "-"
    assert " ".join(manifests[digest_of(R_AMD)][2:4]) == size(total([R_AMD, RC1, SHARED, RL1]))


def test_ls_of_a_repository_at_another_registry(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "cache", "ls", "ghcr.io/o/j", "--cache-dir", str(cache_dir), "--json"
    )
    assert code == 0
    (repository,) = json.loads(out)["repositories"]
    assert repository == {
        "name": "ghcr.io/o/j",
        "registry": "ghcr.io",
        "repository": "o/j",
        "upstream": "https://ghcr.io",
        "user": "",
        "size": total(OJ_IMAGE),
        "accessed": "2023-11-15T00:13:20+00:00",
        "tags": [],
        "manifests": [
            {
                "digest": digest_of(UM),
                "media_type": OCI_IMAGE,
                "size": total(OJ_IMAGE),
                "accessed": "2023-11-15T00:13:20+00:00",
                "tags": [],
            }
        ],
    }


@pytest.mark.parametrize("name", ["postgres", "ghcr.io/o/nothing", "quay.io/o/i", "o/i"])
def test_ls_of_a_repository_not_cached_exits_1(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, err = run(capsys, "cache", "ls", name, "--cache-dir", str(cache_dir))
    assert (code, out) == (1, "")
    assert err == f"dockermirror: nothing cached matches {name!r}\n"


def test_a_name_two_cached_repositories_could_have_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``acme/tool``: Hub's acme/tool, or tool at the registry a configuration calls acme."""
    cache = open_cache(tmp_path / "cache")
    acme = Scope("https://acme.example#", "tool")
    hub = Scope(HUB, "acme/tool")
    cache.tag(acme, "1", cache.image(AM, [AC, SHARED, AL], acme))
    cache.tag(hub, "1", cache.image(GM, [GC, GL], hub))
    cache.close()
    config = config_file(tmp_path, '[registries.acme]\nurl = "https://acme.example"\n')
    options = ["--cache-dir", str(tmp_path / "cache"), "--config", str(config)]
    code, out, err = run(capsys, "cache", "ls", "acme/tool", *options)
    assert (code, out) == (2, "")
    assert err == (
        "dockermirror: 'acme/tool' could be any of acme/tool, docker.io/acme/tool: name one with"
        " its registry\n"
    )
    code, out, _ = run(capsys, "cache", "ls", "docker.io/acme/tool", *options)
    assert (code, out.splitlines()[0]) == (0, "docker.io/acme/tool")
    # Without the configuration, acme is no registry's name: Docker Hub's it is.
    code, out, _ = run(capsys, "cache", "ls", "acme/tool", "--cache-dir", str(tmp_path / "cache"))
    assert (code, out.splitlines()[0]) == (0, "registry-1.docker.io/acme/tool")
    code, out, _ = run(
        capsys, "cache", "ls", "acme.example/tool", "--cache-dir", str(tmp_path / "cache")
    )
    assert (code, out.splitlines()[0]) == (0, "acme.example/tool")


def test_users_of_an_upstream_are_told_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Content pulled with the operator's account, and a pass-through client's."""
    cache = open_cache(tmp_path / "cache")
    bob = Scope("https://registry-1.docker.io#bob", "library/redis")
    alice = Scope("https://registry-1.docker.io#passthrough:alice", "library/redis")
    for scope in (Scope(HUB, "library/redis"), bob, alice):
        cache.tag(scope, "7", cache.image(AM, [AC, SHARED, AL], scope))
    cache.close()
    directory = ["--cache-dir", str(tmp_path / "cache")]
    code, out, _ = run(capsys, "cache", "ls", *directory)
    assert [row[0] for row in rows(out)] == [
        "alice@registry-1.docker.io/library/redis",
        "bob@registry-1.docker.io/library/redis",
        "registry-1.docker.io/library/redis",
    ]
    code, out, _ = run(capsys, "cache", "ls", "bob@registry-1.docker.io/redis", *directory)
    assert (code, out.splitlines()[0]) == (0, "bob@registry-1.docker.io/library/redis")
    config = config_file(
        tmp_path,
        '[registries.hub-bob]\nurl = "https://registry-1.docker.io"\nusername = "bob"\n'
        'password = "secret"\n'
        '[registries.hub-own]\nurl = "https://registry-1.docker.io"\n'
        'credentials = "passthrough"\n',
    )
    code, out, _ = run(capsys, "cache", "ls", *directory, "--config", str(config))
    assert [row[0] for row in rows(out)] == [
        "alice@hub-own/library/redis",
        "docker.io/library/redis",
        "hub-bob/library/redis",
    ]
    code, out, _ = run(capsys, "cache", "ls", "hub-bob/redis", *directory, "--config", str(config))
    assert (code, out.splitlines()[0]) == (0, "hub-bob/library/redis")
    code, out, _ = run(capsys, "cache", "stats", "--json", *directory, "--config", str(config))
    assert [(r["registry"], r["user"]) for r in json.loads(out)["registries"]] == [
        ("alice@hub-own", "passthrough:alice"),
        ("docker.io", ""),
        ("hub-bob", "bob"),
    ]


def test_root_leaves_a_cache_that_belongs_to_the_mirror_s_user_alone(tmp_path: Path) -> None:
    """What root wrote there the mirror's user could not change (DynamicUser under systemd)."""
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (as CI does)")
    cache = tmp_path / "cache"
    cache.mkdir()
    layout.claim(cache)
    os.chown(cache, 54321, 54321)
    result = subprocess.run(
        [sys.executable, "-m", "dockermirror.cli", "cache", "stats", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "belongs to uid 54321, the mirror's user" in result.stderr
    assert "systemd-run" in result.stderr


def test_warm_does_not_fill_a_directory_nobody_reads(tmp_path: Path) -> None:
    """The configuration's cache.dir that is no cache yet is named, not silently created."""
    config = tmp_path / "m.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "nothing"}"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockermirror.cli",
            "cache",
            "warm",
            "--config",
            str(config),
            "redis",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "no cache in" in result.stderr
    assert not (tmp_path / "nothing").exists()
