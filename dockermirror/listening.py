"""Listening on the configured endpoints, keeping each listening port (``--workers`` passes
its socket on to the other workers)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from dockermirror.startup import StartupError

log = Logger()


class Listener(Service):
    """One listening endpoint, opened while twistd may still hold privileges (a low port).

    Twisted's endpoints listen at once (TCP, TLS, UNIX, systemd-passed sockets),
    so a port in use stops start-up with one line rather than a logged failure.

    ``reuse_port`` (``--workers``): a plain TCP endpoint listens on a socket of its
    own with ``SO_REUSEPORT``, beside the other workers' on the same address, and
    the kernel spreads new connections evenly over them.  (One shared socket
    would do too, but the first worker to wake takes a whole burst of
    connections.)
    """

    def __init__(
        self,
        description: str,
        factory: Any,
        reactor: Any,
        what: str = "",
        *,
        reuse_port: bool = False,
    ) -> None:
        self.description = description
        self.factory = factory
        self._reactor = reactor
        self._what = what
        self.port: IListeningPort | None = None
        try:
            self._endpoint = serverFromString(reactor, description)
        except IndexError:
            # A systemd: endpoint names a socket systemd passes; none was (no LISTEN_FDS).
            raise StartupError(
                f"cannot listen on {description}: systemd passed no such socket"
            ) from None
        self.reuse_port = reuse_port and isinstance(
            self._endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)
        )
        # Whether other processes can serve it too: a TLS port needs its keys and context.
        self.shareable = not isinstance(self._endpoint, SSL4ServerEndpoint)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        results: list[IListeningPort | Failure] = []
        listening = (
            self._listen_reusing() if self.reuse_port else self._endpoint.listen(self.factory)
        )
        listening.addBoth(results.append)
        if not results:
            raise StartupError(f"cannot listen on {self.description}: it did not listen at once")
        if isinstance(results[0], Failure):
            # Any reason (in use, no permission, a port number past 65535): one line.
            error = results[0].value
            error = getattr(error, "socketError", error)
            reason = getattr(error, "strerror", None) or error
            raise StartupError(f"cannot listen on {self.description}: {reason}")
        self.port = results[0]
        log.info("listening on {endpoint}{what}", endpoint=self.description, what=self._what)

    def _listen_reusing(self) -> Deferred[IListeningPort]:
        endpoint: Any = self._endpoint  # (its address: Twisted keeps it in private attributes)
        family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((endpoint._interface, endpoint._port))
                sock.listen(endpoint._backlog)
                sock.setblocking(False)
                # The reactor takes its own copy of the descriptor.
                port = self._reactor.adoptStreamPort(sock.fileno(), family, self.factory)
        except OSError as e:
            return fail(CannotListenError(endpoint._interface, endpoint._port, e))
        return succeed(port)

    def address(self) -> str | None:
        """``tcp:PORT:interface=HOST`` (``tcp6:``) of a port listening with SO_REUSEPORT."""
        if not self.reuse_port or self.port is None:
            return None
        host: Any = self.port.getHost()
        kind = "tcp6" if isinstance(host, IPv6Address) else "tcp"
        interface = host.host.replace(":", "\\:")
        return f"{kind}:{host.port}:interface={interface}"

    def startService(self) -> None:
        if self.port is None:  # (a service started without the privileged step, as in tests)
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def inheritable(self) -> tuple[int, str] | None:
        """The listening socket's descriptor and address family (``systemd:`` domain), if it
        is a plain socket another process can serve from (not TLS, which needs more)."""
        port: Any = self.port
        if port is None or not hasattr(port, "fileno"):
            return None
        if isinstance(getattr(port, "factory", None), TLSMemoryBIOFactory):
            return None
        address = port.getHost()
        domain = {IPv4Address: "INET", IPv6Address: "INET6", UNIXAddress: "UNIX"}.get(
            type(address)
        )
        if domain is None or port.socket.type != socket.SOCK_STREAM:
            return None
        return int(port.fileno()), domain
