"""What a purge removes: the tags named, and the manifests and blobs nothing else uses then.

Content stays while anything else uses it: a tag that is not purged (in any
repository, of any upstream), a manifest that is not purged (tagged or not: a
pull by digest), or another repository that showed it (the mirror serves it
there without asking the upstream again).  A purge by digest removes the
digest even where other repositories showed it, but never from under a
manifest that still refers to it.
"""

from __future__ import annotations

import attrs

from dockermirror.cli.contents import Contents, Tag
from dockermirror.storage.interface import Scope


@attrs.frozen
class Target:
    """A repository (all of it, or one ``tag``), or a ``digest`` wherever it is."""

    scope: Scope | None = None
    tag: str | None = None
    digest: str | None = None


@attrs.frozen
class Plan:
    tags: tuple[Tag, ...]  # tag rows to delete
    unlinks: tuple[tuple[str, Scope], ...]  # a purged repository's links to content kept
    digests: tuple[str, ...]  # manifests and blobs to remove; one referring to another first
    shared: tuple[str, ...]  # content the target used that something else still uses
    # Repositories whose links keep nothing: the purged ones (and those of a purged digest).
    purged: frozenset[Scope]
    forced: str | None  # a digest named: removed even where other repositories showed it
    repository: Scope | None  # a repository purged whole

    @property
    def empty(self) -> bool:
        return not (self.tags or self.unlinks or self.digests)


def plan(contents: Contents, target: Target) -> Plan:
    if target.digest is not None:
        dropped = [t for t in contents.tags if t.digest == target.digest]
        purged = contents.linked.get(target.digest, set()) | {t.scope for t in dropped}
        targets = {target.digest}
    else:
        assert target.scope is not None
        dropped = [
            t for t in contents.tags if t.scope == target.scope and target.tag in (None, t.tag)
        ]
        purged = {target.scope}
        # A whole repository: what it showed, pulled by tag or by digest.
        targets = (
            set(contents.scope_digests.get(target.scope, ())) if target.tag is None else set()
        )
    candidates = contents.closure(targets | {t.digest for t in dropped})
    roots = {t.digest for t in contents.tags if t not in dropped}
    roots |= {digest for digest in contents.manifests if digest not in candidates}
    roots |= {
        digest
        for digest in candidates
        if digest != target.digest and contents.linked.get(digest, set()) - purged
    }
    kept = contents.closure(roots)
    removed = candidates - kept
    if target.digest is not None and target.digest not in removed:
        purged = set()  # the digest named stays: so do the links to it and to what it uses
    return Plan(
        tags=tuple(dropped),
        unlinks=tuple(_unlinks(contents, purged, dropped, candidates, removed)),
        digests=tuple(_parents_first(contents, removed)),
        shared=tuple(sorted(candidates & kept)),
        purged=frozenset(purged),
        forced=target.digest,
        repository=target.scope if target.tag is None else None,
    )


def _unlinks(
    contents: Contents,
    purged: set[Scope],
    dropped: list[Tag],
    candidates: set[str],
    removed: set[str],
) -> list[tuple[str, Scope]]:
    """A purged repository's links to content that stays, but that it no longer uses.

    Left, they would keep that content from a later purge of what still uses it
    (the shared layer of two images, each purged in turn), and keep a purged
    repository in ``cache ls``.  A repository still uses what its remaining
    tags and manifests refer to.
    """
    unlinks = []
    for scope in sorted(purged, key=lambda s: (s.upstream, s.repository)):
        showed = contents.scope_digests.get(scope, set())
        remaining = {t.digest for t in contents.tags if t.scope == scope and t not in dropped}
        remaining |= {d for d in showed if contents.is_manifest(d) and d not in candidates}
        used = contents.closure(remaining)
        unlinks += [
            (digest, scope)
            for digest in sorted(showed & candidates)
            if digest not in removed and digest not in used
        ]
    return unlinks


def _parents_first(contents: Contents, digests: set[str]) -> list[str]:
    """``digests`` ordered so that a manifest comes before what it refers to."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(digest: str) -> None:
        if digest in seen:
            return
        seen.add(digest)
        for child in sorted(contents.references(digest) & digests):
            visit(child)
        order.append(digest)  # after all it refers to

    for digest in sorted(digests):
        visit(digest)
    return order[::-1]


def holders(contents: Contents, digest: str, removed: tuple[str, ...]) -> list[str]:
    """The manifests that keep ``digest``: those that refer to it and stay."""
    return [
        manifest
        for manifest in sorted(contents.manifests)
        if manifest not in removed and digest in contents.references(manifest)
    ]
