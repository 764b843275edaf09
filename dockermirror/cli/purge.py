"""``dockermirror cache purge NAME[:TAG] | DIGEST``: remove tags, and the content only they used.

What is removed is planned by :mod:`dockermirror.cli.purgeplan`.  It is safe
while a mirror uses the same directory.  Each change is one short transaction,
retried while the mirror holds a lock.  A digest's index rows go first and
its file after, so the mirror never finds a row whose file is gone without
noticing: a lookup made before finds the file gone when it opens it, and
fetches the content again (as for a file deleted behind its back).  A file
the mirror has open keeps its bytes until it is closed (POSIX).  Just before a
digest is removed, the index is asked again whether a tag, or a repository
that was not purged, has come to use it meanwhile; then it stays.  A file
that a fill of the mirror has put in its place meanwhile is left alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dockermirror.cli.common import (
    NO,
    OK,
    CommandError,
    Commands,
    add_cache_options,
    cache_directory,
    cache_index,
    load_config,
    plural,
)
from dockermirror.cli.contents import Contents, Tag
from dockermirror.cli.names import Ambiguous, Names
from dockermirror.cli.output import size
from dockermirror.cli.progress import Progress
from dockermirror.cli.purgeplan import Plan, Target, holders, plan
from dockermirror.errors import RegistryError
from dockermirror.reference import validate_digest, validate_reference
from dockermirror.storage import layout
from dockermirror.storage.index import ANY_REPOSITORY, Index
from dockermirror.storage.interface import Scope


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "purge",
        help="remove a repository, a tag or a digest, and what only it used",
        description="Remove a repository's tags (NAME), one tag (NAME:TAG), or a manifest or"
        " blob by digest (DIGEST, sha256:...) and the tags pointing at it; then the manifests"
        " and blobs that nothing else uses any more. Content another tag, manifest or"
        " repository still uses stays. Safe while a mirror runs on the same directory.",
        epilog="NAME is written as Docker writes images (redis, docker.io/library/redis,"
        " ghcr.io/owner/image) or as 'cache ls' shows it. Exit status: 0 something was"
        " removed, 1 nothing was (nothing matched, or all of it is still in use), 2 an error.",
    )
    parser.add_argument("target", metavar="NAME[:TAG]|DIGEST", help="what to remove")
    add_cache_options(parser)
    parser.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would be removed; remove nothing"
    )
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    directory = cache_directory(args, config)
    text = args.target.strip()
    with cache_index(directory, "purge") as index:
        contents = Contents.read(directory, index)
        names = Names(contents.upstreams(), config)
        target = _target(text, names, contents)
        if target is None:
            return _nothing(f"nothing cached matches {text!r}")
        _read_manifests(contents)
        purge = plan(contents, target)
        if purge.empty:
            if target.digest is None or target.digest not in contents.blobs:
                return _nothing(f"nothing cached matches {text!r}")
            users = ", ".join(
                f"manifest {m}" for m in holders(contents, target.digest, purge.digests)
            )
            return _nothing(f"{target.digest} is still used by {users}; nothing was removed")
        if args.dry_run:
            _report(purge.tags, purge.digests, purge, contents, names, "would remove")
            return OK
        tags = index.retrying(_drop_tags, index, purge)
        removed = _remove(directory, index, contents, purge)
    if not (tags or removed or purge.unlinks):
        return _nothing("nothing was removed: the mirror has used it again meanwhile")
    _report(tags, removed, purge, contents, names, "removed")
    return OK


def _target(text: str, names: Names, contents: Contents) -> Target | None:
    if text.startswith(("sha256:", "sha512:")):
        try:
            return Target(digest=validate_digest(text))
        except RegistryError:
            raise CommandError(f"{text!r} is not a digest") from None
    name, tag = text, None
    if text.rfind(":") > text.rfind("/"):
        name, _, tag = text.rpartition(":")
        try:
            validate_reference(tag)
        except RegistryError:
            raise CommandError(f"{text!r}: {tag!r} is not a tag") from None
    try:
        scopes = names.resolve(name, contents.scopes())
    except Ambiguous as e:
        raise CommandError(str(e)) from None
    if len(scopes) > 1:
        shown = ", ".join(f"{names.show(s)} ({s.upstream})" for s in scopes)
        raise CommandError(f"{name!r} names several cached repositories: {shown}")
    return Target(scope=scopes[0], tag=tag) if scopes else None


def _read_manifests(contents: Contents) -> None:
    """Read what every manifest refers to (a large cache takes a while: show it)."""
    progress = Progress(sys.stderr, len(contents.manifests), "reading manifests")
    for digest in contents.manifests:
        contents.references(digest)
        progress.advance()
    progress.finish()


def _drop_tags(index: Index, purge: Plan) -> list[Tag]:
    """Delete the planned tags (those still bound as planned) and links; the tags deleted."""
    db = index.db
    db.execute("BEGIN IMMEDIATE")
    try:
        dropped = []
        for tag in purge.tags:
            deleted = db.execute(
                "DELETE FROM tags WHERE upstream = ? AND repository = ? AND tag = ?"
                " AND digest = ?",
                (tag.scope.upstream, tag.scope.repository, tag.tag, tag.digest),
            ).rowcount
            if deleted:
                dropped.append(tag)
        db.executemany(
            "DELETE FROM links WHERE digest = ? AND upstream = ? AND repository = ?",
            [(digest, scope.upstream, scope.repository) for digest, scope in purge.unlinks],
        )
        db.commit()
        return dropped
    except BaseException:
        db.rollback()
        raise


def _remove(directory: Path, index: Index, contents: Contents, purge: Plan) -> list[str]:
    """Remove the planned digests, rows first, then files; those removed.

    A manifest comes before what it refers to: one found in use again keeps all of it.
    """
    removed = []
    kept: set[str] = set()
    progress = Progress(sys.stderr, contents.size(purge.digests), "removing", unit="B")
    for digest in purge.digests:
        progress.advance(contents.blobs[digest].size)
        if digest in kept:
            continue
        path = layout.blob_path(directory, digest)
        found = layout.identity(path)
        if not index.retrying(_forget, index, digest, purge):
            kept |= contents.closure([digest])
            continue
        # Only the file the plan saw: a fill may have put a fresh copy there since.
        if layout.identity(path) == found:
            path.unlink(missing_ok=True)
        removed.append(digest)
    progress.finish()
    return removed


def _forget(index: Index, digest: str, purge: Plan) -> bool:
    """Drop a digest's rows, unless a tag or an unpurged repository uses it now."""
    db = index.db
    db.execute("BEGIN IMMEDIATE")  # the check and the delete in one write transaction
    try:
        if db.execute("SELECT 1 FROM tags WHERE digest = ?", (digest,)).fetchone():
            db.rollback()
            return False
        if digest != purge.forced:
            rows = db.execute(
                "SELECT upstream, repository FROM links WHERE digest = ? AND repository != ?",
                (digest, ANY_REPOSITORY),
            )
            if any(Scope(u, r) not in purge.purged for u, r in rows):
                db.rollback()
                return False
        return bool(index.forget([digest]))  # deletes every row of it, and commits
    except BaseException:
        db.rollback()
        raise


def _report(
    tags: Sequence[Tag],
    removed: Sequence[str],
    purge: Plan,
    contents: Contents,
    names: Names,
    verb: str,
) -> None:
    if purge.repository is not None:
        print(f"{verb} repository {names.show(purge.repository)}")
    for tag in tags:
        print(f"{verb} tag {names.show(tag.scope)}:{tag.tag}")
    for digest in sorted(removed, key=lambda d: (not contents.is_manifest(d), d)):
        kind = "manifest" if contents.is_manifest(digest) else "blob"
        print(f"{verb} {kind} {digest} ({size(contents.blobs[digest].size)})")
    manifests = sum(1 for d in removed if contents.is_manifest(d))
    parts = [
        plural(len(tags), "tag"),
        plural(manifests, "manifest"),
        plural(len(removed) - manifests, "blob"),
    ]
    summary = f"{verb} {', '.join(parts)}: {size(contents.size(removed))}"
    if purge.shared:
        summary += f"; {len(purge.shared)} kept: still in use"
    print(summary)


def _nothing(problem: str) -> int:
    print(f"dockermirror: {problem}", file=sys.stderr)
    return NO
