"""``dockermirror cache stats``: what the cache holds, per upstream registry and in all.

Per registry (an upstream key: URL and user): the repositories it holds
something of, its tags, the manifests and other blobs fetched from it, and
their bytes.  A blob fetched from two registries counts in both, and once in
the total.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from dockermirror.cli.common import (
    OK,
    Commands,
    add_cache_options,
    cache_directory,
    cache_index,
    load_config,
)
from dockermirror.cli.contents import Contents
from dockermirror.cli.names import Names
from dockermirror.cli.output import dump, size, table

_COUNTS = ("repositories", "tags", "manifests", "blobs", "bytes")


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "stats",
        help="what the cache holds, per upstream registry",
        description="Count the cache's repositories, tags, manifests, blobs and bytes, per"
        " upstream registry and in all.",
        epilog="Exit status: 0 done, 2 the cache cannot be read.",
    )
    add_cache_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    directory = cache_directory(args, config)
    with cache_index(directory, "read") as index:
        contents = Contents.read(directory, index)
    names = Names(contents.upstreams(), config)
    registries = []
    for key in sorted(contents.upstreams(), key=lambda k: names.upstream(k).label):
        upstream = names.upstream(key)
        registries.append(
            {
                "registry": upstream.label,
                "upstream": upstream.url,
                "user": upstream.user,
                **counts(contents, key),
            }
        )
    total = counts(contents, None)
    if args.json:
        dump(sys.stdout, {"directory": str(directory), "registries": registries, "total": total})
        return OK
    rows = [_row(str(r["registry"]), r) for r in registries]
    table(
        sys.stdout,
        ["REGISTRY", *(c.upper() for c in _COUNTS)],
        [*rows, _row("total", total)],
    )
    return OK


def counts(contents: Contents, upstream: str | None) -> dict[str, int]:
    """The counts for one upstream key, or (None) for the whole cache."""
    digests = [
        d for d in contents.blobs if upstream is None or upstream in contents.sources.get(d, ())
    ]
    manifests = sum(1 for d in digests if contents.is_manifest(d))
    scopes = {s for s in contents.scopes() if upstream is None or s.upstream == upstream}
    tags = [t for t in contents.tags if upstream is None or t.scope.upstream == upstream]
    return {
        "repositories": len(scopes),
        "tags": len(tags),
        "manifests": manifests,
        "blobs": len(digests) - manifests,
        "bytes": contents.size(digests),
    }


def _row(label: str, values: dict[str, Any]) -> list[str]:
    cells: Iterable[Any] = (values[c] for c in _COUNTS[:-1])
    return [label, *(str(v) for v in cells), size(int(values["bytes"]))]
