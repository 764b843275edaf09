"""Where an upstream may send the mirror: public addresses, and its own.

A registry chooses its token realm and its redirect targets, so without a check
anyone who runs an upstream (or is configured as one by mistake) could aim the
mirror at the operator's own network: 127.0.0.1, 169.254.169.254, 10.0.0.0/8.
The check sits in the name resolver that the upstream's HTTP agent connects
through, so it applies to every hop and to the very address the connection goes
to (a name that resolves to a public address for a check and to a private one
for the connection gains nothing).  The registry's own host, which the operator
configured, may be anywhere; its addresses are then trusted for the other hosts
too, so a registry on a private network may use a token server beside it, and
so are the networks the operator names (an S3 store on the next subnet).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# Refused hosts are remembered for the error message; a few are enough.
_MAX_REMEMBERED = 64


def is_public(host: str) -> bool:
    """Whether an IP address is globally routable unicast: not loopback, private, link-local."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@implementer(IHostnameResolver)
class GuardedResolver:
    """Resolves as ``resolver`` does, leaving out addresses the upstream may not use."""

    def __init__(
        self,
        resolver: IHostnameResolver,
        own_host: str,
        trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self._resolver = resolver
        self._own_host = own_host.lower()
        self._trusted = tuple(trusted)
        self._own_addresses: set[str] = set()
        self._refused: dict[str, str] = {}

    def refused(self, host: str) -> str | None:
        """The address last refused for ``host``, if any."""
        return self._refused.get(host.lower())

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        receiver = _Filter(self, resolutionReceiver, hostName.lower())
        return self._resolver.resolveHostName(
            receiver, hostName, portNumber, addressTypes, transportSemantics
        )

    def admit(self, host: str, address: str) -> bool:
        """Whether ``host`` may be reached at ``address``; a refusal is logged."""
        if host == self._own_host:
            self._own_addresses.add(address)
            return True
        if is_public(address) or address in self._own_addresses or self._is_trusted(address):
            self._refused.pop(host, None)
            return True
        if len(self._refused) >= _MAX_REMEMBERED:
            self._refused.clear()
        self._refused[host] = address
        log.warn(
            "refused to connect to {host} ({address}) for {registry}: not a public address",
            host=host,
            address=address,
            registry=self._own_host,
        )
        return False

    def _is_trusted(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.partition("%")[0])
        return any(ip in network for network in self._trusted)


@implementer(IResolutionReceiver)
class _Filter:
    def __init__(self, guard: GuardedResolver, receiver: IResolutionReceiver, host: str) -> None:
        self._guard = guard
        self._receiver = receiver
        self._host = host

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        self._receiver.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)) and self._guard.admit(
            self._host, address.host
        ):
            self._receiver.addressResolved(address)

    def resolutionComplete(self) -> None:
        self._receiver.resolutionComplete()


@implementer(IReactorPluggableNameResolver)
class GuardedReactor:
    """The reactor, with :class:`GuardedResolver` as the name resolver its endpoints use."""

    def __init__(self, reactor: Any, resolver: GuardedResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("the guarded resolver is fixed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
