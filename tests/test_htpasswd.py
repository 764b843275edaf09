"""The mirror's users: bcrypt htpasswd entries only, reloaded when the file changes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from dockermirror.auth.htpasswd import Htpasswd, HtpasswdError, check_password, parse_htpasswd
from tests.fakes import result_of


def entry(user: str, password: str) -> str:
    """An ``htpasswd -B`` line (Apache writes the ``$2y$`` prefix)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:$2y${hashed[4:]}\n"


class Threads:
    """Runs the "thread" work inline, counting it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, work: Callable[[], bool]) -> Deferred[bool]:
        self.calls += 1
        return succeed(work())


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("# the mirror's users\n\n" + entry("alice", "wonder land") + entry("bob", "b"))
    return path


def test_users_and_passwords(file: Path) -> None:
    threads = Threads()
    users = Htpasswd(file, Clock(), threads)
    assert users.users() == {"alice", "bob"}
    assert result_of(users.verify("alice", "wonder land")) is True
    assert result_of(users.verify("alice", "wonder")) is False
    assert result_of(users.verify("bob", "wonder land")) is False
    assert result_of(users.verify("carol", "x")) is False
    assert threads.calls == 3  # an unknown user costs no bcrypt round


def test_a_verified_password_is_remembered_for_a_while(file: Path) -> None:
    threads, clock = Threads(), Clock()
    users = Htpasswd(file, clock, threads)
    for _ in range(3):
        assert result_of(users.verify("alice", "wonder land")) is True
    assert threads.calls == 1
    clock.advance(61)
    assert result_of(users.verify("alice", "wonder land")) is True
    assert threads.calls == 2
    # A wrong password is never remembered as right.
    assert result_of(users.verify("alice", "wrong")) is False
    assert result_of(users.verify("alice", "wrong")) is False
    assert threads.calls == 4


def test_the_file_is_reloaded_when_it_changes(file: Path) -> None:
    clock = Clock()
    users = Htpasswd(file, clock, Threads())
    assert result_of(users.verify("alice", "wonder land")) is True
    file.write_text(entry("alice", "new password") + entry("carol", "c"))
    os.utime(file, ns=(0, 10**18))
    clock.advance(3)
    assert users.users() == {"alice", "carol"}
    # The password remembered for the old entry is not trusted for the new one.
    assert result_of(users.verify("alice", "wonder land")) is False
    assert result_of(users.verify("alice", "new password")) is True


def test_a_broken_file_keeps_the_users_before(file: Path) -> None:
    clock = Clock()
    users = Htpasswd(file, clock, Threads())
    file.write_text("alice:{SHA}weak\n")
    os.utime(file, ns=(0, 10**18))
    clock.advance(3)
    assert users.users() == {"alice", "bob"}
    file.unlink()
    clock.advance(3)
    assert users.users() == {"alice", "bob"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "FILE:1: user 'alice' has no bcrypt hash"),
        ("alice:$apr1$x$y\n", "FILE:1: user 'alice' has no bcrypt hash"),
        ("\nalice:plain\n", "FILE:2: user 'alice' has no bcrypt hash"),
        ("just a line\n", "FILE:1: expected USER:HASH"),
        ("alice:$2y$05$cut short\n", "FILE:1: user 'alice' has a malformed bcrypt hash"),
    ],
)
def test_only_bcrypt_entries_are_accepted(text: str, problem: str) -> None:
    with pytest.raises(HtpasswdError, match=problem.replace("$", r"\$")):
        parse_htpasswd(text, "FILE")


def test_a_file_caught_half_written_keeps_the_users_before(file: Path) -> None:
    clock = Clock()
    users = Htpasswd(file, clock, Threads())
    whole = file.read_text()
    file.write_text(whole[: whole.index("$2y$") + 30])
    os.utime(file, ns=(0, 10**18))
    clock.advance(3)
    assert users.users() == {"alice", "bob"}
    assert result_of(users.verify("alice", "wonder land")) is True


def test_a_password_longer_than_bcrypt_reads(tmp_path: Path) -> None:
    """htpasswd -B hashes the first 72 bytes; bcrypt 5 refuses longer passwords outright."""
    long = "x" * 80
    hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "htpasswd"
    path.write_text(f"ci:{hashed}\n")
    assert result_of(Htpasswd(path, Clock(), Threads()).verify("ci", long)) is True


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match="cannot read"):
        Htpasswd(tmp_path / "missing", Clock(), Threads())


def test_prefixes() -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))
    for prefix in (b"$2a$", b"$2b$", b"$2y$"):
        assert check_password("pw", prefix + hashed[4:])
    assert not check_password("pw", b"$2y$garbage")
