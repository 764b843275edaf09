"""The operator's command, ``dockermirror`` (also ``python3 -m dockermirror.cli``).

::

    dockermirror check-config FILE          the start-up checks, every independent problem
    dockermirror cache stats [--json]       what the cache holds, per upstream registry
    dockermirror cache ls [REPO] [--json]   repositories and tags; one repository in detail
    dockermirror cache purge NAME[:TAG]|DIGEST
                                            remove tags, and what only they used
    dockermirror cache verify               re-hash every blob; drop the damaged ones
    dockermirror cache warm REF...|--file F pull images into a mirror's cache ahead of time
    dockermirror htpasswd add|remove USER   the mirror's users

The cache commands take ``--cache-dir DIR`` or ``--config FILE`` (the
configuration's ``cache.dir``, and its registry names), and may run while a
mirror uses the same directory.  On a terminal, long runs draw a progress bar
on stderr; piped, they print only their results.

Exit status, the same for every command:

- 0: done (the cache intact, the configuration valid, something removed);
- 1: the command's "no": damage found (and dropped), problems in the
  configuration, nothing matched or nothing was removed, no such user;
- 2: it could not do its job: a usage error, a cache, index, configuration or
  file it cannot use; one line on stderr, ``dockermirror: ...``;
- 130: interrupted.

(``cache warm --mirror URL`` works through a running mirror over HTTP rather
than on a directory.)

Each subcommand lives in its own module, which exposes ``add_parser(commands)``:
it adds its parser to ``commands`` (an argparse subparsers object) with
``command`` set to a function of the parsed arguments returning the exit status
(see :mod:`dockermirror.cli.common`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from dockermirror.cli import checkconfig, htpasswd, ls, purge, stats, verify, warm
from dockermirror.cli.common import FAILED, CommandError

# The subcommands of ``dockermirror cache``, and of ``dockermirror`` itself.
CACHE_COMMANDS = (stats, ls, purge, verify, warm)
COMMANDS = (checkconfig, htpasswd)
INTERRUPTED = 130

_EXIT_STATUS = """\
exit status: 0 done; 1 the command's "no" (damage found, problems in the
configuration, nothing matched or removed, no such user); 2 an error (usage,
or a cache, configuration or file that cannot be used; one line on stderr);
130 interrupted.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # a usage error exits with 2
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except CommandError as e:
        print(f"dockermirror: {e}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout has gone (``| head``): end quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="dockermirror",
        description="Operate a dockermirror: check its configuration, look after its cache,"
        " manage its users.",
        epilog=_EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(commands)
    cache = commands.add_parser(
        "cache",
        help="the cache directory: stats, ls, purge, verify, warm",
        description="Work on a mirror's cache directory, also while the mirror runs.",
        epilog=_EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cache_commands = cache.add_subparsers(metavar="COMMAND", required=True)
    for module in CACHE_COMMANDS:
        module.add_parser(cache_commands)
    return top
