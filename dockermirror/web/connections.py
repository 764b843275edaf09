"""Caps on open client connections: per client address and in all."""

from __future__ import annotations

from collections import Counter

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

log = Logger()

# Refusals are reported at most this often: a flood of them must not flood the log.
REPORT_INTERVAL = 60.0


def client_of(address: IAddress | None) -> str | None:
    """The address a per-client cap counts by; None (a unix socket) is capped only in all."""
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return None


class ConnectionCaps:
    """Counts open connections; admits one only while both caps have room."""

    def __init__(self, clock: IReactorTime, max_connections: int, per_client: int) -> None:
        self.max_connections = max_connections
        self.per_client = per_client
        self._clock = clock
        self._open = 0
        self._by_client: Counter[str] = Counter()
        self._refused = 0
        self._reported: float | None = None

    def admit(self, client: str | None) -> bool:
        if self._open >= self.max_connections:
            self._refuse(client, "in all", self.max_connections)
            return False
        if client is not None and self._by_client[client] >= self.per_client:
            self._refuse(client, "per client", self.per_client)
            return False
        self._open += 1
        if client is not None:
            self._by_client[client] += 1
        return True

    def release(self, client: str | None) -> None:
        self._open -= 1
        if client is not None:
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]  # a scan from many addresses leaves nothing behind

    def _refuse(self, client: str | None, which: str, cap: int) -> None:
        self._refused += 1
        now = self._clock.seconds()
        if self._reported is not None and now < self._reported + REPORT_INTERVAL:
            return
        log.warn(
            "refused {refused} client connection(s) since the last report: over the cap of"
            " {cap} open connections {which} (the last from {client})",
            refused=self._refused,
            cap=cap,
            which=which,
            client=client or "a local socket",
        )
        self._refused = 0
        self._reported = now


class RefusedConnection(Protocol):
    """Closes a connection over the caps at once.

    Returning None from buildProtocol would be cheaper for plain TCP, but a TLS
    port wraps whatever it returns and fails on None with a traceback per connection.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        # A reset, not a FIN: no lingering socket, nothing owed to a client that was not served.
        self.transport.abortConnection()  # type: ignore[attr-defined]
