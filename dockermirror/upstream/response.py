"""An upstream answer whose body is not read yet: status, headers, and the ways to read the body.

This is what the upstream client hands to the registry layer, so that nothing
above :mod:`dockermirror.upstream` sees Twisted's HTTP client types.  Every
read goes through :class:`~dockermirror.upstream.body.TimedBody`.
"""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from dockermirror.config import UpstreamSettings
from dockermirror.upstream.body import BodySink, Collector, TimedBody

_LENGTH = re.compile(r"[0-9]{1,18}")
# Small bodies nobody needs are read (so the connection can be reused) up to this size.
_DISCARD_LIMIT = 64 * 1024


class UpstreamResponse:
    def __init__(
        self,
        response: IResponse,
        *,
        head: bool,
        registry: str,
        clock: IReactorTime,
        settings: UpstreamSettings,
        sent: float,
    ) -> None:
        self._response = response
        self._head = head
        self.registry = registry
        self._clock = clock
        self._settings = settings
        # When the request went out: a small body's deadline counts from here.
        self._sent = sent
        # Whether it came from another origin than the one asked, after redirects.
        self.redirected = False

    @property
    def code(self) -> int:
        return int(self._response.code)

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        raw = self._response.headers.getRawHeaders(name.encode("ascii"), [])
        return [value.decode("latin-1") for value in raw]

    @property
    def length(self) -> int | None:
        """The body's length as the upstream declared it, or None when it did not."""
        if self._head:
            # Twisted keeps a HEAD's Content-Length among the headers, not in .length.
            declared = self.header("content-length") or ""
            return int(declared) if _LENGTH.fullmatch(declared) else None
        length = self._response.length
        return None if length is UNKNOWN_LENGTH else int(length)

    def collect(self, limit: int) -> Deferred[bytes]:
        """The whole body; fails with BodyTooLarge past ``limit`` bytes, 504/502 when it stalls.

        A small body must arrive whole within ``response_timeout`` of the request,
        headers included, not just keep trickling: one stalled manifest must not
        hold its waiters for long.
        """
        sink = Collector(limit)
        elapsed = self._clock.seconds() - self._sent
        sink.body = TimedBody(
            sink,
            self._clock,
            self.registry,
            self._settings.idle_timeout,
            deadline=max(0.0, self._settings.response_timeout - elapsed),
        )
        self._response.deliverBody(sink.body)
        return sink.done

    def stream(self, sink: BodySink, consumer: IConsumer) -> IPushProducer:
        """Hand the body to ``sink`` as it arrives, for ``consumer`` to pause, resume and stop.

        The body is registered as the consumer's streaming producer before the
        first byte arrives (Twisted may deliver buffered bytes at once).
        """
        body = TimedBody(sink, self._clock, self.registry, self._settings.idle_timeout)
        consumer.registerProducer(body, True)
        self._response.deliverBody(body)
        return body

    def discard(self) -> None:
        """Drop a body nobody needs."""
        self.collect(_DISCARD_LIMIT).addErrback(lambda _: None)
