"""Claims on downloads between processes sharing a cache directory (storage/sharing.py).

Two claims on one directory in one process stand for two processes: flock locks
belong to open files, so they conflict within a process as between processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest
from twisted.internet.task import Clock

from dockermirror.registry.fills import POLL_INTERVAL, RemoteFill
from dockermirror.storage import layout
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.interface import BlobWriter, Scope
from dockermirror.storage.sharing import FillClaim, FillState, ForeignFill, claim
from dockermirror.storage.workers import InlineWorker

DIGEST = "sha256:" + "ab" * 32


def test_one_claims_the_others_follow(tmp_path: Path) -> None:
    first = claim(tmp_path, "https://r#", DIGEST)
    assert isinstance(first, FillClaim)
    second = claim(tmp_path, "https://r#", DIGEST)
    assert isinstance(second, ForeignFill)
    assert second.size() is None and second.progress() == (0, FillState.RUNNING)
    first.announce(10)
    assert second.size() == 10
    (tmp_path / layout.TMP).mkdir()
    first.part.write_bytes(b"12345")
    assert second.progress() == (5, FillState.RUNNING)
    # Verified and renamed, then released: complete, with the bytes in the final file.
    final = layout.blob_path(tmp_path, DIGEST)
    final.parent.mkdir(parents=True)
    with open(first.part, "ab") as part:
        part.write(b"67890")
    os.replace(first.part, final)
    assert second.progress() == (10, FillState.COMPLETE)
    first.release()
    assert second.progress() == (10, FillState.COMPLETE)
    second.close()


def test_a_claim_released_without_the_blob_is_a_failed_fill(tmp_path: Path) -> None:
    first = claim(tmp_path, "u", DIGEST)
    assert isinstance(first, FillClaim)
    follower = claim(tmp_path, "u", DIGEST)
    assert isinstance(follower, ForeignFill)
    first.release()
    assert follower.progress()[1] is FillState.FAILED
    follower.close()
    # And the next one to ask claims it afresh.
    again = claim(tmp_path, "u", DIGEST)
    assert isinstance(again, FillClaim)
    again.release()


def test_a_claimant_that_died_leaves_its_claim_free(tmp_path: Path) -> None:
    first = claim(tmp_path, "u", DIGEST)
    assert isinstance(first, FillClaim)
    (tmp_path / layout.TMP).mkdir()
    first.part.write_bytes(b"half of it")
    os.close(first._fd)  # what the kernel does when the process dies: no unlink, no release
    taken = claim(tmp_path, "u", DIGEST)
    assert isinstance(taken, FillClaim)
    assert not taken.part.exists()  # the dead claimant's bytes are no download
    taken.release()


def test_claims_are_per_upstream_identity(tmp_path: Path) -> None:
    """A blob fetched with the operator's credentials is no download for anonymous pulls."""
    mine = claim(tmp_path, "https://r#", DIGEST)
    theirs = claim(tmp_path, "https://r#operator", DIGEST)
    assert isinstance(mine, FillClaim) and isinstance(theirs, FillClaim)
    mine.release()
    theirs.release()


@attrs.define
class Following:
    """Two storages on one directory: the owner downloading a blob, the other following it."""

    clock: Clock
    writer: BlobWriter
    remote: RemoteFill


@pytest.fixture
def following(tmp_path: Path) -> Following:
    clock = Clock()
    scope = Scope("u", "library/redis")
    owner = FilesystemStorage(
        tmp_path, clock, 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    other = FilesystemStorage(
        tmp_path, clock, 10**9, 0, lookups=InlineWorker(), writes=InlineWorker(), owner=False
    )
    for storage in (owner, other):
        storage.open()
    assert owner.claim(DIGEST, scope) is None
    foreign = other.claim(DIGEST, scope)
    assert foreign is not None
    writer = owner.begin_write(DIGEST, 10, scope)
    return Following(clock, writer, RemoteFill(foreign, DIGEST, scope, 10, clock))


def test_a_remote_fill_announces_bytes_and_completes_only_once_renamed(
    following: Following,
) -> None:
    clock, writer, remote = following.clock, following.writer, following.remote
    heard: list[int] = []
    remote.listen(lambda: heard.append(remote.announced))
    writer.write(b"12345")
    clock.advance(POLL_INTERVAL)
    assert (remote.state, remote.announced) == (RemoteFill.RUNNING, 5)
    reader = remote.reader()
    assert reader.read(0, 10) == b"12345"
    writer.write(b"67890")
    clock.advance(POLL_INTERVAL)
    assert remote.state == RemoteFill.RUNNING  # all bytes there, but not verified yet
    writer.commit()
    clock.advance(POLL_INTERVAL)
    assert remote.state == RemoteFill.COMPLETE and heard[-1] == 10
    assert reader.read(0, 10) == b"1234567890"
    reader.close()


def test_a_remote_fill_that_the_other_process_drops_fails(following: Following) -> None:
    """A digest that did not match: the owner discards; followers must not look complete."""
    clock, writer, remote = following.clock, following.writer, following.remote
    ended: list[RemoteFill] = []
    remote.when_ended(ended.append)
    writer.write(b"1234567890")
    writer.discard()
    clock.advance(POLL_INTERVAL)
    assert remote.state == RemoteFill.FAILED and ended == [remote]
