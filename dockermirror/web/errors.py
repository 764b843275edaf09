"""The one place OCI errors become HTTP responses."""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import quote

from twisted.web.iweb import IRequest

from dockermirror.auth.tokens import SERVICE
from dockermirror.errors import UNAUTHORIZED, RegistryError
from dockermirror.web.requests import base_url, query_value

# The mirror is read-only: these are all it ever allows (the Allow header of every 405).
_ALLOW = b"GET, HEAD"


def render_error(request: IRequest, error: RegistryError) -> bytes:
    """Set status and headers for ``error`` on ``request`` and return the body."""
    request.setResponseCode(error.status, _reason(error.status))
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.removeHeader(b"content-length")
    if error.code is UNAUTHORIZED:
        # Every challenge points at the mirror's own token endpoint, never at an upstream's.
        realm = base_url(request) + "/v2/auth"
        ns = query_value(request, "ns")
        if ns:
            # containerd asks the realm as given, without the ?ns= of its registry requests:
            # the realm carries it, so that scopes are routed to the same registry.
            realm += "?ns=" + quote(ns, safe="")
        challenge = f"Bearer realm={_quoted(realm)},service={_quoted(SERVICE)}"
        if error.scope is not None:
            challenge += f",scope={_quoted(error.scope)}"
        request.responseHeaders.setRawHeaders(b"www-authenticate", [challenge.encode()])
    if error.status == 405:
        request.responseHeaders.setRawHeaders(b"allow", [_ALLOW])
    if error.retry_after is not None:
        request.responseHeaders.setRawHeaders(b"retry-after", [error.retry_after.encode()])
    return error.body()


def render_closing_response(error: RegistryError) -> bytes:
    """``error`` as a whole HTTP/1.1 response after which the connection closes.

    For the channel, which refuses some requests before a Request exists to render on.
    """
    body = error.body()
    headers = [b"content-type: application/json", b"content-length: %d" % len(body)]
    if error.status == 405:
        headers.append(b"allow: " + _ALLOW)
    status = b"HTTP/1.1 %d %s" % (error.status, HTTPStatus(error.status).phrase.encode())
    return b"\r\n".join([status, *headers, b"connection: close", b"", body])


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string: the Host header went into it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(status: int) -> bytes | None:
    """The reason phrase: Twisted knows none for some statuses (429 "Unknown Status")."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return None  # (an upstream's own status, passed on)
