"""Pure parsing of registry API paths, repository names, tags and digests.

Grammars are distribution's reference grammar (distribution-spec "Pulling"):
names are slash-separated lowercase components, tags are up to 128 word
characters, digests are ``algorithm:hex`` and only the algorithms the mirror
can verify are accepted.
"""

from __future__ import annotations

import enum
import hashlib
import re

import attrs

from dockermirror.errors import DIGEST_INVALID, MANIFEST_INVALID, NAME_INVALID, RegistryError

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_DIGEST_HEX = {"sha256": re.compile(r"[a-f0-9]{64}\Z"), "sha512": re.compile(r"[a-f0-9]{128}\Z")}
MAX_NAME_LENGTH = 255


class Endpoint(enum.Enum):
    MANIFEST = "manifests"
    BLOB = "blobs"
    TAGS = "tags"
    REFERRERS = "referrers"
    UPLOAD = "uploads"
    CATALOG = "_catalog"


@attrs.frozen
class ApiPath:
    """``/v2/<name>/<endpoint>/<reference>`` split into its parts (name not yet validated)."""

    name: str
    endpoint: Endpoint
    reference: str = ""


_KINDS = {"manifests": Endpoint.MANIFEST, "blobs": Endpoint.BLOB, "referrers": Endpoint.REFERRERS}


def parse_api_path(rest: str) -> ApiPath:
    """Split the part of a path after ``/v2/``; raise NAME_INVALID when it is no API path."""
    segments = rest.strip("/").split("/")
    if segments == ["_catalog"]:
        return ApiPath("", Endpoint.CATALOG)
    if len(segments) >= 3 and segments[-2:] == ["tags", "list"]:
        return ApiPath("/".join(segments[:-2]), Endpoint.TAGS)
    if "blobs" in segments and "uploads" in segments[segments.index("blobs") :]:
        return ApiPath("/".join(segments[: segments.index("blobs")]), Endpoint.UPLOAD)
    if len(segments) >= 3:
        kind = _KINDS.get(segments[-2])
        if kind is not None:
            return ApiPath("/".join(segments[:-2]), kind, segments[-1])
    raise RegistryError(NAME_INVALID, {"path": "/v2/" + rest}, message="not a registry API path")


def validate_name(name: str) -> str:
    components = name.split("/")
    if len(name) > MAX_NAME_LENGTH or not all(_COMPONENT.match(c) for c in components):
        raise RegistryError(NAME_INVALID, {"name": name})
    return name


def is_digest(reference: str) -> bool:
    return ":" in reference


def validate_digest(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    pattern = _DIGEST_HEX.get(algorithm)
    if pattern is None or not pattern.match(hexpart):
        raise RegistryError(
            DIGEST_INVALID,
            {"digest": digest, "supported": sorted(_DIGEST_HEX)},
            message="invalid or unsupported digest",
        )
    return digest


def validate_reference(reference: str) -> str:
    """A manifest reference: a digest or a tag."""
    if is_digest(reference):
        return validate_digest(reference)
    if not _TAG.match(reference):
        raise RegistryError(MANIFEST_INVALID, {"tag": reference}, message="invalid tag")
    return reference


@attrs.frozen
class ImageReference:
    """An image as Docker writes it: ``redis``, ``ghcr.io/owner/image:tag``, ``name@digest``."""

    registry: str | None  # the first part when it names a registry (a dot, a port, localhost)
    name: str
    reference: str  # a tag ("latest" when none is given) or a digest


def parse_image(text: str) -> ImageReference:
    """Split an image reference by Docker's rules; raise RegistryError when it is invalid."""
    rest, at, digest = text.strip().partition("@")
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag = "latest"
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    first, sep, remainder = rest.partition("/")
    registry = None
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
    reference = validate_digest(digest) if at else validate_reference(tag)
    return ImageReference(registry, validate_name(rest), reference)


def new_hasher(digest: str) -> hashlib._Hash:
    """A hash object for a digest that :func:`validate_digest` accepted."""
    return hashlib.new(digest.partition(":")[0])


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
