"""``dockermirror cache verify``: re-hash every cached blob; drop those that no longer match.

It does on demand, at full speed, what the mirror's background scrub does: a
damaged blob is dropped (file and index rows) so that the mirror fetches it
again.  It may run while a mirror uses the same directory: the index is
SQLite, each change is one short transaction, retried while the mirror holds a
lock, and a blob the mirror stored afresh meanwhile is left alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from dockermirror.cli.common import (
    NO,
    OK,
    Commands,
    add_cache_options,
    cache_directory,
    cache_index,
    load_config,
    plural,
)
from dockermirror.cli.progress import Progress
from dockermirror.storage import layout
from dockermirror.storage.index import Index
from dockermirror.storage.verify import check_file, drop

INTACT, DAMAGED = OK, NO


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "verify",
        help="re-hash every cached blob; drop those that no longer match their digest",
        description="Re-hash every cached blob and manifest; drop the damaged ones (file and"
        " index rows) so that the mirror fetches them again. Safe while a mirror runs on the"
        " same directory.",
        epilog="Exit status: 0 all intact, 1 damage was found (and dropped), 2 the cache"
        " cannot be used.",
    )
    add_cache_options(parser)
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    directory = cache_directory(args, config)
    with cache_index(directory, "verify") as index:
        return verify_cache(directory, index, sys.stdout, sys.stderr)


def verify_cache(directory: Path, index: Index, out: TextIO, err: TextIO) -> int:
    """Check every blob the index holds; one line per damaged blob, then a summary.

    A progress bar is drawn on ``err`` when it is a terminal.
    """
    checked = checked_bytes = damaged = 0
    stored = index.retrying(index.stored)
    progress = Progress(err, sum(s.size for s in stored), "verifying", unit="B")
    for blob in stored:
        path = layout.blob_path(directory, blob.digest)
        damage = check_file(path, blob)
        checked += 1
        checked_bytes += blob.size
        progress.advance(blob.size)
        if damage is None:
            index.retrying(index.mark_verified, blob.digest, time.time())
            continue
        dropped = index.retrying(drop, index, path, damage)
        if dropped == {}:
            continue  # it left the cache while it was checked (a running mirror evicted it)
        damaged += 1
        outcome = "dropped" if dropped else "a fresh copy has replaced it since"
        progress.finish()  # out may be the same terminal: the line starts clean
        print(f"damaged {blob.digest}: {damage.problem}; {outcome}", file=out)
    progress.finish()
    found = f"{damaged} damaged" if damaged else "all intact"
    print(f"checked {plural(checked, 'blob')}, {checked_bytes} bytes: {found}", file=out)
    return DAMAGED if damaged else INTACT
