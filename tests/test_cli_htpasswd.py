"""``dockermirror htpasswd add|remove``: lines the mirror accepts, written whole.

The file it writes is loaded by the mirror's own :class:`Htpasswd`, which
checks the password; a user's line is replaced where it was, the rest of the
file kept; the file keeps its mode and owner, a new one is 0600; a running
mirror's users, reloaded when the file changes, include the new one.
"""

from __future__ import annotations

import getpass
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from dockermirror import cli
from dockermirror.auth.htpasswd import Htpasswd, check_password, parse_htpasswd
from dockermirror.cli.htpasswd import hash_password
from tests.fakes import result_of
from tests.support.clients import require


def add(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    user: str,
    password: str,
    *options: str,
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(password))
    code = cli.main(
        ["htpasswd", "add", "--file", str(path), "--password-stdin", "--cost", "4", *options, user]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verifies(path: Path, user: str, password: str) -> bool:
    """What the mirror answers: its own loader and checker, on the file."""
    users = Htpasswd(path, Clock(), maybeDeferred)
    return bool(result_of(users.verify(user, password)))


def test_a_new_file_with_a_line_the_mirror_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    assert add(capsys, monkeypatch, path, "alice", "s3cret\n") == (
        0,
        f"added alice to {path}\n",
        "",
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (line,) = path.read_text().splitlines()
    assert line.startswith("alice:$2y$04$")
    assert verifies(path, "alice", "s3cret")  # the final newline of stdin is no part of it
    assert not verifies(path, "alice", "s3cret\n")
    assert not verifies(path, "alice", "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["htpasswd"]  # no temporary file left


def test_an_existing_user_is_replaced_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    old = hash_password("old", 4)
    path.write_text(
        f"# the mirror's users\nalice:{old}\nbob:{hash_password('bobs', 4)}\n\nalice:{old}\n"
    )
    path.chmod(0o640)
    before = path.read_text().splitlines()
    code, out, _ = add(capsys, monkeypatch, path, "alice", "new")
    assert (code, out) == (0, f"changed the password of alice in {path}\n")
    after = path.read_text().splitlines()
    assert after[0] == before[0] and after[2:] == [before[2], ""]  # the rest as it was
    assert after[1].startswith("alice:$2y$")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert verifies(path, "alice", "new")
    assert not verifies(path, "alice", "old")
    assert verifies(path, "bob", "bobs")


def test_a_running_mirror_reloads_the_new_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    add(capsys, monkeypatch, path, "alice", "a")
    clock = Clock()
    users = Htpasswd(path, clock, maybeDeferred)
    assert users.users() == {"alice"}
    assert add(capsys, monkeypatch, path, "bob", "b")[0] == 0
    clock.advance(10)
    assert users.users() == {"alice", "bob"}
    assert result_of(users.verify("bob", "b"))


def test_the_file_the_configuration_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    config = tmp_path / "mirror.toml"
    # The rest of the file may be mid-edit: only [auth] is read.
    config.write_text(f'[auth]\nhtpasswd = "{path}"\n[cache]\nmax_size = "lots"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw"))
    code = cli.main(["htpasswd", "add", "--config", str(config), "--password-stdin", "carol"])
    assert (code, capsys.readouterr().out) == (0, f"added carol to {path}\n")
    assert verifies(path, "carol", "pw")
    assert parse_htpasswd(path.read_text(), "x")["carol"].startswith(b"$2y$10$")  # the default
    config.write_text("[auth]\n")
    code = cli.main(["htpasswd", "add", "--config", str(config), "--password-stdin", "carol"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"dockermirror: {config}: auth.htpasswd is not set; name the file with --file\n"
    )


def test_a_symbolic_link_is_kept_and_its_file_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "htpasswd"
    target.write_text(f"bob:{hash_password('b', 4)}\n")
    link = tmp_path / "htpasswd"
    link.symlink_to(target)
    assert add(capsys, monkeypatch, link, "alice", "a")[0] == 0
    assert link.is_symlink()
    assert verifies(target, "alice", "a") and verifies(target, "bob", "b")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_the_owner_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("")
    os.chown(path, 4321, 4322)
    assert add(capsys, monkeypatch, path, "alice", "a")[0] == 0
    assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)


def test_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    add(capsys, monkeypatch, path, "alice", "a")
    add(capsys, monkeypatch, path, "bob", "b")
    assert cli.main(["htpasswd", "remove", "--file", str(path), "alice"]) == 0
    assert capsys.readouterr().out == f"removed alice from {path}\n"
    assert set(parse_htpasswd(path.read_text(), "x")) == {"bob"}
    assert cli.main(["htpasswd", "remove", "--file", str(path), "alice"]) == 1
    assert capsys.readouterr().err == f"dockermirror: {path} has no user 'alice'\n"


def test_the_password_is_asked_twice_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    answers = iter(["first", "second", "same", "same"])
    prompts: list[str] = []

    def ask(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", ask)
    command = ["htpasswd", "add", "--file", str(path), "--cost", "4", "alice"]
    assert cli.main(command) == 2
    assert capsys.readouterr().err == "dockermirror: the passwords differ; nothing was changed\n"
    assert not path.exists()
    assert cli.main(command) == 0
    assert prompts == ["Password: ", "Password again: "] * 2
    assert verifies(path, "alice", "same")


@pytest.mark.parametrize(
    ("user", "stdin", "options", "problem"),
    [
        ("alice", "", ["--password-stdin"], "the password is empty; nothing was changed"),
        ("alice", "\n", ["--password-stdin"], "the password is empty; nothing was changed"),
        (
            "a:b",
            "pw",
            ["--password-stdin"],
            "'a:b' is no user name (no colon, no spaces, not #...)",
        ),
        ("#a", "pw", ["--password-stdin"], "'#a' is no user name (no colon, no spaces, not #...)"),
        (
            "a b",
            "pw",
            ["--password-stdin"],
            "'a b' is no user name (no colon, no spaces, not #...)",
        ),
        ("alice", "pw", [], "no terminal to ask for the password on: use --password-stdin"),
    ],
)
def test_what_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    user: str,
    stdin: str,
    options: list[str],
    problem: str,
) -> None:
    path = tmp_path / "htpasswd"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["htpasswd", "add", "--file", str(path), *options, user])
    assert (code, capsys.readouterr().err) == (2, f"dockermirror: {problem}\n")
    assert not path.exists()


def test_a_file_that_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "missing" / "htpasswd"
    code, out, err = add(capsys, monkeypatch, path, "alice", "a")
    assert (code, out) == (2, "")
    assert err == f"dockermirror: cannot write {path}: No such file or directory\n"


def test_a_file_the_mirror_refuses_for_another_line_is_written_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("bob:{SHA}abc\n")
    code, _, err = add(capsys, monkeypatch, path, "alice", "a")
    assert code == 0
    assert err == (
        f"dockermirror: warning: the mirror will not load this file: {path}:1: user 'bob' has"
        " no bcrypt hash (write it with htpasswd -B)\n"
    )
    assert path.read_text().startswith("bob:{SHA}abc\nalice:$2y$")


def test_a_long_password_counts_by_its_first_72_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "htpasswd"
    password = "x" * 80
    code, _, err = add(capsys, monkeypatch, path, "alice", password)
    assert code == 0
    assert "only the password's first 72 bytes count" in err
    hashed = parse_htpasswd(path.read_text(), "x")["alice"]
    assert check_password(password, hashed) and check_password("x" * 72 + "y", hashed)


def test_the_console_script_reads_stdin(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    result = subprocess.run(
        [
            require("dockermirror"),
            "htpasswd",
            "add",
            "--file",
            str(path),
            "--password-stdin",
            "al",
        ],
        input="pw\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, f"added al to {path}\n", "")
    assert verifies(path, "al", "pw")
