"""``dockermirror cache purge``: tags, and the content nothing else uses, removed; never more.

On the cache of :mod:`tests.test_cli_cache` (redis and alpine share a layer;
ghcr.io's o/i and the untagged o/j share one).  Also beside a mirror: while
another connection holds the index, with the mirror's storage open on the
directory, and a mirror in memory that pulls what was purged again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from twisted.web.server import Request

from dockermirror.cli import purge as purge_command
from dockermirror.cli.output import size
from dockermirror.cli.purgeplan import Plan
from dockermirror.reference import digest_of
from dockermirror.storage import layout
from dockermirror.storage.index import Index
from dockermirror.storage.interface import Scope
from tests.fakes import FakeRegistry, Handler, Harness, blob_handler, result_of
from tests.support.clients import require
from tests.test_cli_cache import (
    AC,
    AL,
    AM,
    GC,
    GL,
    GM,
    HUB,
    OCI_IMAGE,
    R_AMD,
    R_ARM,
    RC1,
    RC2,
    REDIS,
    RI,
    RL1,
    RL2,
    SHARED,
    UC,
    UM,
    data,
    fill,
    image,
    open_cache,
    run,
)

EVERYTHING = {
    digest_of(body)
    for body in (RI, R_AMD, R_ARM, RC1, RC2, RL1, RL2, SHARED, AM, AC, AL, GM, GC, GL, UM, UC)
}


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    fill(directory).close()
    return directory


def purge(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> tuple[int, str, str]:
    return run(capsys, "cache", "purge", *args, "--cache-dir", str(directory))


def indexed(directory: Path) -> set[str]:
    db = sqlite3.connect(directory / layout.INDEX)
    try:
        return {digest for (digest,) in db.execute("SELECT digest FROM blobs")}
    finally:
        db.close()


def on_disk(directory: Path) -> set[str]:
    return {digest for digest, _ in layout.blob_files(directory)}


def tags(directory: Path) -> set[str]:
    db = sqlite3.connect(directory / layout.INDEX)
    try:
        return {f"{r}:{t}" for r, t in db.execute("SELECT repository, tag FROM tags")}
    finally:
        db.close()


def linked(directory: Path, repository: str) -> set[str]:
    db = sqlite3.connect(directory / layout.INDEX)
    try:
        rows = db.execute("SELECT digest FROM links WHERE repository = ?", (repository,))
        return {digest for (digest,) in rows}
    finally:
        db.close()


def listed(kind: str, *bodies: bytes) -> list[str]:
    """The lines a purge prints for what it removed, in its order (by digest)."""
    ordered = sorted(bodies, key=digest_of)
    return [f"removed {kind} {digest_of(b)} ({size(len(b))})" for b in ordered]


def removed(*bodies: bytes) -> set[str]:
    return EVERYTHING - {digest_of(b) for b in bodies}


ALL_TAGS = {"library/redis:7", "library/redis:latest", "library/alpine:3", "o/i:v1"}


def test_a_whole_repository_keeps_the_layer_another_image_uses(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = purge(capsys, cache_dir, "redis")
    assert (code, err) == (0, "")
    gone = [RI, R_AMD, R_ARM, RC1, RC2, RL1, RL2]
    assert indexed(cache_dir) == on_disk(cache_dir) == EVERYTHING - {digest_of(b) for b in gone}
    assert tags(cache_dir) == ALL_TAGS - {"library/redis:7", "library/redis:latest"}
    assert linked(cache_dir, "library/redis") == set()  # the repository is gone from ls
    freed = size(sum(len(b) for b in gone))
    assert out.splitlines() == [
        "removed repository registry-1.docker.io/library/redis",
        "removed tag registry-1.docker.io/library/redis:7",
        "removed tag registry-1.docker.io/library/redis:latest",
        *listed("manifest", RI, R_AMD, R_ARM),
        *listed("blob", RC1, RC2, RL1, RL2),
        f"removed 2 tags, 3 manifests, 4 blobs: {freed}; 1 kept: still in use",
    ]
    # The image that shares the layer is whole.
    code, out, _ = run(capsys, "cache", "ls", "alpine", "--cache-dir", str(cache_dir), "--json")
    assert json.loads(out)["repositories"][0]["size"] == len(AM) + len(AC) + len(SHARED) + len(AL)


def test_a_tag_another_tag_shares_removes_only_the_tag(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = purge(capsys, cache_dir, "docker.io/library/redis:7")
    assert code == 0
    assert out.splitlines() == [
        "removed tag registry-1.docker.io/library/redis:7",
        "removed 1 tag, 0 manifests, 0 blobs: 0 B; 8 kept: still in use",
    ]
    assert indexed(cache_dir) == EVERYTHING
    assert tags(cache_dir) == ALL_TAGS - {"library/redis:7"}
    # The last tag: its image goes, but for the layer alpine uses.
    code, out, _ = purge(capsys, cache_dir, "redis:latest")
    assert code == 0
    assert indexed(cache_dir) == removed(RI, R_AMD, R_ARM, RC1, RC2, RL1, RL2)
    # Alpine's, then, has nothing shared left: all of it goes.
    code, _, _ = purge(capsys, cache_dir, "alpine:3")
    assert code == 0
    assert indexed(cache_dir) == on_disk(cache_dir) == {digest_of(b) for b in (GM, GC, GL, UM, UC)}


def test_a_layer_an_untagged_manifest_uses_stays(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """o/j was pulled by digest only: no tag, but its manifest keeps the layer it shares."""
    code, out, _ = purge(capsys, cache_dir, "ghcr.io/o/i:v1")
    assert code == 0
    assert indexed(cache_dir) == on_disk(cache_dir) == removed(GM, GC)
    assert out.splitlines()[-1] == (
        f"removed 1 tag, 1 manifest, 1 blob: {size(len(GM) + len(GC))}; 1 kept: still in use"
    )
    code, _, _ = purge(capsys, cache_dir, "ghcr.io/o/j")
    assert code == 0
    assert indexed(cache_dir) == removed(GM, GC, UM, UC, GL)


def test_a_blob_another_repository_showed_stays(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Linked to another repository (its manifest evicted since, say): served there, it stays."""
    db = sqlite3.connect(cache_dir / layout.INDEX)
    db.execute("INSERT INTO links VALUES (?, ?, ?)", (digest_of(RL1), HUB, "library/other"))
    db.commit()
    db.close()
    # Planned so (the removal checks the links again, on its own: it would keep it too).
    code, out, _ = purge(capsys, cache_dir, "redis", "--dry-run")
    assert code == 0
    assert f"would remove blob {digest_of(RL1)} " not in out
    assert purge(capsys, cache_dir, "redis")[0] == 0
    assert indexed(cache_dir) == removed(RI, R_AMD, R_ARM, RC1, RC2, RL2)


def test_a_manifest_pulled_by_digest_keeps_its_layers_in_the_same_repository(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis@sha256:... with redis's layer 1: purging redis's tags leaves that image whole."""
    pinned, pinned_config = image(data("pinned config"), [RL1]), data("pinned config")
    cache = open_cache(cache_dir)
    cache.image(pinned, [pinned_config, RL1], REDIS)
    cache.close()
    pinned_digests = {digest_of(pinned), digest_of(pinned_config)}
    assert purge(capsys, cache_dir, "redis:7")[0] == 0
    assert purge(capsys, cache_dir, "redis:latest")[0] == 0
    gone = {digest_of(b) for b in (RI, R_AMD, R_ARM, RC1, RC2, RL2)}
    assert indexed(cache_dir) == on_disk(cache_dir) == (EVERYTHING | pinned_digests) - gone
    # The whole repository, then: the pinned image too.
    assert purge(capsys, cache_dir, "redis")[0] == 0
    assert indexed(cache_dir) == EVERYTHING - gone - {digest_of(RL1)}


def test_a_repository_that_only_showed_shared_content_goes_from_ls(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No tag, no manifest: only a link to a layer others use.  The link goes, the layer stays."""
    db = sqlite3.connect(cache_dir / layout.INDEX)
    db.execute("INSERT INTO links VALUES (?, ?, ?)", (digest_of(SHARED), HUB, "library/other"))
    db.commit()
    db.close()
    code, out, _ = purge(capsys, cache_dir, "other")
    assert code == 0
    assert out.splitlines() == [
        "removed repository registry-1.docker.io/library/other",
        "removed 0 tags, 0 manifests, 0 blobs: 0 B; 1 kept: still in use",
    ]
    assert indexed(cache_dir) == EVERYTHING
    assert linked(cache_dir, "library/other") == set()
    assert purge(capsys, cache_dir, "other")[0] == 1


def test_content_another_upstream_user_tagged_stays(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = open_cache(cache_dir)
    bob = Scope("https://registry-1.docker.io#bob", "library/redis")
    cache.manifest(RI, "application/vnd.oci.image.index.v1+json", bob)
    cache.tag(bob, "7", digest_of(RI))
    cache.close()
    code, out, _ = purge(capsys, cache_dir, "redis")
    assert code == 0
    assert (
        out.splitlines()[-1] == "removed 2 tags, 0 manifests, 0 blobs: 0 B; 8 kept: still in use"
    )
    assert indexed(cache_dir) == EVERYTHING
    assert tags(cache_dir) == ALL_TAGS - {"library/redis:7", "library/redis:latest"} | {
        "library/redis:7"
    }
    code, out, _ = purge(capsys, cache_dir, "bob@registry-1.docker.io/redis:7")
    assert code == 0
    assert indexed(cache_dir) == removed(RI, R_AMD, R_ARM, RC1, RC2, RL1, RL2)


def test_a_manifest_by_digest_takes_its_tags(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = purge(capsys, cache_dir, digest_of(RI))
    assert code == 0
    assert out.splitlines()[:2] == [
        "removed tag registry-1.docker.io/library/redis:7",
        "removed tag registry-1.docker.io/library/redis:latest",
    ]
    assert indexed(cache_dir) == removed(RI, R_AMD, R_ARM, RC1, RC2, RL1, RL2)


@pytest.mark.parametrize("body", [SHARED, R_AMD])
def test_a_digest_a_manifest_still_uses_is_kept(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    code, out, err = purge(capsys, cache_dir, digest_of(body))
    assert (code, out) == (1, "")
    users = sorted(digest_of(m) for m in (R_AMD, R_ARM, AM, RI) if digest_of(body) in m.decode())
    assert err == (
        f"dockermirror: {digest_of(body)} is still used by"
        f" {', '.join(f'manifest {u}' for u in users)}; nothing was removed\n"
    )
    assert indexed(cache_dir) == on_disk(cache_dir) == EVERYTHING


def test_a_blob_by_digest_goes_though_other_repositories_showed_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Named by digest, a blob no manifest refers to goes wherever it was shown."""
    cache = open_cache(tmp_path / "cache")
    loose = b"a blob pulled on its own" * 10
    cache.blob(loose, REDIS)
    cache.blob(loose, Scope(HUB, "library/alpine"))
    cache.close()
    code, out, _ = purge(capsys, tmp_path / "cache", digest_of(loose))
    assert code == 0
    assert out.splitlines() == [
        f"removed blob {digest_of(loose)} ({size(len(loose))})",
        f"removed 0 tags, 0 manifests, 1 blob: {size(len(loose))}",
    ]
    assert indexed(tmp_path / "cache") == on_disk(tmp_path / "cache") == set()


@pytest.mark.parametrize("target", ["postgres", "redis:8", "quay.io/o/i", f"sha256:{'0' * 64}"])
def test_nothing_matched_exits_1(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    code, out, err = purge(capsys, cache_dir, target)
    assert (code, out) == (1, "")
    assert err == f"dockermirror: nothing cached matches {target!r}\n"
    assert indexed(cache_dir) == EVERYTHING


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("sha256:abc", "'sha256:abc' is not a digest"),
        ("redis:bad/tag:", "'redis:bad/tag:': '' is not a tag"),
        ("redis:-x", "'redis:-x': '-x' is not a tag"),
    ],
)
def test_a_target_that_is_no_name_exits_2(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], target: str, problem: str
) -> None:
    code, out, err = purge(capsys, cache_dir, target)
    assert (code, out, err) == (2, "", f"dockermirror: {problem}\n")


def test_a_dry_run_removes_nothing(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = purge(capsys, cache_dir, "ghcr.io/o/i", "--dry-run")
    assert code == 0
    assert out.splitlines()[:2] == [
        "would remove repository ghcr.io/o/i",
        "would remove tag ghcr.io/o/i:v1",
    ]
    assert out.splitlines()[-1].startswith("would remove 1 tag, 1 manifest, 1 blob: ")
    assert indexed(cache_dir) == on_disk(cache_dir) == EVERYTHING
    assert tags(cache_dir) == ALL_TAGS


def test_a_tag_bound_again_meanwhile_keeps_its_image(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running mirror tags the image again while the purge runs: the image stays."""
    real_drop = purge_command._drop_tags

    def tagged_again(index: Index, plan: Plan) -> list[object]:
        dropped = real_drop(index, plan)
        db = sqlite3.connect(cache_dir / layout.INDEX)
        db.execute(
            "INSERT INTO tags VALUES (?, ?, ?, ?, ?)",
            (HUB, "library/redis", "7", digest_of(RI), time.time()),
        )
        db.commit()
        db.close()
        return list(dropped)

    monkeypatch.setattr(purge_command, "_drop_tags", tagged_again)
    code, out, _ = purge(capsys, cache_dir, "redis")
    assert code == 0
    assert (
        out.splitlines()[-1] == "removed 2 tags, 0 manifests, 0 blobs: 0 B; 1 kept: still in use"
    )
    assert indexed(cache_dir) == on_disk(cache_dir) == EVERYTHING


def test_a_layer_another_repository_showed_meanwhile_stays(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running mirror serves a layer under another repository while the purge runs."""
    real_drop = purge_command._drop_tags

    def linked_meanwhile(index: Index, plan: Plan) -> list[object]:
        dropped = real_drop(index, plan)
        db = sqlite3.connect(cache_dir / layout.INDEX)
        db.execute("INSERT INTO links VALUES (?, ?, ?)", (digest_of(RL1), HUB, "library/other"))
        db.commit()
        db.close()
        return list(dropped)

    monkeypatch.setattr(purge_command, "_drop_tags", linked_meanwhile)
    assert purge(capsys, cache_dir, "redis")[0] == 0
    assert indexed(cache_dir) == on_disk(cache_dir) == removed(RI, R_AMD, R_ARM, RC1, RC2, RL2)


def test_a_fresh_copy_put_in_place_meanwhile_is_left_alone(
    cache_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill of the mirror renames a new file over the one planned for removal: it stays."""
    real_forget = purge_command._forget
    fresh = layout.blob_path(cache_dir, digest_of(GC))

    def filled_meanwhile(index: Index, digest: str, plan: Plan) -> bool:
        if digest == digest_of(GC):
            temp = cache_dir / "tmp" / "fill"
            temp.write_bytes(GC)
            os.replace(temp, fresh)
        return real_forget(index, digest, plan)

    monkeypatch.setattr(purge_command, "_forget", filled_meanwhile)
    assert purge(capsys, cache_dir, "ghcr.io/o/i")[0] == 0
    assert fresh.read_bytes() == GC
    assert digest_of(GM) not in on_disk(cache_dir)


def test_it_waits_for_a_lock_another_connection_holds(cache_dir: Path) -> None:
    holder = sqlite3.connect(cache_dir / layout.INDEX, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen(
        [require("dockermirror"), "cache", "purge", "redis", "--cache-dir", str(cache_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    assert process.poll() is None  # waiting
    holder.execute("COMMIT")
    holder.close()
    stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (0, "")
    assert stdout.splitlines()[-1].startswith("removed 2 tags, 3 manifests, 4 blobs: ")
    assert indexed(cache_dir) == removed(RI, R_AMD, R_ARM, RC1, RC2, RL1, RL2)


def test_a_lock_held_too_long_is_an_error(cache_dir: Path) -> None:
    holder = sqlite3.connect(cache_dir / layout.INDEX, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = subprocess.run(
            [require("dockermirror"), "cache", "purge", "redis", "--cache-dir", str(cache_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"dockermirror: cannot purge the cache in {cache_dir}: database is locked\n"
    )
    assert indexed(cache_dir) == EVERYTHING


def test_the_mirrors_storage_open_on_the_directory_sees_the_purge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = fill(tmp_path / "cache")  # the mirror's storage, still open
    store = cache.store
    assert purge(capsys, tmp_path / "cache", "redis")[0] == 0
    assert result_of(store.stored_blob(digest_of(RL1), REDIS)) is None
    assert result_of(store.manifest(digest_of(RI), REDIS)) is None
    assert result_of(store.tag(REDIS, "7")) is None
    alpine = Scope(HUB, "library/alpine")
    assert result_of(store.stored_blob(digest_of(SHARED), alpine)) is not None
    assert result_of(store.manifest(digest_of(AM), alpine)) is not None
    cache.close()


def test_the_not_a_cache_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep").write_text("mine")
    code, out, err = purge(capsys, tmp_path, "redis")
    assert (code, out) == (2, "")
    problem = f"cannot purge the cache in {tmp_path}: {tmp_path} is no dockermirror cache"
    assert err == f"dockermirror: {problem}\n"


# A mirror in memory that pulled an image: after the purge it pulls it again, from upstream.

LAYER = bytes(range(256)) * 64
CONFIG = b'{"architecture": "amd64"}'
PULLED = image(CONFIG, [LAYER])


def serve(body: bytes, media_type: str) -> Handler:
    def handle(request: Request) -> bytes:
        request.setHeader(b"content-type", media_type.encode())
        request.setHeader(b"docker-content-digest", digest_of(body).encode())
        return body

    return handle


def test_a_running_mirror_fetches_what_was_purged_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], observe_errors: list[object]
) -> None:
    registry = FakeRegistry()
    registry.handlers["/v2/library/redis/manifests/7"] = serve(PULLED, OCI_IMAGE)
    for body in (CONFIG, LAYER):
        registry.handlers[f"/v2/library/redis/blobs/{digest_of(body)}"] = blob_handler(body)
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})

    def pull() -> list[str]:
        outcomes = []
        for path in ["manifests/7", *(f"blobs/{digest_of(b)}" for b in (CONFIG, LAYER))]:
            response = harness.request(
                "GET", f"/v2/library/redis/{path}", headers={"Accept": [OCI_IMAGE]}
            )
            assert response.code == 200
            harness.body(response)
            outcomes.append(response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0])
        return outcomes

    assert pull() == ["MISS", "MISS", "MISS"]
    assert pull() == ["HIT", "HIT", "HIT"]
    code, out, _ = purge(capsys, tmp_path / "cache", "upstream.test/library/redis:7")
    assert code == 0
    assert out.splitlines()[-1].startswith("removed 1 tag, 1 manifest, 2 blobs: ")
    assert on_disk(tmp_path / "cache") == set()
    gets = len(registry.paths("GET"))
    assert pull() == ["MISS", "MISS", "MISS"]
    assert len(registry.paths("GET")) == gets + 3
    assert pull() == ["HIT", "HIT", "HIT"]
