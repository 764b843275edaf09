"""The operator's command, ``dockermirror``: for now, ``dockermirror cache verify``.

``cache verify`` does on demand, at full speed, what the mirror's background
scrub does: every cached blob is re-hashed against its digest, and a damaged
one is dropped (file and index rows) so that the mirror fetches it again.  It
may run while a mirror uses the same directory: the index is SQLite, each
change is one short transaction, retried while the mirror holds a lock, and a
blob the mirror stored afresh meanwhile is left alone.

Exit status: 0 when everything was intact, 1 when damage was found (and
dropped), 2 on a usage error or a directory or index it cannot use.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from dockermirror.config import default_cache_dir
from dockermirror.storage import layout
from dockermirror.storage.index import Index
from dockermirror.storage.layout import NotACache
from dockermirror.storage.verify import check_file, drop

INTACT, DAMAGED, FAILED = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # a usage error exits with 2
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockermirror", description="Work on a mirror's cache.")
    commands = parser.add_subparsers(metavar="COMMAND", required=True)
    cache = commands.add_parser("cache", help="the cache directory")
    cache_commands = cache.add_subparsers(metavar="COMMAND", required=True)
    verify = cache_commands.add_parser(
        "verify", help="re-hash every cached blob; drop those that no longer match their digest"
    )
    verify.add_argument(
        "--cache-dir",
        default=default_cache_dir(),
        metavar="DIR",
        help="the cache directory (default: the mirror's, %(default)s)",
    )
    verify.set_defaults(command=_verify)
    return parser


def _verify(args: argparse.Namespace) -> int:
    directory = Path(args.cache_dir)
    index = Index(directory / layout.INDEX, writer=True)
    try:
        layout.recognise(directory)
        index.retrying(index.connect)
        return verify_cache(directory, index, sys.stdout)
    except (NotACache, sqlite3.Error, OSError) as e:
        print(f"dockermirror: cannot verify the cache in {directory}: {e}", file=sys.stderr)
        return FAILED
    finally:
        index.close()


def verify_cache(directory: Path, index: Index, out: TextIO) -> int:
    """Check every blob the index holds; one line per damaged blob, then a summary."""
    checked = checked_bytes = damaged = 0
    for stored in index.retrying(index.stored):
        path = layout.blob_path(directory, stored.digest)
        damage = check_file(path, stored)
        checked += 1
        checked_bytes += stored.size
        if damage is None:
            index.retrying(index.mark_verified, stored.digest, time.time())
            continue
        dropped = index.retrying(drop, index, path, damage)
        if dropped == {}:
            continue  # it left the cache while it was checked (a running mirror evicted it)
        damaged += 1
        outcome = "dropped" if dropped else "a fresh copy has replaced it since"
        print(f"damaged {stored.digest}: {damage.problem}; {outcome}", file=out)
    blobs = "blob" if checked == 1 else "blobs"
    found = f"{damaged} damaged" if damaged else "all intact"
    print(f"checked {checked} {blobs}, {checked_bytes} bytes: {found}", file=out)
    return DAMAGED if damaged else INTACT
