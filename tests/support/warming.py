"""Images in memory for the warming and prefetch tests, and a Registry that serves them.

:class:`Content` builds images (image manifests, indexes with platforms,
schema1) and can publish them on the HTTP fake upstream of :mod:`tests.fakes`;
:class:`MemoryRegistry` is the Registry interface over them, with blobs that
can be made local, broken, or held mid-transfer, and a record of every call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.server import Request

from dockermirror.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, RegistryError
from dockermirror.reference import digest_of
from dockermirror.registry.mediatypes import DOCKER_SCHEMA1, OCI_INDEX, OCI_MANIFEST
from dockermirror.registry.model import (
    BlobBody,
    BlobInfo,
    LocalFile,
    Manifest,
    RangeRequest,
    Referrers,
    TagPage,
)
from dockermirror.routing import Target
from tests.fakes import FakeRegistry, blob_handler

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@attrs.define
class Content:
    """Manifests by repository and tag or digest, and blobs by digest."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = attrs.Factory(dict)
    blobs: dict[str, bytes] = attrs.Factory(dict)

    def blob(self, data: bytes, media_type: str = OCI_LAYER, **extra: Any) -> dict[str, Any]:
        """Keep ``data`` as a blob; its descriptor (``extra`` added, e.g. ``urls``)."""
        digest = digest_of(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def put(self, name: str, media_type: str, document: object, *tags: str) -> dict[str, Any]:
        body = json.dumps(document).encode()
        digest = digest_of(body)
        for reference in (digest, *tags):
            self.manifests[(name, reference)] = (media_type, body)
        return {"mediaType": media_type, "digest": digest, "size": len(body)}

    def image(
        self, name: str, label: str, *, layers: int = 2, tag: str | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """An OCI image of a config and ``layers`` layers; its descriptor, and its blobs."""
        config = self.blob(json.dumps({"label": label}).encode(), OCI_CONFIG)
        parts = [self.blob(f"{label} layer {i} ".encode() * 1000) for i in range(layers)]
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": parts,
        }
        descriptor = self.put(name, OCI_MANIFEST, document, *([tag] if tag else []))
        return descriptor, [config["digest"], *(p["digest"] for p in parts)]

    def index(
        self, name: str, children: Sequence[tuple[dict[str, Any], dict[str, str] | None]], tag: str
    ) -> dict[str, Any]:
        manifests = [
            {**descriptor, **({"platform": platform} if platform else {})}
            for descriptor, platform in children
        ]
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.put(name, OCI_INDEX, document, tag)

    def schema1(self, name: str, layers: Sequence[bytes], tag: str) -> list[str]:
        """An unsigned schema1 manifest (its layers listed twice, as the empty one often is)."""
        sums = [self.blob(data)["digest"] for data in layers]
        fs_layers = [{"blobSum": s} for s in sums + sums]
        document = {"schemaVersion": 1, "name": name, "tag": tag, "fsLayers": fs_layers}
        self.put(name, DOCKER_SCHEMA1, document, tag)
        return sums

    def publish(self, upstream: FakeRegistry) -> None:
        """Serve everything on the HTTP fake upstream, as a registry would."""
        for (name, reference), (media_type, body) in self.manifests.items():
            path = f"/v2/{name}/manifests/{reference}"
            upstream.handlers[path] = _manifest_handler(media_type, body)
        for name in {name for name, _ in self.manifests}:
            for digest, data in self.blobs.items():
                upstream.handlers[f"/v2/{name}/blobs/{digest}"] = blob_handler(data)


def _manifest_handler(media_type: str, body: bytes) -> Any:
    def handle(request: Request) -> bytes:
        request.setHeader(b"content-type", media_type.encode())
        request.setHeader(b"docker-content-digest", digest_of(body).encode())
        return body

    return handle


def platform(os: str, architecture: str, variant: str = "") -> dict[str, str]:
    return {"os": os, "architecture": architecture, **({"variant": variant} if variant else {})}


class HeldStream:
    """Sends the first half of a blob, then waits for :meth:`release` (or a cancel)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cancelled = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        consumer.write(self.data[: len(self.data) // 2])

        def cancel(_: Deferred[None]) -> None:
            self.cancelled = True

        self._done = Deferred(cancel)
        return self._done

    @property
    def started(self) -> bool:
        return self._done is not None

    @property
    def running(self) -> bool:
        return self._done is not None and not self._done.called

    def release(self) -> None:
        assert self._consumer is not None and self._done is not None
        self._consumer.write(self.data[len(self.data) // 2 :])
        self._done.callback(None)


class _Stream:
    def __init__(self, registry: MemoryRegistry, data: bytes) -> None:
        self._registry = registry
        self._data = data

    def deliver(self, consumer: IConsumer) -> Deferred[None]:
        half = len(self._data) // 2
        consumer.write(self._data[:half])
        consumer.write(self._data[half:])
        self._registry.open_now -= 1
        return succeed(None)


class MemorySource:
    def __init__(self, registry: MemoryRegistry, digest: str) -> None:
        self.digest = digest
        self._registry = registry

    async def stat(self) -> BlobInfo:
        return BlobInfo(self.digest, len(self._registry.content.blobs[self.digest]), OCI_LAYER)

    async def open(self, wanted: RangeRequest | None) -> BlobBody:
        registry = self._registry
        registry.calls.append(("open", self.digest))
        if self.digest in registry.broken:
            raise registry.broken[self.digest]
        data = registry.content.blobs[self.digest]
        info = BlobInfo(self.digest, len(data), OCI_LAYER)
        held = registry.held.get(self.digest)
        if held is not None:
            return BlobBody(info, None, held)
        registry.open_now += 1
        registry.most_open = max(registry.most_open, registry.open_now)
        return BlobBody(info, None, _Stream(registry, data))

    def local_file(self) -> LocalFile | None:
        if self.digest in self._registry.local:
            return LocalFile(f"/cache/{self.digest}", 0, 1)
        return None

    def direct_url(self) -> str | None:
        return None


class MemoryRegistry:
    """A Registry over :class:`Content`; ``calls`` records ("manifest", name:reference) and
    ("blob" or "open", digest)."""

    def __init__(self, content: Content) -> None:
        self.content = content
        self.local: set[str] = set()
        self.broken: dict[str, Exception] = {}
        self.held: dict[str, HeldStream] = {}
        # Manifests that are answered only when released (reference: waiters).
        self.waiting: dict[str, list[Deferred[None]]] = {}
        self.calls: list[tuple[str, str]] = []
        self.open_now = 0
        self.most_open = 0

    def opened(self) -> list[str]:
        return [digest for what, digest in self.calls if what == "open"]

    async def manifest(
        self, target: Target, reference: str, accept: Sequence[str], *, head: bool = False
    ) -> Manifest:
        self.calls.append(("manifest", f"{target.name}:{reference}"))
        if reference in self.waiting:
            waiter: Deferred[None] = Deferred()
            self.waiting[reference].append(waiter)
            await waiter
        found = self.content.manifests.get((target.name, reference))
        if found is None:
            raise RegistryError(MANIFEST_UNKNOWN, {"name": target.name})
        media_type, body = found
        return Manifest(digest_of(body), media_type, len(body), None if head else body)

    def release(self, reference: str) -> None:
        for waiter in self.waiting.pop(reference):
            waiter.callback(None)

    async def blob(self, target: Target, digest: str) -> MemorySource:
        self.calls.append(("blob", digest))
        if digest not in self.content.blobs:
            raise RegistryError(BLOB_UNKNOWN, {"digest": digest})
        return MemorySource(self, digest)

    async def tags(self, target: Target, n: str | None, last: str | None) -> TagPage:
        raise NotImplementedError

    async def referrers(self, target: Target, digest: str, artifact_type: str | None) -> Referrers:
        raise NotImplementedError


def cancelled(d: Deferred[Any]) -> bool:
    """Whether ``d`` failed with CancelledError (the failure is consumed)."""
    failures: list[Any] = []
    d.addErrback(failures.append)
    return bool(failures) and failures[0].check(CancelledError) is not None
