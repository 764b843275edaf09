"""Disks that fill: a fill's clients stream through, the partial file goes, caching comes back.

The first test runs the mirror in memory on a real, small tmpfs that a test
file fills up mid-download: a real ENOSPC for the blob, then a real "database or
disk is full" for the index.  The second drives one fill by hand, to show that
streaming through holds little in memory: the upstream is paused for the
slowest client.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from zope.interface import implementer

from dockermirror.reference import digest_of
from dockermirror.registry import fills
from dockermirror.registry.fills import DetachedSlots, Fill
from dockermirror.registry.model import ByteRange
from dockermirror.registry.streams import CHUNK, FileStream
from dockermirror.storage import filesystem
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.index import Index
from dockermirror.storage.interface import Scope
from dockermirror.storage.workers import InlineWorker
from tests.fakes import FakeRegistry, Harness, HeldBlob, blob_handler, result_of

MiB = 1024 * 1024
BIG = os.urandom(2 * MiB)
BIG_DIGEST = digest_of(BIG)
SMALL = os.urandom(64 * 1024)
SMALL_DIGEST = digest_of(SMALL)
OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI, "pad": "x" * 8192}).encode()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted after the test (lazily: a test that failed may hold files)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill_up(directory: Path) -> Path:
    """Write to a file until the disk is full (unbuffered: every byte that fits is written)."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


def messages(events: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [e for e in events if text in str(e.get("log_format"))]


def test_a_disk_that_fills_mid_fill(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(fills, "NOTIFY_EVERY", 1)
    registry = FakeRegistry()
    registry.handlers[f"/v2/library/redis/blobs/{SMALL_DIGEST}"] = blob_handler(SMALL)
    registry.handlers["/v2/library/redis/manifests/7"] = blob_handler(
        MANIFEST, content_type=OCI.encode()
    )
    upstream = HeldBlob(registry, f"/v2/library/redis/blobs/{BIG_DIGEST}", BIG, 256 * 1024)
    cache = small_disk / "cache"
    harness = Harness(registry, {"cache": {"dir": str(cache), "min_free": 1}})
    store = harness.storage()
    try:
        small = harness.request("GET", f"/v2/redis/blobs/{SMALL_DIGEST}")
        assert harness.body(small) == SMALL  # stored: the disk had room
        # Two clients of one fill; the disk fills while the upstream is mid-body.
        pending = [harness.client.get(f"http://mirror.test/v2/redis/blobs/{BIG_DIGEST}")]
        harness.settle()
        pending.append(harness.client.get(f"http://mirror.test/v2/redis/blobs/{BIG_DIGEST}"))
        harness.settle()
        assert registry.paths("GET").count(f"/v2/library/redis/blobs/{BIG_DIGEST}") == 1
        assert len(list((cache / "tmp").iterdir())) == 1
        filler = fill_up(small_disk)
        upstream.release()
        harness.settle()
        for d in pending:
            body = harness.body(result_of(d))
            assert (len(body), hashlib.sha256(body).hexdigest()) == (len(BIG), BIG_DIGEST[7:])
        assert messages(log_events, "go on streaming from the upstream")
        # The partial file was dropped; nothing of the blob is kept.
        assert list((cache / "tmp").iterdir()) == []
        assert not store.path(BIG_DIGEST).exists()
        assert not store.writable()

        # Past the write retry, the disk still full (again: the partial file's space came back),
        # a hit's access time cannot be written.
        fill_up(small_disk)
        harness.clock.advance(filesystem.WRITE_RETRY + 1)
        # A manifest that cannot be stored: served, and no partial file left behind.
        response = harness.request("GET", "/v2/redis/manifests/7", headers={"Accept": [OCI]})
        assert (response.code, harness.body(response)) == (200, MANIFEST)
        assert list((cache / "tmp").iterdir()) == []
        assert not store.path(digest_of(MANIFEST)).exists()
        for _ in range(6):
            hit = harness.request("GET", f"/v2/redis/blobs/{SMALL_DIGEST}")
            assert (hit.code, harness.body(hit)) == (200, SMALL)
            harness.clock.advance(11)  # a flush
        index_full = messages(log_events, "cannot write to the cache")
        # SQLite may find room in its log for the first; then flushes fail, and the loop goes on.
        assert sum("database or disk is full" in str(e["error"]) for e in index_full) >= 2

        # Space returns: caching resumes by itself once the retry time has passed.
        filler.unlink()
        harness.clock.advance(filesystem.WRITE_RETRY + 1)
        registry.handlers[f"/v2/library/redis/blobs/{BIG_DIGEST}"] = blob_handler(BIG)
        for expected in ("MISS", "HIT"):
            response = harness.request("GET", f"/v2/redis/blobs/{BIG_DIGEST}")
            assert response.headers.getRawHeaders("x-dockermirror-cache") == [expected]
            assert harness.body(response) == BIG
        assert store.path(BIG_DIGEST).read_bytes() == BIG
    finally:
        assert harness.cache is not None
        harness.cache.stopService()


# Streaming through, by hand


@implementer(IPushProducer)
class Upstream:
    """A byte stream the test sends by hand; it is its consumer's streaming producer."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.cancelled = False
        self.done: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        self.cancelled = True

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        consumer.registerProducer(self, True)
        return self.done

    def send(self, data: bytes) -> None:
        self.consumer.write(data)

    def finish(self) -> None:
        self.consumer.unregisterProducer()
        self.done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        raise AssertionError("the upstream was stopped")


@implementer(IConsumer)
class Client:
    """Takes what it is sent; a slow one pauses its stream after each chunk until it reads."""

    def __init__(self, slow: bool) -> None:
        self.data = bytearray()
        self.slow = slow
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data
        if self.slow:
            self.producer.pauseProducing()

    def read(self) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()


def failing_fill(
    directory: Path, monkeypatch: pytest.MonkeyPatch, detached_max: int
) -> tuple[Clock, Fill, Upstream]:
    """A fill of BIG into real storage whose disk is full after half a MiB."""
    monkeypatch.setattr(fills, "NOTIFY_EVERY", 1)
    clock = Clock()
    storage = FilesystemStorage(
        directory, clock, 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    storage.open()
    writer = storage.begin_write(BIG_DIGEST, len(BIG), Scope("u", "r"))
    real_write = writer._file.write

    def write(data: bytes) -> int:
        if writer._file.tell() >= MiB // 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(data)

    monkeypatch.setattr(writer._file, "write", write)
    fill = Fill(
        writer, BIG_DIGEST, Scope("u", "r"), len(BIG), detached_max, clock, DetachedSlots(16)
    )
    upstream = Upstream()
    fill.start(upstream)
    return clock, fill, upstream


def test_streaming_through_pauses_the_upstream_for_the_slowest_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, fill, upstream = failing_fill(tmp_path, monkeypatch, detached_max=0)
    clients = [Client(slow=False), Client(slow=True)]
    whole = ByteRange(0, len(BIG) - 1)
    done = [
        FileStream(fill.reader(), whole, fill, clock, 60).deliver(client) for client in clients
    ]
    clock.advance(0)
    sent = most_held = 0
    for _ in range(10 * len(BIG) // CHUNK):  # a bound: a break must fail, not hang
        if sent == len(BIG):
            break
        if upstream.paused:
            clients[1].read()  # the slow client reads a chunk: the upstream may go on
            continue
        upstream.send(BIG[sent : sent + CHUNK])
        sent += CHUNK
        most_held = max(most_held, fill.held)
        assert fill.held == 0 or list(tmp_path.joinpath("tmp").iterdir()) == []
    assert sent == len(BIG)
    assert fill.on_disk == MiB // 2  # storing failed half-way into the blob
    assert upstream.pauses > 0
    assert most_held <= fills.THROUGH_BUFFER + CHUNK
    upstream.finish()
    for _ in range(len(BIG) // CHUNK):
        clients[1].read()
    for client, d in zip(clients, done, strict=True):
        assert result_of(d) is None
        assert bytes(client.data) == BIG
    assert fill.held == 0
    assert list((tmp_path / "blobs").rglob("*")) == []


def test_a_fill_no_client_follows_stops_when_it_cannot_be_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within detached_fill_max, a fill goes on without clients, to store the blob; once it
    cannot be, it has no reason to go on."""
    clock, fill, upstream = failing_fill(tmp_path, monkeypatch, detached_max=len(BIG))
    clock.advance(0)
    upstream.send(BIG[: MiB // 2])
    assert (fill.state, upstream.cancelled) == (Fill.RUNNING, False)
    upstream.send(BIG[MiB // 2 : MiB])  # the disk is full
    clock.advance(0)
    assert (fill.state, upstream.cancelled) == (Fill.FAILED, True)
    assert fill.held == 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_blob_the_index_cannot_take_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is renamed before its row is written: without the row, it must go too."""

    def full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Index, "add_blob", full)
    registry = FakeRegistry()
    registry.handlers[f"/v2/library/redis/blobs/{SMALL_DIGEST}"] = blob_handler(SMALL)
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    response = harness.request("GET", f"/v2/redis/blobs/{SMALL_DIGEST}")
    assert (response.code, harness.body(response)) == (200, SMALL)
    assert not harness.storage().path(SMALL_DIGEST).exists()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert harness.storage().total == 0


def test_a_writer_that_met_a_full_disk_goes_quietly(small_disk: Path) -> None:
    """Small writes wait in the file's buffer; closing retries them, and fails again."""
    storage = FilesystemStorage(
        small_disk, Clock(), 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    storage.open()
    try:
        writer = storage.begin_write(BIG_DIGEST, len(BIG), Scope("u", "r"))
        fill_up(small_disk)
        with pytest.raises(OSError) as full:
            for _ in range(1000):
                writer.write(b"x" * 1000)
        assert full.value.errno == errno.ENOSPC
        writer.discard()
        assert list((small_disk / "tmp").iterdir()) == []
    finally:
        result_of(storage.close())
