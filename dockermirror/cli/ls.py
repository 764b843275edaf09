"""``dockermirror cache ls [REPO]``: the cached repositories and their tags; one in detail.

A tag's size is what the cache holds of its image: the manifest and the
manifests, config and layers it refers to (each once); its last access is the
latest of theirs.  With REPO, the repository's manifests are listed too, with
full digests (for ``cache purge DIGEST``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import attrs

from dockermirror.cli.common import (
    NO,
    OK,
    CommandError,
    Commands,
    add_cache_options,
    cache_directory,
    cache_index,
    load_config,
)
from dockermirror.cli.contents import Contents
from dockermirror.cli.names import Ambiguous, Names
from dockermirror.cli.output import dump, iso_time, local_time, size, table
from dockermirror.storage.interface import Scope

# sha256: and 12 hex digits, as docker shows image IDs.
_SHORT = len("sha256:") + 12


def add_parser(commands: Commands) -> None:
    parser = commands.add_parser(
        "ls",
        help="the cached repositories and their tags",
        description="List the cached repositories and their tags (digest, size, last access);"
        " with REPO, that repository's tags and manifests.",
        epilog="REPO is written as Docker writes images (redis, docker.io/library/redis,"
        " ghcr.io/owner/image) or as this command shows it. Exit status: 0 done, 1 nothing"
        " cached matches REPO, 2 the cache cannot be read or REPO is ambiguous.",
    )
    parser.add_argument("repository", nargs="?", metavar="REPO", help="one repository")
    add_cache_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    parser.set_defaults(command=run)


@attrs.frozen
class Held:
    """What the cache holds of an image (or a repository): bytes, and the latest access."""

    size: int | None  # None: none of it is cached
    accessed: float

    @classmethod
    def of(cls, contents: Contents, digests: Iterable[str]) -> Held:
        held = contents.closure(digests)
        return cls(contents.size(held) if held else None, contents.last_access(held))

    def cells(self) -> list[str]:
        return [size(self.size), local_time(self.accessed)]

    def json(self) -> dict[str, Any]:
        return {"size": self.size, "accessed": iso_time(self.accessed)}


@attrs.frozen
class TagRow:
    tag: str
    digest: str
    held: Held


@attrs.frozen
class ManifestRow:
    digest: str
    media_type: str
    held: Held
    tags: tuple[str, ...]


@attrs.frozen
class Repository:
    name: str
    scope: Scope
    registry: str
    upstream: str
    user: str
    held: Held
    tags: tuple[TagRow, ...]
    manifests: tuple[ManifestRow, ...]

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "registry": self.registry,
            "repository": self.scope.repository,
            "upstream": self.upstream,
            "user": self.user,
            **self.held.json(),
            "tags": [{"tag": t.tag, "digest": t.digest, **t.held.json()} for t in self.tags],
            "manifests": [
                {
                    "digest": m.digest,
                    "media_type": m.media_type,
                    **m.held.json(),
                    "tags": list(m.tags),
                }
                for m in self.manifests
            ],
        }


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    directory = cache_directory(args, config)
    with cache_index(directory, "read") as index:
        contents = Contents.read(directory, index)
    names = Names(contents.upstreams(), config)
    if args.repository is None:
        scopes = sorted(contents.scopes(), key=names.show)
    else:
        try:
            scopes = names.resolve(args.repository, contents.scopes())
        except Ambiguous as e:
            raise CommandError(str(e)) from None
        if not scopes:
            print(f"dockermirror: nothing cached matches {args.repository!r}", file=sys.stderr)
            return NO
    repositories = [describe(contents, names, scope) for scope in scopes]
    if args.json:
        dump(sys.stdout, {"repositories": [r.json() for r in repositories]})
    elif args.repository is None:
        _overview(repositories)
    else:
        _details(repositories)
    return OK


def describe(contents: Contents, names: Names, scope: Scope) -> Repository:
    upstream = names.upstream(scope.upstream)
    tags = [t for t in contents.tags if t.scope == scope]
    held = contents.closure([*contents.scope_digests.get(scope, ()), *(t.digest for t in tags)])
    return Repository(
        name=names.show(scope),
        scope=scope,
        registry=upstream.label,
        upstream=upstream.url,
        user=upstream.user,
        held=Held.of(contents, held),
        tags=tuple(TagRow(t.tag, t.digest, Held.of(contents, [t.digest])) for t in tags),
        manifests=tuple(
            ManifestRow(
                digest,
                contents.media_type(digest),
                Held.of(contents, [digest]),
                tuple(t.tag for t in tags if t.digest == digest),
            )
            for digest in sorted(held)
            if contents.is_manifest(digest)
        ),
    )


def _overview(repositories: list[Repository]) -> None:
    rows = []
    for repository in repositories:
        for tag in repository.tags:
            rows.append([repository.name, tag.tag, tag.digest[:_SHORT], *tag.held.cells()])
        if not repository.tags:
            rows.append([repository.name, "-", "-", *repository.held.cells()])
    table(sys.stdout, ["REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST ACCESS"], rows)


def _details(repositories: list[Repository]) -> None:
    for number, repository in enumerate(repositories):
        if number:
            print()
        print(repository.name)
        if repository.tags:
            rows = [[t.tag, t.digest, *t.held.cells()] for t in repository.tags]
            table(sys.stdout, ["TAG", "DIGEST", "SIZE", "LAST ACCESS"], rows)
        if repository.manifests:
            if repository.tags:
                print()
            rows = [
                [m.digest, m.media_type, *m.held.cells(), ", ".join(m.tags) or "-"]
                for m in repository.manifests
            ]
            table(sys.stdout, ["MANIFEST", "TYPE", "SIZE", "LAST ACCESS", "TAGS"], rows)
