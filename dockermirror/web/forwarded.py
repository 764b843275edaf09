"""Who the client is behind a reverse proxy, from trusted proxies only.

Headers that name a client address, scheme or host are believed only when the
connection comes from a configured proxy; from anywhere else they are what
they are, a client's claim, and ignored.  Of a chain of addresses the
rightmost one that is not itself a trusted proxy is the client: the ones to
its left were written by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs
from twisted.web.iweb import IRequest

from dockermirror.config import strip_port
from dockermirror.policy.access import client_address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class Client:
    address: str | None  # None: a unix socket's peer
    scheme: str  # "http" or "https", as the client reached the mirror
    host: str | None = None  # the host name it used, when a proxy passed it on


def client_of(request: IRequest, trusted: Sequence[Network]) -> Client:
    peer = getattr(request.getClientAddress(), "host", None)
    scheme = "https" if request.isSecure() else "http"
    if peer is None or not _within(peer, trusted):
        return Client(peer, scheme)
    chain, proto, host = _forwarded(request)
    address = peer
    for hop in reversed(chain):
        address = hop
        if not _within(hop, trusted):
            break
    if proto in ("http", "https"):
        scheme = proto
    return Client(address, scheme, host or None)


def _forwarded(request: IRequest) -> tuple[list[str], str | None, str | None]:
    """The address chain, protocol and host, from ``X-Forwarded-*`` or else ``Forwarded``.

    One source only, ``X-Forwarded-*`` first as most proxies write it: a proxy
    that writes one kind passes the other on as the client sent it, and a
    client must not choose its address by sending the kind its proxy ignores.
    """
    headers = request.requestHeaders
    if any(headers.hasHeader(b"x-forwarded-" + name) for name in (b"for", b"proto", b"host")):
        return _x_forwarded(request)
    chain: list[str] = []
    proto: str | None = None
    host: str | None = None
    for value in headers.getRawHeaders(b"forwarded", []):
        for element in value.decode("latin-1").split(","):
            for pair in element.split(";"):
                key, _, item = pair.strip().partition("=")
                item = item.strip().strip('"')
                if key.lower() == "for":
                    chain.append(strip_port(item))
                elif key.lower() == "proto":
                    proto = item.lower()
                elif key.lower() == "host":
                    host = item
    return chain, proto, host


def _x_forwarded(request: IRequest) -> tuple[list[str], str | None, str | None]:
    headers = request.requestHeaders
    chain: list[str] = []
    proto: str | None = None
    for value in headers.getRawHeaders(b"x-forwarded-for", []):
        chain.extend(
            strip_port(v.strip()) for v in value.decode("latin-1").split(",") if v.strip()
        )
    # Of a list, the last: what the proxy nearest the mirror wrote.
    proto = _last(headers.getRawHeaders(b"x-forwarded-proto", []))
    host = _last(headers.getRawHeaders(b"x-forwarded-host", []))
    return chain, proto.lower() if proto else None, host


def _last(values: list[bytes]) -> str | None:
    return values[-1].decode("latin-1").split(",")[-1].strip() if values else None


def _within(address: str, networks: Sequence[Network]) -> bool:
    # As the access lists see it: an IPv4-mapped address (a dual-stack socket) is IPv4.
    ip = client_address(address)
    return ip is not None and any(ip in net for net in networks)
