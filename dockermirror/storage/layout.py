"""The cache directory: its layout, and which of it is the mirror's to delete from.

::

    CACHEDIR.TAG                the mark that this directory is a dockermirror cache
    blobs/sha256/ab/abcdef...   verified content, named by digest
    tmp/                        downloads in progress
    index.sqlite                the index (see :mod:`dockermirror.storage.index`)

Opening a cache removes crash leftovers: files in ``tmp/`` and blob files the
index does not know.  A mis-set ``--cache-dir /var`` must not make that wipe
``/var/tmp``, so the mirror only uses a directory it can tell is its own: one
marked with its ``CACHEDIR.TAG`` (https://bford.info/cachedir/, which backup
tools also honour), an empty or new one (it marks it), or one holding the
index.sqlite of a version from before the mark (it marks it too).  Anything
else is refused rather than shared through own-named subdirectories: a cache
mixed into a directory of other files is a mistake the operator should hear
of, and the mirror streams through until it is fixed.  Even inside its own
directory, it deletes only what its layout names: files (never directories) in
``tmp/``, and files under ``blobs/`` whose path is a digest's.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import attrs

MARKER = "CACHEDIR.TAG"
_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"  # the cachedir standard's
MARKER_TEXT = (
    f"{_SIGNATURE}\n"
    "# This file is a cache directory tag created by dockermirror.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
INDEX = "index.sqlite"
BLOBS = "blobs"
TMP = "tmp"
# Lock files of downloads under way, one per blob and upstream identity (see sharing.py).
CLAIMS = "claims"
# Hex digits in a digest, by algorithm: the only names the mirror gives blob files.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+\Z")
# What a fresh filesystem holds before anyone wrote to it.
_IGNORED_WHEN_EMPTY = {"lost+found"}


class NotACache(Exception):
    """The directory holds other things than a dockermirror cache; nothing in it is touched."""


def claim(directory: Path) -> None:
    """Make sure ``directory`` is the mirror's cache, marking it if it is new; else NotACache."""
    if _marked(directory):
        return
    if not _legacy(directory) and not _empty(directory):
        raise NotACache(
            f"{directory} is not empty and is no dockermirror cache (it has no CACHEDIR.TAG"
            " from dockermirror and no dockermirror index.sqlite); the mirror will not delete"
            " from a directory it did not create: set cache.dir to a new or empty directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(MARKER_TEXT)


def recognise(directory: Path) -> None:
    """NotACache unless ``directory`` already is a dockermirror cache (nothing is written)."""
    if not (_marked(directory) or _legacy(directory)):
        raise NotACache(f"{directory} is no dockermirror cache")


def _marked(directory: Path) -> bool:
    try:
        with open(directory / MARKER, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    # Another program's tag marks its cache, not ours.
    return head.startswith(_SIGNATURE.encode()) and b"dockermirror" in head


def _legacy(directory: Path) -> bool:
    """Whether ``directory`` holds an index.sqlite with the mirror's blobs table."""
    path = directory / INDEX
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return {"digest", "size", "accessed"} <= columns


def _empty(directory: Path) -> bool:
    try:
        return all(entry.name in _IGNORED_WHEN_EMPTY for entry in os.scandir(directory))
    except FileNotFoundError:
        return True


def blob_path(directory: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return directory / BLOBS / algorithm / hexdigest[:2] / hexdigest


def blob_files(directory: Path) -> Iterator[tuple[str, str]]:
    """(digest, path) of every file under ``blobs/`` that lies where the layout puts a digest."""
    for algorithm in _subdirectories(directory / BLOBS):
        length = _HEX_LENGTHS.get(algorithm.name)
        if length is None:
            continue
        for prefix in _subdirectories(Path(algorithm.path)):
            for entry in os.scandir(prefix.path):
                name = entry.name
                if (
                    len(name) == length
                    and _HEX.match(name)
                    and name.startswith(prefix.name)
                    and entry.is_file(follow_symlinks=False)
                ):
                    yield f"{algorithm.name}:{name}", entry.path


def _subdirectories(path: Path) -> Iterator[os.DirEntry[str]]:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            yield entry


def clear_temp(directory: Path) -> None:
    """Remove the files a crash left in ``tmp/`` and ``claims/`` (not directories: the
    mirror makes none there)."""
    for name in (TMP, CLAIMS):
        temp = directory / name
        temp.mkdir(exist_ok=True)
        for entry in os.scandir(temp):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)


def new_temp(directory: Path, name: str | None = None) -> tuple[Path, BinaryIO]:
    """A new file in ``tmp/`` (named ``name``, else at random), open for writing; ``tmp/``
    is made again if it was deleted.

    Unbuffered: each write goes straight to the file, where readers find it, with no copy.
    """
    path = directory / TMP / (name or uuid.uuid4().hex)
    try:
        return path, open(path, "xb", buffering=0)
    except FileNotFoundError:
        # Not parents=True: with the cache directory itself gone, writing fails, as it should.
        path.parent.mkdir(exist_ok=True)
        return path, open(path, "xb", buffering=0)


def write_all(file: BinaryIO, data: bytes) -> None:
    """Write every byte: an unbuffered write may take only part of them."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[written:]


@attrs.frozen
class FileIdentity:
    """Which file a path named when it was checked: a new file there is not the one checked."""

    device: int
    inode: int
    size: int
    modified: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def identity(path: Path) -> FileIdentity | None:
    """The identity of the file at ``path``; None when there is none."""
    try:
        return FileIdentity.of(os.stat(path))
    except FileNotFoundError:
        return None
