"""The scrub: cached blobs re-hashed in the background, paced, and dropped when they rotted.

Most tests run the mirror in memory on a fake clock, where the pace can be
followed exactly; the last one runs the scrub on its own thread, as the mirror
does, and checks that the hashing happened there and not on the reactor's.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from dockermirror.reference import digest_of
from dockermirror.registry.caching import upstream_key
from dockermirror.storage import scrub
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.interface import BlobEntry, Scope
from dockermirror.storage.scrub import Scrub
from dockermirror.storage.verify import FileCheck
from dockermirror.storage.workers import InlineWorker, ThreadWorker
from tests.fakes import FakeRegistry, Harness, blob_handler, result_of

MiB = 1024 * 1024
P = ParamSpec("P")
T = TypeVar("T")
OCI = "application/vnd.oci.image.manifest.v1+json"


def blob(n: int, size: int = 64 * 1024) -> bytes:
    return bytes((n + i) % 251 for i in range(size))


def rot(path: Path, where: int = -1) -> None:
    """Flip one bit: the size stays, the digest does not."""
    data = bytearray(path.read_bytes())
    data[where] ^= 1
    path.write_bytes(bytes(data))


class Mirror:
    """The mirror in memory with some blobs upstream; the clock is advanced in small steps."""

    def __init__(self, tmp_path: Path, blobs: list[bytes], **cache: Any) -> None:
        self.registry = FakeRegistry()
        self.blobs = {digest_of(data): data for data in blobs}
        for digest, data in self.blobs.items():
            self.registry.handlers[f"/v2/library/redis/blobs/{digest}"] = blob_handler(data)
        self.harness = Harness(self.registry, {"cache": {"dir": str(tmp_path / "cache"), **cache}})
        self.store = self.harness.storage()
        self.scope = Scope(
            upstream_key(self.harness.config.registries["docker.io"]), "library/redis"
        )

    def pull(self, digest: str) -> tuple[str, bytes]:
        response = self.harness.request("GET", f"/v2/redis/blobs/{digest}")
        outcome = response.headers.getRawHeaders("x-dockermirror-cache", ["-"])[0]
        return outcome, self.harness.body(response)

    def run(self, seconds: float, step: float = 0.1) -> None:
        for _ in range(round(seconds / step)):
            self.harness.clock.advance(step)

    def stored(self, digest: str) -> bool:
        entry = result_of(self.store.stored_blob(digest, self.scope))
        assert entry in (None, BlobEntry(len(self.blobs[digest]), linked=True))
        return entry is not None and self.store.path(digest).exists()

    def never_checked(self) -> None:
        """Make every blob due at once, as those of a cache made before the scrub are."""
        never_checked(self.store.directory)

    def scrubbed_until(self, seconds: float) -> None:
        """Run the clock to ``seconds`` after the scrub's start."""
        self.run(scrub.START_DELAY + seconds - self.harness.clock.seconds())


def dropped(events: list[dict[str, object]]) -> list[str]:
    return [str(e["digest"]) for e in events if "cache damage" in str(e.get("log_format"))]


def test_the_scrub_drops_what_rotted_and_keeps_the_rest(
    tmp_path: Path, log_events: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scrub, "RECHECK_AFTER", 3600.0)
    good, bad = blob(1), blob(2)
    mirror = Mirror(tmp_path, [good, bad])
    manifest = b'{"schemaVersion": 2, "mediaType": "' + OCI.encode() + b'"}'

    def serve_manifest(request: Any) -> bytes:
        request.setHeader(b"content-type", OCI.encode())
        return manifest

    mirror.registry.handlers["/v2/library/redis/manifests/7"] = serve_manifest
    response = mirror.harness.request("GET", "/v2/redis/manifests/7", headers={"Accept": [OCI]})
    assert mirror.harness.body(response) == manifest
    for digest in mirror.blobs:
        assert mirror.pull(digest)[0] == "MISS"
    rot(mirror.store.path(digest_of(bad)))
    # Fresh blobs were checked when they were stored: they are due an hour later.
    mirror.run(3600 + scrub.START_DELAY + 10, step=1)
    assert dropped(log_events) == [digest_of(bad)]
    assert not mirror.stored(digest_of(bad))
    assert mirror.stored(digest_of(good))
    assert mirror.store.path(digest_of(manifest)).read_bytes() == manifest
    assert mirror.store.total == len(good) + len(manifest)
    assert mirror.pull(digest_of(bad)) == ("MISS", bad)
    assert mirror.pull(digest_of(bad)) == ("HIT", bad)


def never_checked(directory: Path) -> None:
    db = sqlite3.connect(directory / "index.sqlite")
    db.execute("UPDATE blobs SET verified = ?", (-2 * scrub.RECHECK_AFTER,))
    db.commit()
    db.close()


def test_the_scrub_reads_one_blob_at_a_time_at_its_rate(
    tmp_path: Path, log_events: list[dict[str, object]]
) -> None:
    blobs = [blob(1, 2 * MiB), blob(2, 2 * MiB)]
    mirror = Mirror(tmp_path, blobs, scrub_rate="1MiB")
    for digest in mirror.blobs:
        mirror.pull(digest)
        rot(mirror.store.path(digest))
    mirror.never_checked()
    first, second = mirror.blobs
    # 1 MiB a second, one 1 MiB chunk at a time: the first blob's second chunk is read after
    # 1 s; the second blob's first chunk after 2 s, its last after 3 s.
    mirror.scrubbed_until(0.5)
    assert dropped(log_events) == []
    mirror.scrubbed_until(1.5)
    assert dropped(log_events) == [first]
    mirror.scrubbed_until(2.5)
    assert dropped(log_events) == [first]
    mirror.scrubbed_until(3.5)
    assert dropped(log_events) == [first, second]


def test_the_scrub_checks_the_longest_unchecked_first_and_rests(
    tmp_path: Path, log_events: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scrub, "RECHECK_AFTER", 3600.0)
    older, newer = blob(1, MiB), blob(2, MiB)
    mirror = Mirror(tmp_path, [newer, older], scrub_rate="1MiB")
    mirror.pull(digest_of(older))  # stored, and so checked, at 0 s
    mirror.harness.clock.advance(10)
    mirror.pull(digest_of(newer))  # at 10 s
    for digest in mirror.blobs:
        rot(mirror.store.path(digest))
    # The first round finds nothing due; it waits for the older blob, due at 3600 s.
    mirror.run(3599 - mirror.harness.clock.seconds(), step=1)
    assert dropped(log_events) == []
    mirror.run(2)
    assert dropped(log_events) == [digest_of(older)]
    mirror.run(8)  # the newer one is due at 3610 s
    assert dropped(log_events) == [digest_of(older)]
    mirror.run(2)
    assert dropped(log_events) == [digest_of(older), digest_of(newer)]


def test_the_scrub_rechecks_what_it_found_good_only_after_a_while(
    tmp_path: Path, log_events: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found good, a blob is not read again for RECHECK_AFTER: checked when it is due."""
    monkeypatch.setattr(scrub, "RECHECK_AFTER", 3600.0)
    data = blob(1)
    mirror = Mirror(tmp_path, [data])
    mirror.pull(digest_of(data))
    reads: list[float] = []
    real_step = FileCheck.step

    def step(check: FileCheck, size: int = MiB) -> int:
        reads.append(mirror.harness.clock.seconds())
        return real_step(check, size)

    monkeypatch.setattr(FileCheck, "step", step)
    mirror.run(3 * 3600 + 100, step=5)
    # Stored at 0 s; checked when due, at 3600 s, then 7200 s, then 10800 s: once each time.
    assert [round(t, -2) for t in reads] == [3600, 7200, 10800]
    assert dropped(log_events) == []


def test_the_scrub_waits_while_the_index_cannot_note_what_it_found(
    tmp_path: Path, log_events: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else, unable to note a blob as checked, it would read the same blob again and again."""
    data = blob(1)
    mirror = Mirror(tmp_path, [data])
    mirror.pull(digest_of(data))
    rot(mirror.store.path(digest_of(data)))
    mirror.never_checked()
    mirror.harness.clock.advance(scrub.START_DELAY - 1)
    mirror.store.report_write_failure(OSError("the disk is full"))  # unwritable for a minute
    opened: list[float] = []
    real_open = FileCheck.open

    def record(check: FileCheck) -> None:
        opened.append(mirror.harness.clock.seconds())
        real_open(check)

    monkeypatch.setattr(FileCheck, "open", record)
    mirror.scrubbed_until(scrub.RETRY + 1)
    assert opened == [pytest.approx(scrub.START_DELAY + scrub.RETRY, abs=0.2)]
    assert dropped(log_events) == [digest_of(data)]


def test_a_scrub_rate_of_0_turns_it_off(
    tmp_path: Path, log_events: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[FileCheck] = []

    def record(check: FileCheck) -> None:
        opened.append(check)

    monkeypatch.setattr(FileCheck, "open", record)
    data = blob(1)
    mirror = Mirror(tmp_path, [data], scrub_rate=0)
    mirror.pull(digest_of(data))
    rot(mirror.store.path(digest_of(data)))
    mirror.never_checked()
    mirror.run(3 * 24 * 3600, step=600)
    assert opened == []
    assert dropped(log_events) == []


def test_stopping_the_mirror_stops_the_scrub(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, [blob(1, 4 * MiB)], scrub_rate="1MiB")
    mirror.pull(next(iter(mirror.blobs)))
    mirror.never_checked()
    mirror.scrubbed_until(1.5)  # mid-blob
    assert mirror.harness.cache is not None
    mirror.harness.cache.stopService()
    assert mirror.harness.clock.getDelayedCalls() == []


class SlowWorker:
    """Runs each call at once, but answers ``seconds`` later: a read that takes time."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        result = f(*args, **kwargs)
        return deferLater(self._clock, self._seconds, lambda: result)


def test_the_time_a_read_takes_counts_towards_the_pace(
    tmp_path: Path, log_events: list[dict[str, object]]
) -> None:
    clock = Clock()
    storage = FilesystemStorage(
        tmp_path, clock, 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    storage.open()
    data = blob(1, 4 * MiB)
    writer = storage.begin_write(digest_of(data), len(data), Scope("u", "r"))
    writer.write(data)
    result_of(writer.commit())
    rot(storage.path(digest_of(data)))
    never_checked(tmp_path)
    # At 1 MiB/s, with opening the file and each 1 MiB read taking half a second: reads start
    # 1 s apart (at 60.5, 61.5, 62.5, 63.5 s), and the last ends at 64 s; paced from their
    # ends, they would start 1.5 s apart, and the last would end at 65.5 s.
    scrubber = Scrub(storage, clock, MiB, SlowWorker(clock, 0.5))
    scrubber.start()
    for _ in range(round((scrub.START_DELAY + 3.9) / 0.1)):
        clock.advance(0.1)
    assert dropped(log_events) == []
    clock.advance(0.2)
    assert dropped(log_events) == [digest_of(data)]
    scrubber.stop()


@pytest_twisted.ensureDeferred
async def test_the_scrub_hashes_on_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, object]]
) -> None:
    monkeypatch.setattr(scrub, "START_DELAY", 0.0)
    storage = FilesystemStorage(
        tmp_path,
        reactor,
        10**9,
        0,
        lookups=ThreadWorker(reactor, "test-lookups"),
        writes=ThreadWorker(reactor, "test-writes"),
    )
    await storage.open()
    scope = Scope("u", "library/redis")
    good, bad = blob(1, 3 * MiB), blob(2, 3 * MiB)
    for data in (good, bad):
        writer = storage.begin_write(digest_of(data), len(data), scope)
        writer.write(data)
        await writer.commit()
    rot(storage.path(digest_of(bad)), where=0)
    never_checked(tmp_path)
    threads: set[str] = set()
    real_step = FileCheck.step

    def step(check: FileCheck, size: int = MiB) -> int:
        threads.add(threading.current_thread().name)
        return real_step(check, size)

    monkeypatch.setattr(FileCheck, "step", step)
    scrubber = Scrub(storage, reactor, 100 * MiB, ThreadWorker(reactor, "test-scrub"))
    scrubber.start()
    try:
        for _ in range(200):
            if scrubber.checked >= 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert scrubber.checked >= 2
    finally:
        scrubber.stop()
    assert dropped(log_events) == [digest_of(bad)]
    assert threading.current_thread().name not in threads
    assert len(threads) == 1
    assert await storage.stored_blob(digest_of(good), scope) is not None
    assert await storage.stored_blob(digest_of(bad), scope) is None
    await storage.close()
