"""What the subcommands share: exit codes, the one-line error, the cache and config options.

A subcommand module exposes ``add_parser(commands)``, which adds its parser to
an argparse subparsers object and sets ``command`` to a function of the parsed
arguments returning the exit status.  Such a function may raise
:class:`CommandError`: :func:`dockermirror.cli.main` prints it as one line,
``dockermirror: ...``, on stderr, and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

from dockermirror.config import MirrorConfig, build_config, default_cache_dir, load_toml
from dockermirror.configvalues import ConfigError
from dockermirror.storage import layout
from dockermirror.storage.index import Index
from dockermirror.storage.layout import NotACache

# What add_parser(commands) is given: the subparsers of ``dockermirror`` or of a group.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Exit statuses, the same for every command: 0 done, 1 the command's "no" (damage found,
# a configuration with problems, nothing matched), 2 it could not do its job.
OK, NO, FAILED = 0, 1, 2


class CommandError(Exception):
    """The command cannot go on; the message is one line, without the ``dockermirror:``."""


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"the cache directory (default: the configuration's cache.dir, else the mirror's"
        f" default, {default_cache_dir()})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the mirror's configuration: its cache.dir, and its registries' names",
    )


def load_config(path: str) -> MirrorConfig:
    """The mirror's configuration from ``path``; CommandError when it cannot be built."""
    try:
        return build_config(load_toml(path))
    except ConfigError as e:
        problem = str(e)
        # load_toml names the file itself; build_config's problems name only the key.
        raise CommandError(problem if problem.startswith(path) else f"{path}: {problem}") from None


def cache_directory(args: argparse.Namespace, config: MirrorConfig | None) -> Path:
    """--cache-dir, else the configuration's cache.dir, else the mirror's default."""
    if args.cache_dir:
        return Path(args.cache_dir)
    if config is not None:
        return Path(config.cache.dir)
    return Path(default_cache_dir())


@contextmanager
def cache_index(directory: Path, doing: str) -> Iterator[Index]:
    """The index of the cache in ``directory``, connected as the mirror connects it.

    Only a directory that already is a dockermirror cache is used.  Problems with
    it, or with the index while the command works on it, become a CommandError
    naming the directory and what the command was ``doing``.
    """
    check_owner(directory)
    index = Index(directory / layout.INDEX, writer=True)
    try:
        layout.recognise(directory)
        index.retrying(index.connect)
        yield index
    except BrokenPipeError:
        raise  # stdout went away: main() ends quietly
    except (NotACache, sqlite3.Error, OSError) as e:
        raise CommandError(f"cannot {doing} the cache in {directory}: {e}") from None
    finally:
        index.close()


def check_owner(directory: Path) -> None:
    """Refuse root working on a cache another user (the mirror's) owns: what root wrote
    there, that user could not change, and the mirror would stop caching."""
    try:
        owner = directory.stat().st_uid
    except OSError:
        return  # (not there: the caller says so)
    if os.geteuid() == 0 and owner != 0:
        raise CommandError(
            f"the cache in {directory} belongs to uid {owner}, the mirror's user; run this"
            " command as that user (under systemd: systemd-run --pipe --wait -p DynamicUser=yes"
            " -p User=dockermirror -p CacheDirectory=dockermirror -p"
            " ConfigurationDirectory=dockermirror /opt/dockermirror/bin/dockermirror ...)"
        )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
