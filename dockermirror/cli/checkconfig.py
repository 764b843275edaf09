"""``dockermirror check-config FILE``: the checks the mirror makes at start, without starting it.

Every independent problem is named, one line each (``FILE: problem``), on
stdout; a valid file gets one line, ``FILE: ok``.  What is checked is
:mod:`dockermirror.validation`'s.
"""

from __future__ import annotations

import argparse

from dockermirror.cli.common import NO, OK, Commands
from dockermirror.validation import check_file


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "check-config",
        help="check a configuration file as the mirror does at start",
        description="Check a configuration file as the mirror does at start: its values, the"
        " listening and metrics endpoints, the htpasswd and token key files it names, the"
        " [[prefetch]] images. Every independent problem is printed, one line each (a"
        " table is checked up to its first problem). Run it as the mirror's user: files"
        " are checked with the rights of whoever runs it.",
        epilog="Exit status: 0 valid, 1 it has problems, 2 a usage error.",
    )
    parser.add_argument("file", metavar="FILE", help="the TOML configuration file")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    problems = check_file(args.file)
    for problem in problems:
        print(problem)
    if problems:
        return NO
    print(f"{args.file}: ok")
    return OK
