"""Warming: pulling an image through a Registry so that the cache behind it keeps it.

The walk is what a client's pull does, without a client: the reference (a tag
or a digest) is resolved with every manifest type; an index or manifest list is
narrowed to the platforms wanted (all of them when none is named); each image
manifest's config and layers are then opened and drained, their bytes
discarded as they come (the stream checks the digest), so that a caching
Registry stores them.  A blob the Registry already has locally is not read at
all.  Foreign and non-distributable layers (Windows base layers, descriptors
with ``urls``) are not the registry's to give and are skipped; schema1
manifests name their layers in ``fsLayers`` and are walked too.

A few blobs are drained at a time; nothing is held in memory but manifests
(bounded by the Registry).  Cancelling the walk's Deferred stops every
transfer under way.  Every problem is reported in the result, and the walk goes
on with the rest: one bad layer does not stop the others.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IConsumer, IProducer
from zope.interface import implementer

from dockermirror.errors import RegistryError
from dockermirror.reference import is_digest, validate_digest
from dockermirror.registry.mediatypes import (
    ALL_MANIFESTS,
    DOCKER_LIST,
    OCI_INDEX,
    SCHEMA1,
    base_type,
)
from dockermirror.registry.model import BlobSource, Manifest, Registry
from dockermirror.routing import Target

# Blobs (and, separately, child manifests) fetched at once by one walk.
DEFAULT_CONCURRENCY = 3
# An index naming an index naming an index: deeper than any image tool builds.
_MAX_DEPTH = 3
INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
# Layers a registry does not (have to) hold: clients fetch them from their ``urls``.
NONDISTRIBUTABLE = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

# containerd's normalisation (platforms.Normalize): the names tools write for the same thing.
_ARCHITECTURES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "i386": ("386", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}


@attrs.frozen
class Platform:
    """``os/architecture[/variant]``; asked for with no variant, every variant matches."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64``, ``linux/arm/v7``; raises ValueError for anything else."""
        parts = text.strip().lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ValueError(f"{text!r} is not OS/ARCH[/VARIANT]")
        return cls.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def of(cls, os: str, architecture: str, variant: str = "") -> Platform:
        """A platform with its names normalised as containerd does."""
        os, architecture, variant = os.lower(), architecture.lower(), variant.lower()
        if os == "macos":
            os = "darwin"
        if architecture in _ARCHITECTURES:
            architecture, implied = _ARCHITECTURES[architecture]
            variant = variant or implied
        if variant and variant[0].isdigit():
            variant = "v" + variant
        if architecture == "arm64" and variant == "v8":
            variant = ""  # the default: "linux/arm64/v8" and "linux/arm64" are one platform
        elif architecture == "amd64" and variant == "v1":
            variant = ""
        return cls(os, architecture, variant)

    def matches(self, other: Platform) -> bool:
        return (
            self.os == other.os
            and self.architecture == other.architecture
            and (self.variant == "" or self.variant == other.variant)
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@attrs.frozen
class WarmFailure:
    what: str  # a blob's or a manifest's digest, or the image reference itself
    problem: str


@attrs.frozen
class WarmResult:
    """What warming one image did; digests, so a caller can look at each."""

    image: str
    digest: str = ""  # what the reference resolved to; "" when it did not
    manifests: tuple[str, ...] = ()  # read (and so kept by a cache)
    fetched: tuple[str, ...] = ()  # blobs drained whole
    cached: tuple[str, ...] = ()  # blobs already there, not read
    skipped: tuple[str, ...] = ()  # foreign or non-distributable layers
    bytes: int = 0  # of the blobs fetched
    failures: tuple[WarmFailure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


class WarmProgress(Protocol):
    """Told as the walk goes; a progress bar counts bytes, a log counts blobs."""

    def found(self, blobs: int, size: int) -> None:
        """More blobs to warm, ``size`` bytes in all as their descriptors say (schema1: 0)."""

    def advanced(self, blobs: int, size: int) -> None:
        """``blobs`` more blobs are done (whatever became of them), and ``size`` more bytes."""


class NoProgress:
    def found(self, blobs: int, size: int) -> None:
        pass

    def advanced(self, blobs: int, size: int) -> None:
        pass


# Whether a blob is already where warming would put it.  By default, a local file: what a
# caching Registry has stored; warming a remote mirror asks it with a HEAD instead.
StoredCheck = Callable[[Target, BlobSource], Awaitable[bool]]


async def is_local(target: Target, source: BlobSource) -> bool:
    return source.local_file() is not None


async def warm_image(
    registry: Registry,
    target: Target,
    reference: str,
    platforms: Sequence[Platform] = (),
    *,
    image: str | None = None,
    progress: WarmProgress | None = None,
    stored: StoredCheck = is_local,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> WarmResult:
    """Pull ``reference`` (a tag or a digest) of ``target`` through ``registry``, bytes discarded.

    ``image`` names the image in the result (default: the target and reference).
    Only cancellation raises; every other problem is one of the result's failures.
    """
    label = image or f"{target.label}{'@' if is_digest(reference) else ':'}{reference}"
    walk = _Walk(registry, target, platforms, progress or NoProgress(), stored, concurrency)
    return await walk.run(label, reference)


@implementer(IConsumer)
class _Drain:
    """Takes a blob's bytes and keeps none: counts them, and says so."""

    def __init__(self, progress: WarmProgress) -> None:
        self._progress = progress
        self.received = 0

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass  # never paused: nothing waits here

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.received += len(data)
        self._progress.advanced(0, len(data))


@attrs.frozen
class _Blob:
    digest: str
    size: int  # as the manifest says; 0 when it does not (schema1)


class _Walk:
    def __init__(
        self,
        registry: Registry,
        target: Target,
        platforms: Sequence[Platform],
        progress: WarmProgress,
        stored: StoredCheck,
        concurrency: int,
    ) -> None:
        self._registry = registry
        self._target = target
        self._platforms = tuple(platforms)
        self._progress = progress
        self._stored = stored
        self._manifest_slots = DeferredSemaphore(concurrency)
        self._blob_slots = DeferredSemaphore(concurrency)
        self._seen: set[str] = set()
        self._tasks: list[Deferred[None]] = []
        self._manifests: list[str] = []
        self._fetched: list[str] = []
        self._cached: list[str] = []
        self._skipped: list[str] = []
        self._bytes = 0
        self._failures: list[WarmFailure] = []
        self._cancelled = False

    async def run(self, label: str, reference: str) -> WarmResult:
        try:
            top = await self._registry.manifest(self._target, reference, ALL_MANIFESTS)
        except CancelledError:
            raise
        except Exception as e:
            return WarmResult(label, failures=(WarmFailure(label, describe(e)),))
        try:
            await self._walk(top, 0)
            # Blobs start as their manifests are read; wait for the last of them.
            await self._all(self._tasks)
        except BaseException:
            self._stop(self._tasks)
            raise
        return WarmResult(
            label,
            top.digest,
            tuple(self._manifests),
            tuple(self._fetched),
            tuple(self._cached),
            tuple(self._skipped),
            self._bytes,
            tuple(self._failures),
        )

    async def _all(self, tasks: list[Deferred[None]]) -> None:
        """Wait for every task, those added meanwhile too; cancelled, stop them all."""
        try:
            index = 0
            while index < len(tasks):
                # Not the task itself: cancelling this wait must not stop one task (and free
                # its slot for the next) before _stop has cancelled the queue.
                await _when_done(tasks[index])
                index += 1
        except BaseException:
            self._stop(tasks)
            raise

    def _stop(self, tasks: list[Deferred[None]]) -> None:
        # A running task that stops frees its slot: the next in line, given it, must not start.
        self._cancelled = True
        for task in tasks:
            task.addErrback(lambda f: f.trap(CancelledError) and None)
            task.cancel()

    def _fail(self, what: str, problem: str) -> None:
        self._failures.append(WarmFailure(what, problem))

    async def _walk(self, manifest: Manifest, depth: int) -> None:
        self._manifests.append(manifest.digest)
        document = _document(manifest)
        if document is None:
            self._fail(
                manifest.digest, f"not a manifest this mirror can read ({manifest.media_type})"
            )
            return
        # The document's own word first: some registries answer any manifest as JSON.
        declared = document.get("mediaType")
        media_type = base_type(declared if isinstance(declared, str) else manifest.media_type)
        if media_type in INDEXES or ("manifests" in document and "layers" not in document):
            await self._index(manifest.digest, document, depth)
        elif media_type in SCHEMA1 or document.get("schemaVersion") == 1:
            layers = document.get("fsLayers")
            sums = [layer.get("blobSum") for layer in _objects(layers)]
            self._blobs(manifest.digest, [{"digest": s} for s in sums])
        else:
            config = document.get("config")
            descriptors = [config] if isinstance(config, Mapping) else []
            descriptors += _objects(document.get("layers"))
            descriptors += _objects(document.get("blobs"))  # OCI's short-lived artifact manifest
            self._blobs(manifest.digest, descriptors)

    async def _index(self, digest: str, document: Mapping[str, Any], depth: int) -> None:
        if depth >= _MAX_DEPTH:
            self._fail(digest, f"indexes nested more than {_MAX_DEPTH} deep")
            return
        children = _objects(document.get("manifests"))
        if self._platforms:
            chosen = []
            for child in children:
                platform = _platform(child.get("platform"))
                if platform is not None and any(p.matches(platform) for p in self._platforms):
                    chosen.append(child)
            for wanted in self._platforms:
                if not any(wanted.matches(_platform(c.get("platform")) or _NONE) for c in chosen):
                    self._fail(digest, f"the index has no manifest for {wanted}")
            children = chosen
        fetches: list[Deferred[None]] = []
        for child in children:
            child_digest = child.get("digest")
            if not isinstance(child_digest, str) or not _valid(child_digest):
                self._fail(digest, f"the index names an invalid digest {child_digest!r}")
            elif child_digest not in self._seen:
                self._seen.add(child_digest)
                fetches.append(self._manifest_slots.run(self._child, child_digest, depth + 1))
        await self._all(fetches)

    async def _child(self, digest: str, depth: int) -> None:
        try:
            manifest = await self._registry.manifest(self._target, digest, ALL_MANIFESTS)
        except CancelledError:
            raise
        except Exception as e:
            self._fail(digest, describe(e))
            return
        await self._walk(manifest, depth)

    def _blobs(self, manifest: str, descriptors: Iterable[Mapping[str, Any]]) -> None:
        found: list[_Blob] = []
        for descriptor in descriptors:
            digest = descriptor.get("digest")
            if not isinstance(digest, str) or not _valid(digest):
                self._fail(manifest, f"the manifest names an invalid digest {digest!r}")
                continue
            if digest in self._seen:
                continue  # schema1 repeats its empty layer; platforms share configs
            self._seen.add(digest)
            if descriptor.get("urls") or base_type(str(descriptor.get("mediaType") or "")) in (
                NONDISTRIBUTABLE
            ):
                self._skipped.append(digest)
                continue
            size = descriptor.get("size")
            found.append(_Blob(digest, size if type(size) is int and size >= 0 else 0))
        if found:
            self._progress.found(len(found), sum(b.size for b in found))
        for blob in found:
            self._tasks.append(self._blob_slots.run(self._blob, blob))

    async def _blob(self, blob: _Blob) -> None:
        if self._cancelled:
            raise CancelledError()
        drain = _Drain(self._progress)
        try:
            source = await self._registry.blob(self._target, blob.digest)
            if await self._stored(self._target, source):
                self._cached.append(blob.digest)
                self._progress.advanced(1, blob.size)
                return
            body = await source.open(None)
            await body.stream.deliver(drain)
        except CancelledError:
            raise
        except Exception as e:
            self._fail(blob.digest, describe(e))
        else:
            self._fetched.append(blob.digest)
            self._bytes += drain.received
        self._progress.advanced(1, max(0, blob.size - drain.received))


_NONE = Platform("", "")


def _when_done(task: Deferred[None]) -> Deferred[None]:
    done: Deferred[None] = Deferred()

    def fired(result: object) -> object:
        if not done.called:
            done.callback(None)
        return result

    task.addBoth(fired)
    return done


def _platform(value: object) -> Platform | None:
    if not isinstance(value, Mapping):
        return None
    os, architecture = value.get("os"), value.get("architecture")
    if not isinstance(os, str) or not isinstance(architecture, str):
        return None
    variant = value.get("variant")
    platform = Platform.of(os, architecture, variant if isinstance(variant, str) else "")
    if platform.architecture == "arm" and not platform.variant:
        # An image that says only "arm" is v7 (containerd's rule); one who asks for
        # "linux/arm" takes every variant (Docker's).
        return attrs.evolve(platform, variant="v7")
    return platform


def _document(manifest: Manifest) -> Mapping[str, Any] | None:
    if manifest.body is None:
        return None
    try:
        document = json.loads(manifest.body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _objects(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _valid(digest: str) -> bool:
    try:
        validate_digest(digest)
    except RegistryError:
        return False
    return True


def describe(error: BaseException) -> str:
    """One line for an operator: an OCI error's message, else the exception's own words."""
    if isinstance(error, RegistryError):
        return f"{error.message} ({error.status})"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
