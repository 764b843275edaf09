"""Manifest media types, and content negotiation done locally.

The cache asks the upstream for a tag with every manifest type (so what a tag
means never depends on which client asked first) and decides here whether a
client may receive what came back.  A client that sends no Accept at all takes
only schema1, as distribution treats it: it gets what the upstream answers it.
"""

from __future__ import annotations

from collections.abc import Sequence

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
# All a client without an Accept header takes (distribution's rule).
SCHEMA1: frozenset[str] = frozenset({DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1})
# What a blob is when nobody says otherwise.
OCTET_STREAM = "application/octet-stream"

# Lists first: a registry picks the first type it has.
ALL_MANIFESTS: tuple[str, ...] = (
    OCI_INDEX,
    DOCKER_LIST,
    OCI_MANIFEST,
    DOCKER_SCHEMA2,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
)


def base_type(media_type: str) -> str:
    """A media type without its parameters, in lower case."""
    return media_type.split(";")[0].strip().lower()


def accepted_types(accept: Sequence[str]) -> set[str]:
    """The media types named by Accept values (parameters such as ``q`` dropped)."""
    return {
        base_type(media_range)
        for value in accept
        for media_range in value.split(",")
        if media_range.strip()
    }


def acceptable(media_type: str, accept: Sequence[str]) -> bool:
    """Whether a client that sent these Accept values takes a manifest of ``media_type``.

    A client takes the types it names.  One that names none (no Accept, or
    only wildcards such as curl's ``*/*``) takes only schema1, signed or not:
    distribution answers it with schema1, converting a schema2 image or the
    default platform of a list on the fly.
    """
    named = {t for t in accepted_types(accept) if not t.endswith("/*")}
    if not named:
        return base_type(media_type) in SCHEMA1
    return base_type(media_type) in named
