"""One download of a blob for every process that shares a cache directory (``--workers``).

A process about to download a blob into the cache first claims it: an
exclusive ``flock`` on ``claims/KEY``, where KEY names the blob and the
upstream identity it is fetched for.  The claimant writes the blob's size into
the lock file and its bytes into ``tmp/KEY.part``, renames that under the
blob's digest once the digest matched, and only then releases the claim.  Any
other process that wants the blob meanwhile finds the claim taken and follows
the claimant's partial file instead of asking the upstream again
(:class:`ForeignFill`): bytes on disk are there to read, the renamed file means
complete and verified, and a claim released without the rename means failed.

flock locks belong to an open file, not a process, and die with it: a claimant
that crashes releases its claim.  A lock file is unlinked before it is
released, and a claimant checks that the file it locked is still the one at the
path, so two processes never both hold a claim.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import os
from pathlib import Path

from dockermirror.storage import layout

_SIZE_BYTES = 32


class FillState(enum.Enum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class FillClaim:
    """This process's claim on downloading a blob: held until :meth:`release`."""

    def __init__(self, fd: int, lock: Path, part: Path) -> None:
        self._fd = fd
        self._lock = lock
        self.part = part

    def announce(self, size: int) -> None:
        """Tell followers the blob's size (known once the upstream answered)."""
        os.pwrite(self._fd, str(size).encode().ljust(_SIZE_BYTES), 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        # Unlinked first: a process that opens the path afterwards makes a new lock file.
        self._lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


class ForeignFill:
    """Another process's download of a blob, seen through its files."""

    def __init__(self, fd: int, part: Path, final: Path) -> None:
        self._lock_fd = fd
        self._part = part
        self._final = final
        self._data_fd = -1

    def size(self) -> int | None:
        """The blob's size, once the claimant has written it."""
        text = os.pread(self._lock_fd, _SIZE_BYTES, 0).strip()
        return int(text) if text.isdigit() else None

    def open(self) -> int | None:
        """A descriptor of the blob's bytes (the partial file, or the file it became)."""
        if self._data_fd < 0:
            for path in (self._part, self._final):
                try:
                    self._data_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    break
                except FileNotFoundError:
                    continue
        return self._data_fd if self._data_fd >= 0 else None

    def progress(self) -> tuple[int, FillState]:
        """Bytes on disk, and how the download stands."""
        fd = self.open()
        on_disk = os.fstat(fd).st_size if fd is not None else 0
        if fd is not None and _same_file(fd, self._final):
            return on_disk, FillState.COMPLETE  # renamed only once its digest matched
        if _held(self._lock_fd):
            return on_disk, FillState.RUNNING
        # Released: completed in the instant since the check above, or gave up.
        fd = self.open()
        if fd is not None and _same_file(fd, self._final):
            return os.fstat(fd).st_size, FillState.COMPLETE
        return on_disk, FillState.FAILED

    def close(self) -> None:
        for fd in (self._lock_fd, self._data_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._data_fd = -1


def claim(directory: Path, upstream: str, digest: str) -> FillClaim | ForeignFill:
    """Claim the download of ``digest`` for ``upstream``, or find the process that has."""
    key = hashlib.sha256(f"{upstream}\0{digest}".encode()).hexdigest()[:40]
    claims = directory / layout.CLAIMS
    lock, part = claims / key, directory / layout.TMP / f"{key}.part"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            claims.mkdir(exist_ok=True)  # deleted behind the mirror's back
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return ForeignFill(fd, part, layout.blob_path(directory, digest))
        except OSError:
            os.close(fd)
            raise
        if _same_file(fd, lock):
            break
        os.close(fd)  # a claimant released and unlinked it meanwhile: take the new one
    # What a claimant that died left is no download: start afresh.
    part.unlink(missing_ok=True)
    os.ftruncate(fd, 0)
    return FillClaim(fd, lock, part)


def _held(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_path = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_path.st_dev, on_path.st_ino)
