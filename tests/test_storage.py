"""The filesystem storage: the index off the reactor thread, and failures that never reach clients.

The first test runs on the real reactor with real worker threads and a second
SQLite connection holding a lock, as another process would; the others run the
mirror in memory with a broken index.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from dockermirror.reference import digest_of
from dockermirror.registry.caching import CachingRegistry, upstream_key
from dockermirror.storage import index
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.index import Index
from dockermirror.storage.interface import BlobEntry, Scope
from dockermirror.storage.workers import InlineWorker, ThreadWorker
from tests.fakes import FakeRegistry, Harness, blob_handler, result_of

BLOB = bytes(range(256)) * 40
DIGEST = digest_of(BLOB)
BLOB_PATH = f"/v2/library/redis/blobs/{DIGEST}"
REDIS = Scope("u", "library/redis")


@pytest_twisted.ensureDeferred
async def test_lookups_go_on_while_a_write_waits_for_a_lock(tmp_path: Path) -> None:
    storage = threaded_storage(tmp_path)
    await storage.open()
    try:
        await storage.put_manifest(DIGEST, "application/x-m", BLOB, REDIS)
        await storage.set_tag(REDIS, "7", DIGEST)
        other = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            write = storage.set_tag(REDIS, "8", DIGEST)
            written: list[object] = []
            write.addBoth(written.append)
            tag = await storage.tag(REDIS, "7")
            stored = await storage.manifest(DIGEST, REDIS)
            blob = await storage.stored_blob(DIGEST, REDIS)
            # Lookups answered while the write still waits for the other connection's lock.
            assert written == []
            assert tag is not None and tag.digest == DIGEST
            assert stored is not None and stored.body == BLOB
            assert blob == BlobEntry(len(BLOB), linked=True)
        finally:
            other.execute("COMMIT")
            other.close()
        await write
        assert (await storage.tag(REDIS, "8")) is not None
        assert storage.writable()
    finally:
        await storage.close()


def threaded_storage(directory: Path, max_size: int = 10**9) -> FilesystemStorage:
    return FilesystemStorage(
        directory,
        reactor,
        max_size,
        0,
        lookups=ThreadWorker(reactor, "test-lookups"),
        writes=ThreadWorker(reactor, "test-writes"),
    )


@pytest_twisted.ensureDeferred
async def test_closing_does_not_wait_for_a_lock_held_elsewhere(tmp_path: Path) -> None:
    storage = threaded_storage(tmp_path)
    await storage.open()
    other = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        storage.touch(DIGEST)  # a flush to make on close
        writes = [storage.set_tag(REDIS, str(i), DIGEST) for i in range(5)]
        # Five writes of 5 s each would hold shutdown for 25 s; this fails after 15 s.
        await storage.close().addTimeout(15, reactor)
        assert all(w.called for w in writes)
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest_twisted.ensureDeferred
async def test_evictions_do_not_overlap(tmp_path: Path) -> None:
    storage = threaded_storage(tmp_path, max_size=10 * 1000)
    await storage.open()
    try:
        for i in range(20):
            body = bytes([i]) * 1000
            await storage.put_manifest(digest_of(body), "application/x-m", body, REDIS)
        assert storage.total == 20 * 1000
        # Two runs asked for at once: the second must not remove as much again.
        await gatherResults([storage.evict(set()), storage.evict(set())])
        assert 8 * 1000 <= storage.total <= 9 * 1000
    finally:
        await storage.close()


def blob_registry() -> FakeRegistry:
    registry = FakeRegistry()
    registry.handlers[BLOB_PATH] = blob_handler(BLOB)
    return registry


def pull_twice(harness: Harness) -> list[tuple[int, bytes]]:
    results = []
    for _ in range(2):
        response = harness.request("GET", BLOB_PATH)
        results.append((response.code, harness.body(response)))
    return results


def test_corrupt_index_means_streaming_through_until_it_opens(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    registry = blob_registry()
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    assert pull_twice(harness) == [(200, BLOB)] * 2
    assert registry.paths("GET").count(BLOB_PATH) == 2
    # The operator removes the broken index; the cache is tried again a minute later.
    (tmp_path / "cache" / "index.sqlite").unlink()
    harness.clock.advance(61)
    assert pull_twice(harness) == [(200, BLOB)] * 2
    assert registry.paths("GET").count(BLOB_PATH) == 3  # the second was a hit


def fail(*args: Any) -> None:
    raise sqlite3.OperationalError("attempt to write a readonly database")


def manifest(request: Any) -> bytes:
    request.setHeader(b"content-type", b"application/x-m")
    return b"{}"


def test_read_only_index_answers_and_streams_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Index, "add_blob", fail)
    registry = blob_registry()
    registry.handlers["/v2/library/redis/manifests/7"] = manifest
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    assert harness.request("GET", "/v2/redis/manifests/7").code == 200
    assert isinstance(harness.registry_stack, CachingRegistry)
    storage = harness.registry_stack.storage
    # The manifest could not be stored, so its tag was not bound to it either.
    assert (
        result_of(
            storage.tag(
                Scope(upstream_key(harness.config.registries["docker.io"]), "library/redis"), "7"
            )
        )
        is None
    )
    assert not storage.writable()
    assert pull_twice(harness) == [(200, BLOB)] * 2
    assert registry.paths("GET").count(BLOB_PATH) == 2


def test_a_write_lost_to_a_lock_costs_only_that_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, object]]
) -> None:
    def locked(*args: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Index, "add_blob", locked)
    monkeypatch.setattr(index, "BUSY_TIMEOUT", 0.0)  # give up at once, not after 5 s of retries
    registry = blob_registry()
    harness = Harness(registry, {"cache": {"dir": str(tmp_path / "cache")}})
    assert pull_twice(harness) == [(200, BLOB)] * 2
    assert isinstance(harness.registry_stack, CachingRegistry)
    assert harness.registry_stack.storage.writable()  # the next fill is tried, and stored
    assert any("write was dropped" in str(e.get("log_format")) for e in log_events)


@pytest.mark.parametrize("error", [sqlite3.OperationalError("disk I/O error"), RuntimeError("x")])
def test_housekeeping_loops_survive_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    calls: list[object] = []

    def failing_touch(self: Index, accesses: object) -> None:
        calls.append(accesses)
        raise error

    monkeypatch.setattr(Index, "touch", failing_touch)
    harness = Harness(blob_registry(), {"cache": {"dir": str(tmp_path / "cache")}})
    assert harness.request("GET", BLOB_PATH).code == 200  # stored
    for _ in range(2):
        assert harness.request("GET", BLOB_PATH).code == 200  # a hit, noted for the flush
        harness.clock.advance(11)  # one flush interval
    assert len(calls) == 2  # the flush loop ran again after its first failure


def test_an_index_from_before_links_and_manifest_types_still_serves(tmp_path: Path) -> None:
    """Old caches kept one media type per blob and no links: nothing cached is lost."""
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript(
        "CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " accessed REAL NOT NULL, media_type TEXT);"
        "CREATE TABLE sources (digest TEXT NOT NULL, upstream TEXT NOT NULL,"
        " PRIMARY KEY (digest, upstream));"
    )
    db.execute("INSERT INTO blobs VALUES (?, ?, 0, 'application/x-m')", (DIGEST, len(BLOB)))
    db.execute("INSERT INTO sources VALUES (?, 'u')", (DIGEST,))
    db.commit()
    db.close()
    path = tmp_path / "blobs" / "sha256" / DIGEST[7:9] / DIGEST[7:]
    path.parent.mkdir(parents=True)
    path.write_bytes(BLOB)
    storage = FilesystemStorage(
        tmp_path, Clock(), 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    storage.open()
    stored = result_of(storage.manifest(DIGEST, REDIS))
    # The type survives; content cached before links is served under any repository, as
    # it was, so an upgrade costs no upstream request (and pulls work with it down).
    assert (stored.media_type, stored.body, stored.linked) == ("application/x-m", BLOB, True)
    assert result_of(storage.stored_blob(DIGEST, REDIS)) == BlobEntry(len(BLOB), linked=True)
    other = Scope("u", "library/other")
    assert result_of(storage.stored_blob(DIGEST, other)) == BlobEntry(len(BLOB), linked=True)
    assert result_of(storage.stored_blob(DIGEST, Scope("v", "library/redis"))) is None
