"""The pull path: manifests, blobs, tag lists and referrers, from the upstream to the client.

Manifests are small and buffered (bounded, digest-checked, bytes untouched);
everything else streams through :class:`~dockermirror.streaming.StreamResource`.
Upstream failures become the OCI error a client expects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import attrs
from hyperlink import EncodedURL
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import IResource
from twisted.web.server import Request

from dockermirror.config import UpstreamSettings
from dockermirror.errors import (
    BLOB_UNKNOWN,
    CODES,
    DENIED,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    UNKNOWN,
    ErrorCode,
    RegistryError,
)
from dockermirror.reference import digest_of, is_digest
from dockermirror.routing import Target
from dockermirror.streaming import BodyPipe, BodyTooLarge, StreamResource, discard, read_bounded
from dockermirror.upstream import UpstreamClient

_BLOB_HEADERS = (
    b"content-type",
    b"content-length",
    b"content-range",
    b"accept-ranges",
    b"docker-content-digest",
    b"etag",
    b"last-modified",
)
_LIST_HEADERS = (b"content-type", b"content-length", b"oci-filters-applied")
_NOT_FOUND_CODES = {MANIFEST_UNKNOWN.code, BLOB_UNKNOWN.code, NAME_UNKNOWN.code}
_MAX_ERROR_BYTES = 64 * 1024


@attrs.frozen
class Manifest:
    digest: str  # "" when a HEAD answer did not say
    media_type: str
    size: int | None
    body: bytes | None  # None for the answer to a HEAD


def respond_manifest(request: Request, manifest: Manifest) -> bytes:
    """Headers and body for a manifest response; the bytes are exactly the upstream's."""
    headers = [(b"content-type", manifest.media_type), (b"docker-content-digest", manifest.digest)]
    if manifest.size is not None:
        headers.append((b"content-length", str(manifest.size)))
    for name, value in headers:
        if value:
            request.responseHeaders.setRawHeaders(name, [value.encode()])
    return manifest.body if request.method != b"HEAD" and manifest.body is not None else b""


class Puller:
    """Answers pull requests for resolved targets from their upstream registries."""

    def __init__(
        self,
        clients: Mapping[str, UpstreamClient],
        clock: IReactorTime,
        settings: UpstreamSettings,
    ) -> None:
        self._clients = clients
        self._clock = clock
        self._settings = settings

    async def manifest(self, request: Request, target: Target, reference: str) -> bytes:
        accept = request.requestHeaders.getRawHeaders(b"accept", [])
        manifest = await self.fetch_manifest(target, reference, request.method, accept)
        return respond_manifest(request, manifest)

    async def fetch_manifest(
        self, target: Target, reference: str, method: bytes, accept: Sequence[bytes]
    ) -> Manifest:
        """A manifest from the upstream; a GET's bytes are bounded and digest-checked."""
        response = await self._clients[target.registry.name].request(
            method,
            target.name,
            ("manifests", reference),
            headers={b"accept": accept} if accept else None,
        )
        if response.code != 200:
            raise await upstream_failure(response, method, target, MANIFEST_UNKNOWN)
        media_type = _header(response, b"content-type")
        if method == b"HEAD":
            discard(response)
            length = _header(response, b"content-length")
            return Manifest(
                _header(response, b"docker-content-digest"),
                media_type,
                int(length) if length.isdigit() else None,
                None,
            )
        try:
            body = await read_bounded(response, self._settings.max_manifest_bytes)
        except BodyTooLarge:
            raise RegistryError(
                MANIFEST_INVALID,
                {"limit": self._settings.max_manifest_bytes},
                status=502,
                message="the upstream manifest is larger than the mirror accepts",
            ) from None
        return Manifest(
            _check_manifest_digest(response, body, reference), media_type, len(body), body
        )

    async def blob(self, request: Request, target: Target, digest: str) -> IResource:
        ranges = request.requestHeaders.getRawHeaders(b"range")
        response = await self.fetch_blob(target, digest, request.method, ranges or [])
        # Only a whole body can be checked against its digest.
        expected = digest if response.code == 200 else None
        headers = _copy_headers(response, _BLOB_HEADERS, request.method)
        return self._stream(response, headers, expected)

    async def fetch_blob(
        self, target: Target, digest: str, method: bytes, ranges: Sequence[bytes]
    ) -> IResponse:
        """An upstream blob response (200, 206 or 416) whose body is not read yet."""
        response = await self._clients[target.registry.name].request(
            method,
            target.name,
            ("blobs", digest),
            headers={b"range": ranges} if ranges else None,
        )
        if response.code not in (200, 206, 416):
            raise await upstream_failure(response, method, target, BLOB_UNKNOWN)
        return response

    async def tags(self, request: Request, target: Target) -> StreamResource:
        query = [(k, v) for k in ("n", "last") for v in query_values(request, k)]
        response = await self._clients[target.registry.name].request(
            request.method, target.name, ("tags", "list"), query=query
        )
        if response.code != 200:
            raise await upstream_failure(response, request.method, target, NAME_UNKNOWN)
        headers = _copy_headers(response, _LIST_HEADERS, request.method)
        links = response.headers.getRawHeaders(b"link", [])
        if links:
            headers.append((b"link", [_mirror_link(link, target, request) for link in links]))
        return self._stream(response, headers, None)

    async def referrers(self, request: Request, target: Target, digest: str) -> StreamResource:
        query = [("artifactType", v) for v in query_values(request, "artifactType")]
        response = await self._clients[target.registry.name].request(
            request.method, target.name, ("referrers", digest), query=query
        )
        if response.code != 200:
            raise await upstream_failure(response, request.method, target, MANIFEST_UNKNOWN)
        headers = _copy_headers(response, _LIST_HEADERS, request.method)
        return self._stream(response, headers, None)

    def _stream(
        self,
        response: IResponse,
        headers: list[tuple[bytes, list[bytes]]],
        expected_digest: str | None,
    ) -> StreamResource:
        return StreamResource(
            response,
            headers,
            lambda request: BodyPipe(
                request, self._clock, self._settings.idle_timeout, expected_digest
            ),
        )


async def upstream_failure(
    response: IResponse, method: bytes, target: Target, not_found: ErrorCode
) -> RegistryError:
    """The OCI error to give the client for an upstream answer that is not a success."""
    upstream_code, upstream_message = None, None
    if method != b"HEAD":
        try:
            upstream_code, upstream_message = _first_error(
                await read_bounded(response, _MAX_ERROR_BYTES)
            )
        except Exception:  # an unreadable error body is no reason to fail worse
            pass
    else:
        discard(response)
    detail = {
        "registry": target.registry.name,
        "name": target.name,
        "upstream_status": response.code,
        "upstream_message": upstream_message,
    }
    status = response.code
    if status == 404:
        code = CODES[upstream_code] if upstream_code in _NOT_FOUND_CODES else not_found
        return RegistryError(code, detail)
    if status in (401, 403):
        return RegistryError(DENIED, detail)
    if status == 429:
        retry = response.headers.getRawHeaders(b"retry-after", [b"60"])[0]
        return RegistryError(TOOMANYREQUESTS, detail, headers=[(b"retry-after", retry)])
    if 400 <= status < 500 and upstream_code in CODES:
        return RegistryError(CODES[upstream_code], detail, status=status)
    if status >= 500:
        return RegistryError(
            UNAVAILABLE, detail, status=502, message=f"the upstream registry answered {status}"
        )
    return RegistryError(
        UNKNOWN, detail, status=502, message=f"unexpected upstream answer {status}"
    )


def _first_error(body: bytes) -> tuple[str | None, str | None]:
    try:
        error = json.loads(body)["errors"][0]
        return str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


def _check_manifest_digest(response: IResponse, body: bytes, reference: str) -> str:
    """The manifest's digest; the bytes must match the reference and the upstream's claim."""
    algorithm = reference.partition(":")[0] if is_digest(reference) else "sha256"
    digest = digest_of(body, algorithm)
    claimed = _header(response, b"docker-content-digest")
    expected = reference if is_digest(reference) else claimed
    if expected and expected.partition(":")[0] == algorithm and expected != digest:
        raise RegistryError(
            MANIFEST_INVALID,
            {"expected": expected, "actual": digest},
            status=502,
            message="the upstream manifest does not match its digest",
        )
    return digest


def _copy_headers(
    response: IResponse, names: tuple[bytes, ...], method: bytes
) -> list[tuple[bytes, list[bytes]]]:
    headers = [(n, v) for n in names if (v := response.headers.getRawHeaders(n))]
    # Twisted keeps a HEAD's Content-Length among the headers but moves a GET's
    # into response.length, which is UNKNOWN_LENGTH once a gzip'd body is decoded.
    if method != b"HEAD" and response.length is not UNKNOWN_LENGTH:
        headers.append((b"content-length", [str(response.length).encode()]))
    return headers


def _header(response: IResponse, name: bytes) -> str:
    return response.headers.getRawHeaders(name, [b""])[0].decode("latin-1")


def query_values(request: Request, key: str) -> list[str]:
    """A query parameter's values, decoded leniently (bad bytes must not become a 500)."""
    return [v.decode("utf-8", "replace") for v in request.args.get(key.encode(), [])]


def _mirror_link(link: bytes, target: Target, request: Request) -> bytes:
    """Point an upstream pagination link at the same list on the mirror."""
    text = link.decode("latin-1")
    start, end = text.find("<"), text.find(">")
    if start < 0 or end < start:
        return link
    upstream = EncodedURL.from_text(text[start + 1 : end])
    mirror = EncodedURL(path=("v2", *target.client_name.split("/"), "tags", "list"), rooted=True)
    mirror = mirror.replace(query=upstream.query)
    for ns in query_values(request, "ns"):
        mirror = mirror.add("ns", ns)
    return f"{text[:start]}<{mirror.to_text()}>{text[end + 1 :]}".encode("latin-1")
