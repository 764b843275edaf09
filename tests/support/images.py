"""Building test images (docker schema2, manifest list, OCI index) and pushing them to a registry.

Layers are real gzip'd tarballs so that podman and containerd can unpack them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import attrs

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@attrs.frozen
class Blob:
    path: Path
    digest: str
    size: int
    diff_id: str = ""


@attrs.frozen
class Manifest:
    media_type: str
    body: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


@attrs.define
class Image:
    """A repository's content: blobs, the manifests they need, and tags."""

    name: str
    blobs: list[Blob] = attrs.Factory(list)
    manifests: list[Manifest] = attrs.Factory(list)  # children before parents
    tags: dict[str, Manifest] = attrs.Factory(dict)


class _Tee(io.RawIOBase):
    def __init__(self, sink: gzip.GzipFile) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        return self.sink.write(data)


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def write_layer(path: Path, files: dict[str, bytes | tuple[int, Callable[[int], bytes]]]) -> Blob:
    """A gzip'd tar layer. A file is bytes, or (size, chunk maker) for big generated content."""
    with open(path, "wb") as out:
        # Level 0 keeps building a 256 MiB layer fast; the bytes are valid gzip all the same.
        level = 0 if any(isinstance(v, tuple) for v in files.values()) else 6
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
            tee = _Tee(gz)
            with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name, content in files.items():
                    info = tarfile.TarInfo(name)
                    info.mode = 0o755
                    if isinstance(content, bytes):
                        info.size = len(content)
                        tar.addfile(info, io.BytesIO(content))
                    else:
                        info.size, make = content
                        tar.addfile(info, _Generated(info.size, make))
    return Blob(path, _file_digest(path), path.stat().st_size, "sha256:" + tee.hash.hexdigest())


class _Generated(io.RawIOBase):
    def __init__(self, size: int, make: Callable[[int], bytes]) -> None:
        self.left = size
        self.make = make

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.make(n)
        self.left -= len(data)
        return data


def write_json(path: Path, document: object) -> Blob:
    path.write_bytes(json.dumps(document, indent=3).encode())
    return Blob(path, _file_digest(path), path.stat().st_size)


def single_image(
    directory: Path,
    label: str,
    layer_files: dict[str, bytes | tuple[int, Callable[[int], bytes]]],
    *,
    oci: bool = False,
    arch: str = "amd64",
) -> tuple[list[Blob], Manifest]:
    layer = write_layer(directory / f"{label}.layer", layer_files)
    config = write_json(
        directory / f"{label}.config.json",
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created_by": f"dockermirror test image {label}"}],
        },
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
            "size": config.size,
            "digest": config.digest,
        },
        "layers": [
            {
                "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                "size": layer.size,
                "digest": layer.digest,
            }
        ],
    }
    media = OCI_MANIFEST if oci else DOCKER_MANIFEST
    return [layer, config], Manifest(media, json.dumps(manifest, indent=3).encode())


def index_of(children: list[tuple[Manifest, str]], *, oci: bool) -> Manifest:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if oci else DOCKER_LIST,
        "manifests": [
            {
                "mediaType": m.media_type,
                "size": len(m.body),
                "digest": m.digest,
                "platform": {"architecture": arch, "os": "linux"},
            }
            for m, arch in children
        ],
    }
    return Manifest(OCI_INDEX if oci else DOCKER_LIST, json.dumps(document, indent=3).encode())


def _hello(label: str) -> dict[str, bytes | tuple[int, Callable[[int], bytes]]]:
    return {
        "bin/hello": f"#!/bin/sh\necho hello from {label}\n".encode(),
        "etc/label": label.encode(),
    }


def multi_platform_image(directory: Path, name: str, *, oci: bool) -> Image:
    """amd64 and arm64 images under a manifest list (docker) or an image index (OCI)."""
    image = Image(name)
    children = []
    for arch in ("amd64", "arm64"):
        label = f"{name.rpartition('/')[2]}-{arch}"
        blobs, manifest = single_image(directory, label, _hello(label), oci=oci, arch=arch)
        image.blobs += blobs
        image.manifests.append(manifest)
        children.append((manifest, arch))
    image.tags["latest"] = index_of(children, oci=oci)
    image.manifests.append(image.tags["latest"])
    return image


def build_images(directory: Path, big_size: int) -> dict[str, Image]:
    """The suite's images, keyed by a short label."""
    images: dict[str, Image] = {}

    blobs, manifest = single_image(directory, "alpine", _hello("alpine"))
    alpine = Image("library/alpine", blobs, [manifest])
    for tag in ("latest", "3.19", "3.20", "3.21", "edge"):
        alpine.tags[tag] = manifest
    images["schema2"] = alpine

    images["manifest-list"] = multi_platform_image(directory, "library/multiarch", oci=False)
    images["oci-index"] = multi_platform_image(directory, "library/ociimage", oci=True)

    blobs, manifest = single_image(directory, "big", {"data/random.bin": (big_size, os.urandom)})
    images["big"] = Image("library/big", blobs, [manifest], {"latest": manifest})

    blobs, manifest = single_image(directory, "private", _hello("private"))
    images["private"] = Image("private/secret", blobs, [manifest], {"latest": manifest})
    return images


class Pusher:
    """Pushes images with the registry's monolithic blob upload and manifest PUT."""

    def __init__(self, base: str, token: Callable[[str], str]) -> None:
        self.base = base
        self.token = token

    def push(self, image: Image) -> None:
        auth = {"Authorization": "Bearer " + self.token(image.name)}
        for blob in image.blobs:
            start = urllib.request.Request(
                f"{self.base}/v2/{image.name}/blobs/uploads/", method="POST", headers=auth
            )
            with urllib.request.urlopen(start) as response:
                location = response.headers["Location"]
            if location.startswith("/"):
                location = self.base + location
            sep = "&" if "?" in location else "?"
            with open(blob.path, "rb") as body:
                put = urllib.request.Request(
                    f"{location}{sep}digest={blob.digest}",
                    data=body,
                    method="PUT",
                    headers={
                        **auth,
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(blob.size),
                    },
                )
                urllib.request.urlopen(put).close()
        references = [(m.digest, m) for m in image.manifests]
        references += list(image.tags.items())
        for reference, manifest in references:
            put = urllib.request.Request(
                f"{self.base}/v2/{image.name}/manifests/{reference}",
                data=manifest.body,
                method="PUT",
                headers={**auth, "Content-Type": manifest.media_type},
            )
            urllib.request.urlopen(put).close()
