"""What a cache holds, read at one moment: blobs, manifests, tags, links, and what refers to what.

The index knows which digests are manifests and which repositories showed
them, but not what a manifest refers to: that is read from the manifest's file
(an index's platform manifests, an image's config and layers), once, when it
is first asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import attrs

from dockermirror.storage import layout
from dockermirror.storage.index import ANY_REPOSITORY, Index
from dockermirror.storage.interface import Scope

# A manifest is at most this big (the mirror stores none larger).
_MAX_MANIFEST = 4 * 1024 * 1024


@attrs.frozen
class Blob:
    digest: str
    size: int
    accessed: float


@attrs.frozen
class Tag:
    scope: Scope
    tag: str
    digest: str


class Contents:
    def __init__(
        self,
        directory: Path,
        blobs: Iterable[Blob],
        manifest_types: Iterable[tuple[str, str, str]],
        sources: Iterable[tuple[str, str]],
        links: Iterable[tuple[str, Scope]],
        tags: Iterable[Tag],
    ) -> None:
        self.directory = directory
        self.blobs = {blob.digest: blob for blob in blobs}
        # digest -> upstream key -> media type, for the manifests that are stored.
        self.manifests: dict[str, dict[str, str]] = {}
        for digest, upstream, media_type in manifest_types:
            if digest in self.blobs:
                self.manifests.setdefault(digest, {})[upstream] = media_type
        self.sources: dict[str, set[str]] = {}
        for digest, upstream in sources:
            self.sources.setdefault(digest, set()).add(upstream)
        # Which repositories showed a digest (not the ``*`` of caches from before links).
        self.linked: dict[str, set[Scope]] = {}
        self.scope_digests: dict[Scope, set[str]] = {}
        for digest, scope in links:
            if scope.repository != ANY_REPOSITORY:
                self.linked.setdefault(digest, set()).add(scope)
                self.scope_digests.setdefault(scope, set()).add(digest)
        self.tags = sorted(tags, key=lambda t: (t.scope.upstream, t.scope.repository, t.tag))
        self._references: dict[str, frozenset[str]] = {}

    @classmethod
    def read(cls, directory: Path, index: Index) -> Contents:
        """The index's rows, all from one snapshot (a running mirror may write meanwhile)."""
        return index.retrying(cls._read, directory, index)

    @classmethod
    def _read(cls, directory: Path, index: Index) -> Contents:
        db = index.db
        db.execute("BEGIN")  # one read transaction: one snapshot of every table
        try:
            return cls(
                directory,
                [Blob(d, int(s), float(a)) for d, s, a in db.execute(_BLOBS)],
                list(db.execute("SELECT digest, upstream, media_type FROM manifest_types")),
                list(db.execute("SELECT digest, upstream FROM sources")),
                [(d, Scope(u, r)) for d, u, r in db.execute(_LINKS)],
                [Tag(Scope(u, r), t, d) for u, r, t, d in db.execute(_TAGS)],
            )
        finally:
            db.rollback()

    def scopes(self) -> set[Scope]:
        """Every repository the cache holds something of: a tag, or content it showed."""
        return {tag.scope for tag in self.tags} | set(self.scope_digests)

    def upstreams(self) -> set[str]:
        """Every upstream key the cache holds something from."""
        keys = {scope.upstream for scope in self.scopes()}
        for sources in self.sources.values():
            keys |= sources
        return keys

    def is_manifest(self, digest: str) -> bool:
        return digest in self.manifests

    def media_type(self, digest: str) -> str:
        types = self.manifests.get(digest, {})
        return min(types.values()) if types else ""

    def references(self, digest: str) -> frozenset[str]:
        """The digests a stored manifest refers to; none for a blob or an unreadable file."""
        if digest not in self.manifests:
            return frozenset()
        found = self._references.get(digest)
        if found is None:
            found = self._references[digest] = _read_references(
                layout.blob_path(self.directory, digest)
            )
        return found

    def closure(self, digests: Iterable[str]) -> set[str]:
        """``digests`` and all they refer to, through any depth of manifests; stored ones only."""
        seen: set[str] = set()
        pending = [d for d in digests if d in self.blobs]
        while pending:
            digest = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            pending.extend(d for d in self.references(digest) if d in self.blobs)
        return seen

    def size(self, digests: Iterable[str]) -> int:
        return sum(self.blobs[d].size for d in digests if d in self.blobs)

    def last_access(self, digests: Iterable[str]) -> float:
        return max((self.blobs[d].accessed for d in digests if d in self.blobs), default=0.0)


_BLOBS = "SELECT digest, size, accessed FROM blobs"
_LINKS = "SELECT digest, upstream, repository FROM links"
_TAGS = "SELECT upstream, repository, tag, digest FROM tags"


def _read_references(path: Path) -> frozenset[str]:
    try:
        with open(path, "rb") as f:
            document = json.loads(f.read(_MAX_MANIFEST + 1))
    except (OSError, ValueError):
        return frozenset()  # gone or damaged: the mirror fetches it again when asked
    return frozenset(manifest_references(document))


def manifest_references(document: object) -> set[str]:
    """Digests a manifest names: an index's manifests, an image's config and layers.

    Docker schema 2 and OCI images and indexes, OCI artifact manifests
    (``blobs``), and Docker schema 1 (``fsLayers``).  A ``subject`` is not a
    reference: an artifact refers to it, it does not use it.
    """
    found: set[str] = set()
    if not isinstance(document, dict):
        return found
    descriptors: list[object] = [document.get("config")]
    for key in ("layers", "manifests", "blobs"):
        items = document.get(key)
        if isinstance(items, list):
            descriptors.extend(items)
    for descriptor in descriptors:
        if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
            found.add(descriptor["digest"])
    layers = document.get("fsLayers")
    if isinstance(layers, list):
        for layer in layers:
            if isinstance(layer, dict) and isinstance(layer.get("blobSum"), str):
                found.add(layer["blobSum"])
    return found
