"""The key that signs the mirror's tokens: from a file, made once if there is none.

Kept on disk (mode 0600) so that tokens outlive a restart, and shared by
pointing every node of a cluster at the same file.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from twisted.logger import Logger

log = Logger()

_KEY_BYTES = 32


class TokenKeyError(Exception):
    """The key file cannot be used; the message names it."""


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``; a new random one written there first if the file does not exist."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: of two nodes starting at once on shared storage, one writes and both read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    except OSError as e:
        raise TokenKeyError(f"{path}: cannot create the token key: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(_KEY_BYTES) + "\n")
    log.info("made a new token signing key in {path}", path=str(path))
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenKeyError(f"{path}: cannot read the token key: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenKeyError(
            f"{path}: the token key must be readable by its owner only (chmod 600)"
        )
    if len(text) < 32:
        raise TokenKeyError(f"{path}: the token key must hold at least 32 characters")
    return text.encode("ascii")
