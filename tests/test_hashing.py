"""A blob's digest off the reactor thread: in order, with the upstream paused while it lags."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from dockermirror.registry.upstream import HASH_BATCH, MAX_UNHASHED, UpstreamStream
from dockermirror.storage.workers import InlineWorker

CHUNK = 256 * 1024


class HeldWorker:
    """A worker whose calls wait until :meth:`run_all` (a hashing thread that lags)."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queued.append((lambda: f(*args, **kwargs), (), d))
        return d

    def run_all(self) -> None:
        while self.queued:
            call, _, d = self.queued.pop(0)
            d.callback(call())


@implementer(IPushProducer)
class Upstream:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class Response:
    registry = "docker.io"

    def __init__(self, length: int) -> None:
        self.length = length
        self.producer = Upstream()

    def stream(self, sink: Any, consumer: Any) -> Upstream:
        consumer.registerProducer(self.producer, True)
        return self.producer


def test_the_upstream_waits_while_hashing_lags_and_the_digest_comes_in_order() -> None:
    data = bytes(range(256)) * (MAX_UNHASHED // 256 * 2)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    worker = HeldWorker()
    response = Response(len(data))
    stream = UpstreamStream(response, digest, worker)  # type: ignore[arg-type]
    client = StringTransport()
    done = stream.deliver(client)
    position = 0
    while position < len(data) and not response.producer.paused:
        stream.body_data(data[position : position + CHUNK])
        position += CHUNK
    # Paused once more than MAX_UNHASHED bytes wait, and not before.
    assert response.producer.paused
    assert MAX_UNHASHED < position <= MAX_UNHASHED + HASH_BATCH + CHUNK
    worker.run_all()
    assert not response.producer.paused
    while position < len(data):
        stream.body_data(data[position : position + CHUNK])
        position += CHUNK
        worker.run_all()
    stream.body_end(None)
    assert not done.called  # the digest is still to come from the worker
    assert client.value() == data[:-1]  # the last byte waits for it
    worker.run_all()
    assert done.called and client.value() == data


def test_a_consumer_s_pause_holds_while_hashing_catches_up() -> None:
    """Two reasons to pause; the upstream resumes only when neither holds."""
    worker = HeldWorker()
    response = Response(10 * MAX_UNHASHED)
    stream = UpstreamStream(response, "sha256:" + "0" * 64, worker)  # type: ignore[arg-type]
    stream.deliver(StringTransport())
    stream.pauseProducing()  # the client is slow
    for _ in range(MAX_UNHASHED // CHUNK + 8):
        stream.body_data(b"x" * CHUNK)
    worker.run_all()  # hashing caught up
    assert response.producer.paused  # the client still is slow
    stream.resumeProducing()
    assert not response.producer.paused


def test_inline_hashing_by_default_is_the_same() -> None:
    data = b"abc" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    stream = UpstreamStream(Response(len(data)), digest, InlineWorker())  # type: ignore[arg-type]
    client = StringTransport()
    done = stream.deliver(client)
    stream.body_data(data)
    stream.body_end(None)
    assert done.called and client.value() == data
