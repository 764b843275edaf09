"""The mirror's users: an htpasswd file of bcrypt entries, reloaded when it changes.

Only bcrypt (``htpasswd -B``: ``$2y$``, also ``$2a$``/``$2b$``) is accepted; the
other htpasswd formats (MD5-crypt, SHA1, crypt, plain) are weak, and an entry
in one of them is refused when the file is loaded rather than silently never
matching.  A bcrypt check costs tens to hundreds of milliseconds of CPU by
design, so it runs on a thread, and a successful check is remembered for a
minute (keyed by a hash of the password, never the password) because clients
may send Basic credentials with every request.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

_BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")
# A whole bcrypt hash: a line cut short (a file caught half-written) is none.
_BCRYPT = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
# bcrypt reads only this much of a password; htpasswd -B hashes the first 72 bytes.
_BCRYPT_BYTES = 72
# How often the file's metadata is looked at for a change.
_STAT_INTERVAL = 2.0
# How long a verified password is trusted without another bcrypt round.
_VERIFIED_FOR = 60.0
_MAX_VERIFIED = 4096
# A file that cannot be read is reported at most this often.
_COMPLAIN_INTERVAL = 60.0


class HtpasswdError(Exception):
    """The file cannot be used; the message names the file and the line."""


def parse_htpasswd(text: str, source: str) -> dict[str, bytes]:
    """``user:hash`` lines to a mapping; blank lines and ``#`` comments are skipped."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise HtpasswdError(f"{source}:{number}: expected USER:HASH")
        if not hashed.startswith(_BCRYPT_PREFIXES):
            raise HtpasswdError(
                f"{source}:{number}: user {user!r} has no bcrypt hash (write it with htpasswd -B)"
            )
        if not _BCRYPT.fullmatch(hashed):
            raise HtpasswdError(f"{source}:{number}: user {user!r} has a malformed bcrypt hash")
        users[user] = hashed.encode("ascii", "replace")
    return users


def check_password(password: str, hashed: bytes) -> bool:
    """bcrypt's check; ``$2y$`` is the same algorithm as ``$2b$`` under another name."""
    if hashed.startswith(b"$2y$"):
        hashed = b"$2b$" + hashed[4:]
    try:
        return bcrypt.checkpw(password.encode("utf-8")[:_BCRYPT_BYTES], hashed)
    except ValueError:  # a malformed hash matches nothing
        return False


class Htpasswd:
    """Users from a file, checked off the reactor thread."""

    def __init__(
        self,
        path: Path,
        clock: IReactorTime,
        in_thread: Callable[[Callable[[], bool]], Deferred[bool]],
    ) -> None:
        self.path = path
        self._clock = clock
        self._in_thread = in_thread
        self._users: Mapping[str, bytes] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._complained_at = float("-inf")
        self._verified: dict[tuple[str, bytes], float] = {}
        self.load()

    def load(self) -> None:
        """Read the file now; raises :class:`HtpasswdError` when it cannot be used."""
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HtpasswdError(f"{self.path}: cannot read: {e}") from None
        self._users = parse_htpasswd(text, str(self.path))
        self._signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        self._verified.clear()

    def users(self) -> frozenset[str]:
        self._reload_if_changed()
        return frozenset(self._users)

    def verify(self, user: str, password: str) -> Deferred[bool]:
        """Whether ``password`` is ``user``'s; fires at once for a remembered success."""
        self._reload_if_changed()
        hashed = self._users.get(user)
        if hashed is None:
            return succeed(False)
        now = self._clock.seconds()
        key = (user, hashlib.sha256(hashed + b"\0" + password.encode("utf-8")).digest())
        if self._verified.get(key, float("-inf")) > now:
            return succeed(True)

        def remember(ok: bool) -> bool:
            if ok:
                if len(self._verified) >= _MAX_VERIFIED:
                    self._verified.clear()
                self._verified[key] = self._clock.seconds() + _VERIFIED_FOR
            return ok

        return self._in_thread(lambda: check_password(password, hashed)).addCallback(remember)

    def _reload_if_changed(self) -> None:
        now = self._clock.seconds()
        if now < self._checked_at + _STAT_INTERVAL:
            return
        self._checked_at = now
        try:
            stat = os.stat(self.path)
        except OSError as e:
            if now >= self._complained_at + _COMPLAIN_INTERVAL:
                self._complained_at = now
                log.warn(
                    "cannot read {path}: {error}; keeping its users", path=str(self.path), error=e
                )
            return
        if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._signature:
            return
        try:
            self.load()
        except HtpasswdError as e:
            # A file caught half-written, or edited wrong: the users before stay.
            log.warn("{problem}; keeping the users loaded before", problem=str(e))
            return
        log.info("reloaded {count} users from {path}", count=len(self._users), path=str(self.path))
