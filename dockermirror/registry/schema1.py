"""The digest of a manifest, as registries compute it: signed schema1 is the exception.

A signed schema1 manifest (``application/vnd.docker.distribution.manifest.v1+prettyjws``)
is a JWS in libtrust's "pretty" form: the manifest's own JSON with a
``signatures`` list spliced in before its closing brace.  Its digest is that of
the payload, the manifest without its signatures, which each signature's
protected header lets anyone rebuild: the body's first ``formatLength`` bytes,
then the ``formatTail`` (base64url) that the signatures replaced.  Every other
manifest, unsigned schema1 (``v1+json``) included, is hashed whole.

The bytes served are always the upstream's; only the digest they are checked
against is computed this way.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from dockermirror.reference import digest_of
from dockermirror.registry.mediatypes import DOCKER_SCHEMA1_SIGNED, base_type

# base64url as libtrust writes it (no padding), or padded to a multiple of four.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}\Z")
# json.loads fails with these on bad input; RecursionError on very deep nesting.
_JSON_ERRORS = (ValueError, RecursionError)


class MalformedSignature(ValueError):
    """A signed schema1 manifest whose payload cannot be rebuilt from its signatures."""


def manifest_digest(body: bytes, media_type: str, algorithm: str = "sha256") -> str:
    """The digest a registry gives these manifest bytes (raises :class:`MalformedSignature`)."""
    payload = signed_payload(body, media_type)
    return digest_of(body if payload is None else payload, algorithm)


def signed_payload(body: bytes, media_type: str) -> bytes | None:
    """The payload of a signed schema1 manifest, the bytes its digest is taken over.

    ``None`` for any other manifest.  A manifest is signed when it is a JSON
    object with a ``signatures`` member and either says ``"schemaVersion": 1``
    or comes as ``v1+prettyjws``; its signatures must then be well formed and
    agree, and the payload they rebuild must be the body without its
    signatures (a client such as skopeo reads the body, Docker the payload).
    """
    signed_type = base_type(media_type) == DOCKER_SCHEMA1_SIGNED
    if not signed_type and b'"signatures"' not in body:
        return None  # the common case, with no parsing
    try:
        document = json.loads(body)
    except _JSON_ERRORS:
        return None  # not JSON: hashed whole, and checked as such
    if not isinstance(document, dict) or "signatures" not in document:
        return None
    if not signed_type and not _is_one(document.get("schemaVersion")):
        return None
    signatures = document["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise MalformedSignature("a signed manifest without signatures")
    formats = {_format_of(signature) for signature in signatures}
    if len(formats) != 1:
        raise MalformedSignature("the signatures disagree on the payload")
    ((length, tail),) = formats
    if length > len(body):
        raise MalformedSignature("formatLength is past the end of the manifest")
    payload = body[:length] + tail
    try:
        unsigned = json.loads(payload)
    except _JSON_ERRORS:
        raise MalformedSignature("the signed payload is not JSON") from None
    del document["signatures"]
    if unsigned != document:
        raise MalformedSignature("the signed payload is not the manifest without its signatures")
    return payload


def _format_of(signature: Any) -> tuple[int, bytes]:
    """A signature's (formatLength, formatTail), from its protected header."""
    protected = signature.get("protected") if isinstance(signature, dict) else None
    if not isinstance(protected, str):
        raise MalformedSignature("a signature without a protected header")
    try:
        header = json.loads(_base64url(protected))
    except _JSON_ERRORS:
        raise MalformedSignature("the protected header is not JSON") from None
    if not isinstance(header, dict):
        raise MalformedSignature("the protected header is not a JSON object")
    length, tail = header.get("formatLength"), header.get("formatTail")
    if type(length) is not int or length < 0:
        raise MalformedSignature("formatLength is not a length")
    if not isinstance(tail, str):
        raise MalformedSignature("formatTail is missing")
    return length, _base64url(tail)


def _base64url(text: str) -> bytes:
    """Decode base64url as libtrust does: line breaks and spaces dropped, padding optional."""
    text = text.replace("\n", "").replace(" ", "")
    bare = text.rstrip("=")
    if not _BASE64URL.match(text) or len(bare) % 4 == 1:
        raise MalformedSignature("invalid base64url")
    try:
        return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except binascii.Error:
        raise MalformedSignature("invalid base64url") from None


def _is_one(value: object) -> bool:
    return type(value) is int and value == 1
