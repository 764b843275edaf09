"""Replacing a small file whole: a reader sees the old file or the new one, never half of one.

The new text goes to a temporary file beside the old one, is flushed to disk,
and is renamed over it.  It keeps the old file's mode, owner and group (a file
the mirror reads as another user stays readable to it); a new file is 0600.
A path through a symbolic link replaces the file the link points to, not the
link.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

NEW_FILE_MODE = 0o600


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; OSError when it cannot be done (nothing changed)."""
    path = Path(os.path.realpath(path))
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if old is None:
                os.fchmod(f.fileno(), NEW_FILE_MODE)
            else:
                _keep_owner(f.fileno(), old)
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _sync_directory(path.parent)


def _keep_owner(fd: int, old: os.stat_result) -> None:
    """The old file's owner and group; PermissionError when this user cannot give them."""
    mine = os.fstat(fd)
    uid = old.st_uid if old.st_uid != mine.st_uid else -1
    gid = old.st_gid if old.st_gid != mine.st_gid else -1
    if (uid, gid) != (-1, -1):
        os.fchown(fd, uid, gid)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every filesystem can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
