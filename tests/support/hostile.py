"""A hostile upstream registry for the tests: one misbehaviour per mode, on loopback.

Run as its own process::

    python3 -m tests.support.hostile --port P --other-port Q --elsewhere-port R \
        --v6-port S --log requests.jsonl

It listens on 127.0.0.1:P (the registry and its token endpoint), 127.0.0.1:Q
("other": the same address, another port: a CDN and a token server a registry
may legitimately send the mirror to), 127.0.0.2:R ("elsewhere": another
loopback address the mirror must refuse) and [::1]:S ("v6"), where there is one.
Every listener answers the same requests, so a request that arrives where it
must not is recorded, not merely refused by the kernel.

The mode is the first component of the repository name: ``/v2/<mode>/...``
(the rest of the name is free, so each test case has repositories of its own);
``/v2/`` answers 200.  The HTTP layer is hand-written (a plain Protocol parsing
the request line and headers itself) so that a mode can send bytes no HTTP
server library would: a million header lines, two Content-Lengths, a body
longer than its length, a 206 nobody asked for.

Modes (manifests ``/v2/<mode>/.../manifests/<ref>``, blobs ``/v2/<mode>/.../blobs/<digest>``):

- ``good``: a small valid OCI image manifest, its config and layer blobs, with
  correct digests, behind a Bearer challenge whose token endpoint works.
- ``headerflood``: a status line, then distinct header lines up to 1 GiB.
- ``continuation``: one header, then obs-fold continuation lines up to 1 GiB.
- ``dripheaders``: the response one byte per second.
- ``stallbody``: headers with Content-Length, half the body, then silence.
- ``truncated``: headers with Content-Length, half the body, then close.
- ``badlength``: ``Content-Length: abc``.
- ``twolengths``: two different Content-Length headers.
- ``longer``: the body is longer than its Content-Length (the rest is a smuggled response).
- ``shorter``: Content-Length larger than the body, then close.
- ``partial``: 206 with Content-Range to a request that had no Range.
- ``gzip``: ``Content-Encoding: gzip`` on a gzip bomb (~1 MiB expanding to 1 GiB of zeros),
  whatever the request's Accept-Encoding.
- ``bigmanifest``: a 64 MiB manifest.
- ``bigerror``: a 404 whose JSON error body is 64 MiB.
- ``redirect-other``: blob 307 to 127.0.0.1:Q, which serves the right bytes (only to a
  request without Authorization, as S3 does).
- ``redirect-loopback`` / ``redirect-loopback6`` / ``redirect-localhost``: blob 307 to
  127.0.0.2:R, to [::1]:S, to localhost:Q.
- ``redirect-scheme`` / ``redirect-gopher``: blob 307 to file:///etc/passwd, to gopher://.
- ``realm-elsewhere``: a Bearer challenge whose realm is on 127.0.0.2:R with a query.
- ``realm-query``: a realm on 127.0.0.1:Q with ``?injected=1``.
- ``realm-bad`` / ``realm-garbage``: a realm ``file:///x``, a realm that is no URL.
- ``token-redirect``: the realm (on P) answers 307 to the token server on Q.

``GET /_info`` (on any listener) gives the gzip bomb's digest and size, once the
bomb is ready (it is compressed in a thread at start, which takes a few seconds);
every other digest the tests need comes from this module's functions.

Every request is appended to the ``--log`` file as one JSON object per line:
listener, connection number, method, path, headers (in order, repeated ones kept),
and whether it went unanswered: a request that comes on a connection whose
framing a mode broke (two lengths, a body longer than its length, a stall) gets
no answer, as the client that reused it deserves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

SERVICE = "hostile.test"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024

FLOOD_LIMIT = GIB
BIG_BODY = 64 * MIB
BOMB_SIZE = GIB
# Connections a mode leaves open (stalls, drips) are closed after this long at the latest.
HOLD_SECONDS = 300.0
MAX_REQUEST_HEAD = 64 * KIB
CHUNK = 64 * KIB

# Modes whose answers are framed correctly (however unusable): the connection stays usable.
WELL_FRAMED = {"partial", "gzip", "bigmanifest", "bigerror"}
# Modes whose manifests and blobs are behind a Bearer challenge, and whose tokens they take.
TOKEN_PREFIX = {
    "good": "main-",
    "redirect-other": "main-",
    "redirect-loopback": "main-",
    "redirect-loopback6": "main-",
    "redirect-localhost": "main-",
    "redirect-scheme": "main-",
    "redirect-gopher": "main-",
    "realm-query": "other-",
    "realm-elsewhere": "elsewhere-",
    "token-redirect": "other-",
    "realm-bad": None,  # no token is ever good enough: the challenge itself is the problem
    "realm-garbage": None,
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _random_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


GOOD_LAYER = _random_bytes("good layer", 256 * KIB)
GOOD_CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest_of(GOOD_LAYER)]},
    },
    sort_keys=True,
).encode()
GOOD_BLOBS = {digest_of(GOOD_CONFIG): GOOD_CONFIG, digest_of(GOOD_LAYER): GOOD_LAYER}


def manifest_for(mode: str) -> bytes:
    """The (valid) manifest a mode serves, misbehaving or not: the good image, annotated."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": digest_of(GOOD_CONFIG),
            "size": len(GOOD_CONFIG),
        },
        "layers": [
            {"mediaType": OCI_LAYER, "digest": digest_of(GOOD_LAYER), "size": len(GOOD_LAYER)}
        ],
        "annotations": {"hostile.mode": mode},
    }
    return json.dumps(document, indent=2, sort_keys=True).encode()


def blob_for(mode: str) -> bytes:
    """The blob a misbehaving mode serves, whatever digest is asked for: 1 MiB of its own."""
    return _random_bytes(f"blob of {mode}", MIB)


def gzip_bomb(size: int = BOMB_SIZE) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 1 MiB for 1 GiB); takes a few seconds."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    parts = [compressor.compress(zeros) for _ in range(size // MIB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def _flood_lines() -> Iterator[bytes]:
    """Distinct header lines, about 64 KiB at a time, up to FLOOD_LIMIT bytes."""
    sent, n = 0, 0
    while sent < FLOOD_LIMIT:
        chunk = b"".join(b"X-Flood-%09d: %09d\r\n" % (i, i) for i in range(n, n + 2048))
        n += 2048
        sent += len(chunk)
        yield chunk


def _continuation_lines() -> Iterator[bytes]:
    """One header, then obs-fold continuation lines, up to FLOOD_LIMIT bytes."""
    yield b"X-Folded: start\r\n"
    sent, n = 0, 0
    while sent < FLOOD_LIMIT:
        chunk = b"".join(b" folded-%09d\r\n" % i for i in range(n, n + 2048))
        n += 2048
        sent += len(chunk)
        yield chunk


def _padded(prefix: bytes, suffix: bytes, size: int) -> Iterator[bytes]:
    """``prefix``, padding ``a``s and ``suffix``: ``size`` bytes in all, in chunks."""
    yield prefix
    left = size - len(prefix) - len(suffix)
    pad = b"a" * CHUNK
    while left > 0:
        yield pad[: min(left, CHUNK)]
        left -= CHUNK
    yield suffix


@implementer(IPullProducer)
class _Chunks:
    """Writes an iterator of chunks as the transport drains, then calls ``done``."""

    def __init__(self, transport: Any, chunks: Iterator[bytes], done: Callable[[], None]) -> None:
        self._transport = transport
        self._chunks = chunks
        self._done = done
        self._stopped = False

    def resumeProducing(self) -> None:
        if self._stopped:
            return
        chunk = next(self._chunks, None)
        if chunk is None:
            self._stopped = True
            self._transport.unregisterProducer()
            self._done()
            return
        self._transport.write(chunk)

    def stopProducing(self) -> None:
        self._stopped = True


class _Request:
    def __init__(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        url = urlsplit(target)
        self.path = url.path
        self.query = parse_qs(url.query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class HostileProtocol(Protocol):
    """Parses requests itself; answers normally (kept alive) or hands the connection to a mode."""

    def __init__(self, server: HostileServer, listener: str, number: int) -> None:
        self.server = server
        self.listener = listener
        self.number = number
        self._buffer = b""
        # A misbehaviour broke the connection's framing: no further request is answered.
        self._broken = False
        self._timers: list[IDelayedCall] = []
        self._producer: _Chunks | None = None

    @property
    def _out(self) -> Any:
        """The transport: a TCP connection, which is also a consumer."""
        return self.transport

    # Parsing

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_REQUEST_HEAD:
                    self._buffer = b""
                    if not self._broken:
                        self._out.loseConnection()
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            request = self._parse(head)
            if self._broken:
                # A client that sends another request here reused a connection whose last
                # answer was unusable: recorded, never answered.
                if request is not None:
                    self.server.record(self, request, unanswered=True)
                continue
            if request is None:
                self._out.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                self._out.loseConnection()
                self._broken = True
                return
            self.server.record(self, request)
            self.server.handle(self, request)

    def _parse(self, head: bytes) -> _Request | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return None
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return None
            headers.append((name.strip(), value.strip()))
        return _Request(parts[0], parts[1], headers)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self._producer is not None:
            self._producer.stopProducing()

    # Answers

    def answer(
        self,
        status: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        head: bool = False,
        length: bool = True,
    ) -> None:
        """A well-formed answer; the connection stays open for the next request."""
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if length:
            lines.append(f"Content-Length: {len(body)}")
        self._out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            self._out.write(body)

    def take(self) -> None:
        """From now on the connection is the mode's: later requests on it get no answer."""
        self._broken = True
        self.later(HOLD_SECONDS, self._out.loseConnection)

    def raw(self, data: bytes) -> None:
        self._out.write(data)

    def close(self) -> None:
        self._out.loseConnection()

    def stream(self, chunks: Iterator[bytes], then: Callable[[], None]) -> None:
        self._producer = _Chunks(self._out, chunks, then)
        self._out.registerProducer(self._producer, False)

    def later(self, seconds: float, call: Callable[..., object], *args: object) -> None:
        self._timers.append(self.server.clock.callLater(seconds, call, *args))


class HostileFactory(ServerFactory):
    def __init__(self, server: HostileServer, listener: str) -> None:
        self.server = server
        self.listener = listener

    def buildProtocol(self, addr: Any) -> HostileProtocol:
        self.server.connections += 1
        return HostileProtocol(self.server, self.listener, self.server.connections)


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


class HostileServer:
    def __init__(
        self, clock: IReactorTime, log: IO[str], ports: dict[str, tuple[str, int]]
    ) -> None:
        self.clock = clock
        self._log = log
        self.ports = ports
        self._issued = 0
        self.connections = 0
        self._bomb: bytes | None = None
        self._bomb_waiters: list[Deferred[bytes]] = []

    # Bookkeeping

    def record(self, conn: HostileProtocol, request: _Request, unanswered: bool = False) -> None:
        entry = {
            "listener": conn.listener,
            "connection": conn.number,
            "method": request.method,
            "path": request.target,
            "headers": request.headers,
            "unanswered": unanswered,
        }
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    def start_bomb(self) -> None:
        def ready(bomb: bytes) -> None:
            self._bomb = bomb
            waiters, self._bomb_waiters = self._bomb_waiters, []
            for waiter in waiters:
                waiter.callback(bomb)

        threads.deferToThread(gzip_bomb).addCallback(ready)

    def bomb(self) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if self._bomb is not None:
            d.callback(self._bomb)
        else:
            self._bomb_waiters.append(d)
        return d

    def url(self, listener: str, path: str, host: str | None = None) -> str:
        address, port = self.ports[listener]
        host = host or (f"[{address}]" if ":" in address else address)
        return f"http://{host}:{port}{path}"

    # Dispatch

    def handle(self, conn: HostileProtocol, request: _Request) -> None:
        path = request.path
        if path == "/_info":
            self._info(conn)
            return
        if path == "/token":
            self._token(conn, request)
            return
        if path == "/token-redirect":
            query = urlsplit(request.target).query
            location = self.url("other", "/token" + (f"?{query}" if query else ""))
            conn.answer("307 Temporary Redirect", [("Location", location)])
            return
        if path.startswith("/cdn/"):
            self._cdn(conn, request)
            return
        if path in ("/v2", "/v2/"):
            conn.answer("200 OK", [("Content-Type", "application/json")], b"{}")
            return
        parts = path.removeprefix("/v2/").split("/")
        if (
            not path.startswith("/v2/")
            or len(parts) < 3
            or parts[-2]
            not in (
                "manifests",
                "blobs",
            )
        ):
            body = _error("NAME_UNKNOWN", "no such endpoint")
            conn.answer("404 Not Found", [("Content-Type", "application/json")], body)
            return
        mode, kind, reference = parts[0], parts[-2], parts[-1]
        name = "/".join(parts[:-2])
        if mode in TOKEN_PREFIX and not self._authorized(mode, request):
            challenge = self._challenge(mode)
            headers = [("Content-Type", "application/json"), ("WWW-Authenticate", challenge)]
            conn.answer("401 Unauthorized", headers, _error("UNAUTHORIZED", "token required"))
            return
        head = request.method == "HEAD"
        if kind == "blobs" and mode.startswith("redirect-"):
            self._redirect(conn, mode, name, reference)
            return
        if mode in TOKEN_PREFIX:  # good, and the auth modes once authorized: the right bytes
            self._serve(conn, mode, kind, reference, head)
            return
        behaviour = getattr(self, "_mode_" + mode.replace("-", "_"), None)
        if behaviour is None:
            body = _error("NAME_UNKNOWN", f"no mode {mode}")
            conn.answer("404 Not Found", [("Content-Type", "application/json")], body)
            return
        if kind == "manifests":
            content, media_type = manifest_for(mode), OCI_MANIFEST
        else:
            content, media_type = blob_for(mode), "application/octet-stream"
        if mode not in WELL_FRAMED:
            conn.take()
        behaviour(conn, kind, content, media_type)

    # The registry's good side

    def _authorized(self, mode: str, request: _Request) -> bool:
        prefix = TOKEN_PREFIX[mode]
        authorization = request.header("authorization") or ""
        return prefix is not None and authorization.startswith("Bearer " + prefix)

    def _challenge(self, mode: str) -> str:
        realm = {
            "realm-query": self.url("other", "/token?injected=1"),
            "realm-elsewhere": self.url("elsewhere", "/token?scope=evil&secret=x"),
            "realm-bad": "file:///x",
            "realm-garbage": "ht!tp:/\\/garbage /token",
            "token-redirect": self.url("main", "/token-redirect"),
        }.get(mode, self.url("main", "/token"))
        return f'Bearer realm="{realm}",service="{SERVICE}"'

    def _token(self, conn: HostileProtocol, request: _Request) -> None:
        self._issued += 1
        token = f"{conn.listener}-{self._issued}"
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        conn.answer("200 OK", [("Content-Type", "application/json")], body)

    def _serve(
        self, conn: HostileProtocol, mode: str, kind: str, reference: str, head: bool
    ) -> None:
        if kind == "manifests":
            content = manifest_for(mode)
            if reference.startswith("sha256:") and reference != digest_of(content):
                body = _error("MANIFEST_UNKNOWN", "no such manifest")
                conn.answer(
                    "404 Not Found", [("Content-Type", "application/json")], body, head=head
                )
                return
            headers = [
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", digest_of(content)),
            ]
            conn.answer("200 OK", headers, content, head=head)
            return
        blob = GOOD_BLOBS.get(reference)
        if blob is None and reference == digest_of(blob_for(mode)):
            blob = blob_for(mode)
        if blob is None:
            body = _error("BLOB_UNKNOWN", "no such blob")
            conn.answer("404 Not Found", [("Content-Type", "application/json")], body, head=head)
            return
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Docker-Content-Digest", reference),
        ]
        conn.answer("200 OK", headers, blob, head=head)

    def _cdn(self, conn: HostileProtocol, request: _Request) -> None:
        """``/cdn/<mode>/...``: the mode's blob, to requests without Authorization only."""
        if request.header("authorization") is not None:
            body = b"<Error><Code>InvalidArgument</Code><Message>Authorization</Message></Error>"
            conn.answer("400 Bad Request", [("Content-Type", "application/xml")], body)
            return
        mode = request.path.split("/")[2]
        blob = blob_for(mode)
        headers = [("Content-Type", "application/octet-stream")]
        conn.answer("200 OK", headers, blob, head=request.method == "HEAD")

    def _redirect(self, conn: HostileProtocol, mode: str, name: str, digest: str) -> None:
        path = f"/cdn/{mode}/{digest}?sig=a%2Bb%3D"
        location = {
            "redirect-other": self.url("other", path),
            "redirect-loopback": self.url("elsewhere", path),
            "redirect-loopback6": self.url("v6", path),
            "redirect-localhost": self.url("other", path, host="localhost"),
            "redirect-scheme": "file:///etc/passwd",
            "redirect-gopher": self.url("other", path).replace("http://", "gopher://"),
        }.get(mode)
        if not location:
            body = _error("NAME_UNKNOWN", f"no mode {mode}")
            conn.answer("404 Not Found", [("Content-Type", "application/json")], body)
            return
        conn.answer("307 Temporary Redirect", [("Location", location)])

    def _info(self, conn: HostileProtocol) -> None:
        def send(bomb: bytes) -> None:
            info = {"gzip_digest": digest_of(bomb), "gzip_size": len(bomb)}
            conn.answer(
                "200 OK", [("Content-Type", "application/json")], json.dumps(info).encode()
            )

        self.bomb().addCallback(send)

    # The misbehaviours: each owns the connection from here on.

    def _mode_headerflood(self, conn: HostileProtocol, kind: str, content: bytes, _: str) -> None:
        conn.raw(b"HTTP/1.1 200 OK\r\n")
        conn.stream(_flood_lines(), conn.close)

    def _mode_continuation(self, conn: HostileProtocol, kind: str, content: bytes, _: str) -> None:
        conn.raw(b"HTTP/1.1 200 OK\r\n")
        conn.stream(_continuation_lines(), conn.close)

    def _mode_dripheaders(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        data = _head("200 OK", self._headers(content, media_type)) + content

        def drip(position: int) -> None:
            if position < len(data):
                conn.raw(data[position : position + 1])
                conn.later(1.0, drip, position + 1)

        drip(0)

    def _mode_stallbody(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        conn.raw(
            _head("200 OK", self._headers(content, media_type)) + content[: len(content) // 2]
        )

    def _mode_truncated(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        conn.raw(
            _head("200 OK", self._headers(content, media_type)) + content[: len(content) // 2]
        )
        conn.close()

    def _mode_badlength(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        headers = [*self._headers(content, media_type, length=False), ("Content-Length", "abc")]
        conn.raw(_head("200 OK", headers) + content)
        conn.close()

    def _mode_twolengths(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        headers = [*self._headers(content, media_type), ("Content-Length", str(len(content) - 16))]
        conn.raw(_head("200 OK", headers) + content)

    def _mode_longer(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        headers = self._headers(content, media_type, length=False)
        headers.append(("Content-Length", str(len(content) - 16)))
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Smuggled: yes\r\n\r\nevil!"
        conn.raw(_head("200 OK", headers) + content + smuggled)

    def _mode_shorter(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        headers = self._headers(content, media_type, length=False)
        headers.append(("Content-Length", str(len(content) + 100)))
        conn.raw(_head("200 OK", headers) + content)
        conn.close()

    def _mode_partial(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        half = len(content) // 2
        headers = [
            *self._headers(content, media_type, length=False),
            ("Content-Range", f"bytes 0-{half - 1}/{len(content)}"),
            ("Content-Length", str(half)),
        ]
        conn.raw(_head("206 Partial Content", headers) + content[:half])

    def _mode_gzip(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        def send(bomb: bytes) -> None:
            headers = [
                ("Content-Type", media_type),
                ("Docker-Content-Digest", digest_of(bomb)),
                ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(bomb))),
            ]
            conn.raw(_head("200 OK", headers))
            conn.stream(
                iter([bomb[i : i + CHUNK] for i in range(0, len(bomb), CHUNK)]), lambda: None
            )

        self.bomb().addCallback(send)

    def _mode_bigmanifest(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        headers = [("Content-Type", OCI_MANIFEST), ("Content-Length", str(BIG_BODY))]
        conn.raw(_head("200 OK", headers))
        prefix = b'{"schemaVersion": 2, "mediaType": "%s", "annotations": {"pad": "' % (
            OCI_MANIFEST.encode()
        )
        conn.stream(_padded(prefix, b'"}}', BIG_BODY), lambda: None)

    def _mode_bigerror(
        self, conn: HostileProtocol, kind: str, content: bytes, media_type: str
    ) -> None:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(BIG_BODY))]
        conn.raw(_head("404 Not Found", headers))
        # A code the mirror would pass on only if it read the whole body.
        prefix = b'{"errors": [{"code": "NAME_UNKNOWN", "message": "'
        conn.stream(_padded(prefix, b'"}]}', BIG_BODY), lambda: None)

    @staticmethod
    def _headers(content: bytes, media_type: str, *, length: bool = True) -> list[tuple[str, str]]:
        headers = [("Content-Type", media_type), ("Docker-Content-Digest", digest_of(content))]
        if length:
            headers.append(("Content-Length", str(len(content))))
        return headers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--other-port", type=int, required=True)
    parser.add_argument("--elsewhere-port", type=int, required=True)
    parser.add_argument("--v6-port", type=int)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    ports = {
        "main": ("127.0.0.1", args.port),
        "other": ("127.0.0.1", args.other_port),
        "elsewhere": ("127.0.0.2", args.elsewhere_port),
    }
    # Without an IPv6 loopback, redirects to [::1] still go out (and the kernel refuses them).
    ports["v6"] = ("::1", args.v6_port or 9)
    reactor: Any = _reactor
    log = open(args.log, "a")
    server = HostileServer(reactor, log, ports)
    tcp: IReactorTCP = reactor
    # The main port last: a peer is ready once it accepts there, and then all are.
    for listener in sorted(ports, key=lambda name: name == "main"):
        address, port = ports[listener]
        try:
            tcp.listenTCP(port, HostileFactory(server, listener), interface=address)
        except CannotListenError:
            if listener != "v6":
                raise
    server.start_bomb()
    reactor.run()


if __name__ == "__main__":
    main()
