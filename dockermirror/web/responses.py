"""Rendering the domain's answers to a client: manifests, blobs, tag lists and referrers."""

from __future__ import annotations

import json

from hyperlink import DecodedURL
from twisted.web.resource import IResource

from dockermirror.errors import RANGE_INVALID, RegistryError
from dockermirror.registry.model import (
    BlobInfo,
    BlobSource,
    CacheOutcome,
    Manifest,
    RangeNotSatisfiable,
    Referrers,
    TagPage,
)
from dockermirror.routing import Target
from dockermirror.web.errors import render_error
from dockermirror.web.ranges import parse_range
from dockermirror.web.requests import header, query_values
from dockermirror.web.site import MirrorRequest
from dockermirror.web.transfer import StreamResource

CACHE_HEADER = b"x-dockermirror-cache"
_STALE_WARNING = b'110 - "Response is Stale"'


def render_manifest(request: MirrorRequest, manifest: Manifest) -> bytes:
    """Headers and body for a manifest; the bytes are exactly the upstream's."""
    _note_outcome(request, manifest.outcome)
    headers = [(b"content-type", manifest.media_type), (b"docker-content-digest", manifest.digest)]
    if manifest.size is not None:
        headers.append((b"content-length", str(manifest.size)))
    for name, value in headers:
        if value:
            request.responseHeaders.setRawHeaders(name, [value.encode()])
    return manifest.body if request.method != b"HEAD" and manifest.body is not None else b""


async def render_blob(request: MirrorRequest, source: BlobSource) -> bytes | IResource:
    """A blob, a range of it (206) or a 416: for a HEAD without its bytes."""
    if request.method == b"HEAD":
        info = await source.stat()
        _blob_headers(request, info)
        if info.size is not None:
            request.setHeader(b"content-length", str(info.size).encode())
        return b""
    try:
        body = await source.open(parse_range(header(request, b"range")))
    except RangeNotSatisfiable as e:
        size = "*" if e.size is None else str(e.size)
        request.setHeader(b"content-range", f"bytes */{size}".encode())
        return render_error(request, RegistryError(RANGE_INVALID, {"size": e.size}))
    _blob_headers(request, body.info)
    if body.range is not None:
        request.setResponseCode(206)
        total = "*" if body.info.size is None else str(body.info.size)
        content_range = f"bytes {body.range.first}-{body.range.last}/{total}"
        request.setHeader(b"content-range", content_range.encode())
    if body.length is not None:
        request.setHeader(b"content-length", str(body.length).encode())
    return StreamResource(body.stream)


def _blob_headers(request: MirrorRequest, info: BlobInfo) -> None:
    _note_outcome(request, info.outcome)
    request.setHeader(b"content-type", info.media_type.encode("latin-1"))
    request.setHeader(b"docker-content-digest", info.digest.encode())
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"etag", f'"{info.digest}"'.encode())


def render_tags(request: MirrorRequest, page: TagPage, target: Target) -> bytes:
    """A tag list; the next page's link points at the mirror, under the client's name."""
    if page.next_page is not None:
        link = DecodedURL.from_text("/").child(
            "v2", *target.client_name.split("/"), "tags", "list"
        )
        for key, value in page.next_page:
            link = link.add(key, value)
        for ns in query_values(request, "ns"):
            link = link.add("ns", ns)
        request.setHeader(b"link", f'<{link.to_text()}>; rel="next"'.encode())
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"name": page.name, "tags": list(page.tags)}).encode()


def render_referrers(request: MirrorRequest, referrers: Referrers) -> bytes:
    request.setHeader(b"content-type", referrers.media_type.encode("latin-1"))
    if referrers.filters_applied:
        request.setHeader(b"oci-filters-applied", referrers.filters_applied.encode("latin-1"))
    return referrers.body


def _note_outcome(request: MirrorRequest, outcome: CacheOutcome | None) -> None:
    if outcome is None:
        return
    request.cache = outcome.value
    request.setHeader(CACHE_HEADER, outcome.value.encode())
    if outcome is CacheOutcome.STALE:
        request.setHeader(b"warning", _STALE_WARNING)
