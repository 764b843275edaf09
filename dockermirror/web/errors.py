"""The one place OCI errors become HTTP responses."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from dockermirror.auth.tokens import SERVICE
from dockermirror.errors import UNAUTHORIZED, RegistryError
from dockermirror.web.requests import base_url


def render_error(request: IRequest, error: RegistryError) -> bytes:
    """Set status and headers for ``error`` on ``request`` and return the body."""
    request.setResponseCode(error.status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.removeHeader(b"content-length")
    if error.code is UNAUTHORIZED:
        # Every challenge points at the mirror's own token endpoint, never at an upstream's.
        challenge = f'Bearer realm="{base_url(request)}/v2/auth",service="{SERVICE}"'
        request.responseHeaders.setRawHeaders(b"www-authenticate", [challenge.encode()])
    if error.status == 405:
        # The mirror is read-only: these are all it ever allows.
        request.responseHeaders.setRawHeaders(b"allow", [b"GET, HEAD"])
    if error.retry_after is not None:
        request.responseHeaders.setRawHeaders(b"retry-after", [error.retry_after.encode()])
    return error.body()
