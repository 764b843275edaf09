"""Checking stored files against their digests: shared by manifest reads, the scrub and the CLI.

A file is damaged when it is missing, its size is not the indexed one, or its
bytes no longer hash to its digest.  A manifest's digest is the registries' own
(over the payload, for signed schema1), so manifests are checked as
:mod:`dockermirror.registry.schema1` computes it.

A damaged file is dropped, file and index rows, so that it is fetched again;
but only if the path still names the file found damaged: a fill may have
put a fresh, verified copy there since (another upstream identity fetched it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs

from dockermirror.reference import new_hasher
from dockermirror.registry.schema1 import MalformedSignature, manifest_digest
from dockermirror.storage.layout import FileIdentity, identity

if TYPE_CHECKING:
    from dockermirror.storage.index import Index

CHUNK = 1024 * 1024


@attrs.frozen
class Stored:
    """A stored file as the index has it."""

    digest: str
    size: int
    media_types: tuple[str, ...]  # the manifest types it was stored as; () for other blobs


@attrs.frozen
class Damage:
    digest: str
    problem: str
    found: FileIdentity | None  # the file found damaged; None when there was none


def manifest_matches(body: bytes, digest: str, media_types: tuple[str, ...]) -> bool:
    algorithm = digest.partition(":")[0]
    for media_type in media_types or ("",):
        try:
            if manifest_digest(body, media_type, algorithm) == digest:
                return True
        except MalformedSignature:
            pass
    return False


class FileCheck:
    """Re-hashes one stored file, a chunk at a time, so that a caller can pace the reading."""

    def __init__(self, path: Path, stored: Stored) -> None:
        self.stored = stored
        self.damage: Damage | None = None
        self.done = False
        self._path = path
        self._file: BinaryIO | None = None
        self._found: FileIdentity | None = None
        self._hasher = new_hasher(stored.digest)
        # A manifest is checked whole (a signed one is hashed over part of it); at most 4 MiB.
        self._body: bytearray | None = bytearray() if stored.media_types else None
        self._read = 0

    def open(self) -> None:
        try:
            self._file = open(self._path, "rb")
        except FileNotFoundError:
            self._damaged("the file is missing", None)
            return
        except OSError as e:
            self._damaged(f"the file cannot be read: {e.strerror}", None)
            return
        found = FileIdentity.of(os.fstat(self._file.fileno()))
        if found.size != self.stored.size:
            self._damaged(f"the file has {found.size} bytes, not {self.stored.size}", found)
            return
        self._found = found
        if self.stored.size == 0:
            self._finish()

    def step(self, size: int = CHUNK) -> int:
        """Hash up to ``size`` more bytes; how many were read (0 once the check is done)."""
        if self.done:
            return 0
        assert self._file is not None
        try:
            chunk = self._file.read(min(size, self.stored.size - self._read))
        except OSError as e:
            self._damaged(f"the file cannot be read: {e.strerror}", self._found)
            return 0
        if not chunk:
            self._damaged(f"the file ended after {self._read} bytes", self._found)
            return 0
        self._read += len(chunk)
        if self._body is not None:
            self._body += chunk
        else:
            self._hasher.update(chunk)
        if self._read == self.stored.size:
            self._finish()
        return len(chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _finish(self) -> None:
        digest = self.stored.digest
        if self._body is not None:
            if not manifest_matches(bytes(self._body), digest, self.stored.media_types):
                self._damaged("its bytes do not match the manifest's digest", self._found)
                return
        else:
            actual = f"{digest.partition(':')[0]}:{self._hasher.hexdigest()}"
            if actual != digest:
                self._damaged(f"its bytes have digest {actual}", self._found)
                return
        self.done = True
        self.close()

    def _damaged(self, problem: str, found: FileIdentity | None) -> None:
        self.damage = Damage(self.stored.digest, problem, found)
        self.done = True
        self.close()


def check_file(path: Path, stored: Stored) -> Damage | None:
    """Check one file at full speed (the on-demand ``cache verify``)."""
    check = FileCheck(path, stored)
    try:
        check.open()
        while check.step():
            pass
    finally:
        check.close()
    return check.damage


def drop(index: Index, path: Path, damage: Damage) -> dict[str, int] | None:
    """Remove a damaged file and its index rows; the sizes of the rows removed.

    None, and nothing removed, when another file has taken the damaged one's
    place; no sizes when the rows were gone already (evicted, or dropped by
    another process).  Tried again after a lock, it finds the file gone, and
    removes the rows.
    """
    now = identity(path)
    if now is not None and now != damage.found:
        return None
    path.unlink(missing_ok=True)
    return index.forget([damage.digest])
