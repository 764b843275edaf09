"""Reading what a client sent: headers, the host it used, query parameters, decoded leniently.

Bad bytes in a header or query must give an answer, never a 500.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest


def header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def header_values(request: IRequest, name: bytes) -> list[str]:
    return [value.decode("latin-1") for value in request.requestHeaders.getRawHeaders(name, [])]


def host(request: IRequest) -> str:
    return header(request, b"host") or ""


def base_url(request: IRequest) -> str:
    """The mirror's own URL as this client reaches it."""
    return f"{'https' if request.isSecure() else 'http'}://{host(request)}"


def query_values(request: IRequest, key: str) -> list[str]:
    """A query parameter's values."""
    args = getattr(request, "args", None) or {}
    return [v.decode("utf-8", "replace") for v in args.get(key.encode(), [])]


def query_value(request: IRequest, key: str) -> str | None:
    """A query parameter's first value, or None."""
    values = query_values(request, key)
    return values[0] if values else None
