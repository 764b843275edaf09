"""``dockermirror htpasswd add|remove USER``: the mirror's users, in its htpasswd file.

``add`` writes a bcrypt line (``$2y$``, as ``htpasswd -B`` writes, which the
mirror and Apache and nginx all read), replacing the user's line if there is
one; other lines and comments stay as they were.  The file is replaced whole
(:mod:`dockermirror.cli.atomic`), so a running mirror, which reloads it when it
changes, never reads half of it.  The password is asked twice on a terminal,
or read from stdin with ``--password-stdin`` (all of it, less one final
newline); it is never an argument, which any user could read in ``ps``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

import bcrypt

from dockermirror.auth.htpasswd import HtpasswdError, parse_htpasswd
from dockermirror.cli.atomic import replace_text
from dockermirror.cli.common import NO, OK, CommandError, Commands
from dockermirror.config import build_config, load_toml
from dockermirror.configvalues import ConfigError

# bcrypt reads this much of a password (the mirror checks the same first 72 bytes).
_BCRYPT_BYTES = 72
DEFAULT_COST = 10


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "htpasswd",
        help="add or remove the mirror's users (its htpasswd file)",
        description="Edit the htpasswd file the mirror checks its users' passwords against.",
        epilog="Exit status: 0 done, 1 (remove) no such user, 2 an error.",
    )
    actions = parser.add_subparsers(metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add a user, or set a user's password",
        description="Add a user with a bcrypt password hash, or replace the user's line. The"
        " file is created (mode 0600) if it does not exist, and replaced atomically, keeping"
        " its mode and owner.",
        epilog="Exit status: 0 done, 2 an error (no password, passwords differ, the file"
        " cannot be written).",
    )
    _file_options(add)
    add.add_argument("user", metavar="USER")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (without it, it is asked on the terminal)",
    )
    add.add_argument(
        "--cost",
        type=_cost,
        default=DEFAULT_COST,
        help=f"bcrypt's cost, 4 to 31 (default {DEFAULT_COST}); each step doubles the work",
    )
    add.set_defaults(command=run_add)
    remove = actions.add_parser(
        "remove",
        help="remove a user",
        description="Remove a user's line; the file is replaced atomically.",
        epilog="Exit status: 0 removed, 1 no such user, 2 an error.",
    )
    _file_options(remove)
    remove.add_argument("user", metavar="USER")
    remove.set_defaults(command=run_remove)


def _file_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", metavar="FILE", help="the htpasswd file")
    where.add_argument(
        "--config",
        metavar="FILE",
        help="the mirror's configuration, whose auth.htpasswd names the file",
    )


def run_add(args: argparse.Namespace) -> int:
    user = _user(args.user)
    path = _path(args)
    password = _password(args.password_stdin)
    lines, found = _without(_read(path), user)
    lines.insert(
        found if found is not None else len(lines), f"{user}:{hash_password(password, args.cost)}"
    )
    _write(path, lines)
    if found is None:
        print(f"added {user} to {path}")
    else:
        print(f"changed the password of {user} in {path}")
    return OK


def run_remove(args: argparse.Namespace) -> int:
    user = _user(args.user)
    path = _path(args)
    lines, found = _without(_read(path), user)
    if found is None:
        print(f"dockermirror: {path} has no user {user!r}", file=sys.stderr)
        return NO
    _write(path, lines)
    print(f"removed {user} from {path}")
    return OK


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    """A bcrypt hash as ``htpasswd -B`` writes it (``$2y$``: ``$2b$`` by another name)."""
    hashed = bcrypt.hashpw(password.encode("utf-8")[:_BCRYPT_BYTES], bcrypt.gensalt(cost))
    return "$2y$" + hashed.decode("ascii")[4:]


def _user(user: str) -> str:
    if (
        not user
        or ":" in user
        or user.startswith("#")
        or any(c.isspace() or not c.isprintable() for c in user)
    ):
        raise CommandError(f"{user!r} is no user name (no colon, no spaces, not #...)")
    return user


def _path(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    try:
        data = load_toml(args.config)
        # Only [auth] is needed: the rest of the file may be mid-edit.
        auth = build_config({"auth": data["auth"]} if "auth" in data else {}).policy.auth
    except ConfigError as e:
        raise CommandError(str(e)) from None
    if auth.htpasswd is None:
        raise CommandError(f"{args.config}: auth.htpasswd is not set; name the file with --file")
    return Path(auth.htpasswd)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.read()
        password = password.removesuffix("\n").removesuffix("\r")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the passwords differ; nothing was changed")
    else:
        raise CommandError("no terminal to ask for the password on: use --password-stdin")
    if not password:
        raise CommandError("the password is empty; nothing was changed")
    if len(password.encode("utf-8")) > _BCRYPT_BYTES:
        print(
            f"dockermirror: note: only the password's first {_BCRYPT_BYTES} bytes count"
            " (bcrypt reads no more)",
            file=sys.stderr,
        )
    return password


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read {path}: {e}") from None


def _without(lines: list[str], user: str) -> tuple[list[str], int | None]:
    """The lines without ``user``'s, and where its first line was (None: it had none)."""
    kept: list[str] = []
    found: int | None = None
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#") and entry.partition(":")[0] == user:
            if found is None:
                found = len(kept)
            continue
        kept.append(line)
    return kept, found


def _write(path: Path, lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    try:
        replace_text(path, text)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        parse_htpasswd(text, str(path))
    except HtpasswdError as e:
        # Another line is wrong: the mirror refuses the whole file until it is mended.
        print(f"dockermirror: warning: the mirror will not load this file: {e}", file=sys.stderr)


def _cost(text: str) -> int:
    try:
        cost = int(text)
    except ValueError:
        cost = 0
    if not 4 <= cost <= 31:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 4 to 31")
    return cost
