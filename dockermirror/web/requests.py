"""Reading what a client sent: headers, the host it used, query parameters, decoded leniently.

Bad bytes in a header or query must give an answer, never a 500.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.web.iweb import IRequest

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(
    rf"(?:(?P<name>{_LABEL}(?:\.{_LABEL})*\.?)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>\d{1,5}))?\Z"
)


def header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def header_values(request: IRequest, name: bytes) -> list[str]:
    return [value.decode("latin-1") for value in request.requestHeaders.getRawHeaders(name, [])]


def host(request: IRequest) -> str:
    """The host the client used, which :func:`valid_host` has let in: as a trusted proxy
    passed it on, else the Host header, else (HTTP/1.0 without one) the address it reached."""
    forwarded = getattr(request, "forwarded_host", None)
    if forwarded:
        return str(forwarded)
    named = header(request, b"host")
    if named:
        return named
    local = request.getHost()
    address = getattr(local, "host", None)
    if address is None:
        return "localhost"  # a unix socket
    address = f"[{address}]" if ":" in address else address
    return f"{address}:{local.port}"


def valid_host(value: str) -> bool:
    """A host name, IPv4 or bracketed IPv6 address, with an optional port.

    The Host header ends up in routes, links, the token realm and the usage page:
    nothing else may pass as one.
    """
    match = _HOST.match(value)
    if match is None or len(value) > 260:
        return False
    if match["port"] is not None and int(match["port"]) > 65535:
        return False
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return False
    return True


def base_url(request: IRequest) -> str:
    """The mirror's own URL as this client reaches it."""
    scheme = getattr(request, "scheme", None) or ("https" if request.isSecure() else "http")
    return f"{scheme}://{host(request)}"


def query_values(request: IRequest, key: str) -> list[str]:
    """A query parameter's values."""
    args = getattr(request, "args", None) or {}
    return [v.decode("utf-8", "replace") for v in args.get(key.encode(), [])]


def query_value(request: IRequest, key: str) -> str | None:
    """A query parameter's first value, or None."""
    values = query_values(request, key)
    return values[0] if values else None
