"""Limits on what a client can send and hold, in memory: the channel driven byte by byte.

Each connection is built by the mirror's own site (its caps, its channel) on a
StringTransport, and time is a fake Clock.  An aborted connection shows as the
transport's ``disconnected``; a graceful close only as ``disconnecting``.
"""

from __future__ import annotations

import json
import resource
from io import BytesIO
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from dockermirror import tap
from dockermirror.config import ServerSettings
from dockermirror.tap import Options, makeService
from dockermirror.web import descriptors
from dockermirror.web.channel import MAX_BODY, MAX_HEADER_BYTES, MAX_HEADER_LINES, MAX_REQUEST_LINE
from dockermirror.web.site import MirrorSite
from tests.fakes import FakeRegistry, Harness

HEADER_TIMEOUT = 30.0
IDLE_TIMEOUT = 300.0
HUGE = 300 * 1024 * 1024


class Recorder(Resource):
    """Records what reaches the resource; ``/slow`` is answered only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, Any]] = []
        self.pending: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.seen.append((request.method, request.content.read(), request.content))
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        return b"ok"


class Connection:
    """One client connection to ``site``, from ``host``."""

    def __init__(self, site: MirrorSite, host: str = "192.0.2.1") -> None:
        address = IPv4Address("TCP", host, 40000)
        self.protocol: Protocol = site.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """The first response written: status, headers (lowercase names), body."""
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        pairs = (line.split(b": ", 1) for line in lines)
        headers = {name.lower(): value for name, value in pairs}
        return int(status_line.split(b" ")[1]), headers, body

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_site(clock: Clock, recorder: Recorder, **settings: Any) -> MirrorSite:
    values = {"header_timeout": HEADER_TIMEOUT, "idle_timeout": IDLE_TIMEOUT, **settings}
    return MirrorSite(recorder, reactor=clock, settings=ServerSettings(**values))


@pytest.fixture
def site(clock: Clock, recorder: Recorder) -> MirrorSite:
    return make_site(clock, recorder)


def error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "code"),
    [
        (b"PUT", 405, "UNSUPPORTED"),
        (b"POST", 405, "UNSUPPORTED"),
        (b"PATCH", 405, "UNSUPPORTED"),
        (b"DELETE", 405, "UNSUPPORTED"),
        (b"GET", 413, "REQUEST_TOO_LARGE"),
        (b"OPTIONS", 413, "REQUEST_TOO_LARGE"),
    ],
)
def test_a_large_body_is_refused_before_it_is_read(
    site: MirrorSite,
    recorder: Recorder,
    method: bytes,
    status: int,
    code: str,
    log_events: list[dict[str, object]],
) -> None:
    client = Connection(site)
    client.send(
        method + b" /v2/library/x/blobs/uploads/?secret=1 HTTP/1.1\r\nHost: m\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % HUGE
    )
    answer, headers, body = client.answer()
    assert (answer, error_code(body)) == (status, code)
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert headers.get(b"allow") == (b"GET, HEAD" if status == 405 else None)
    # No "100 Continue": the client is told not to send the body at all.
    assert client.transport.value().startswith(b"HTTP/1.1 %d " % status)
    assert client.closing
    written = client.transport.value()
    client.send(b"x" * 65536)  # what the client sent before it saw the answer is not read
    assert (recorder.seen, client.transport.value()) == ([], written)
    refused = [e for e in log_events if e.get("log_namespace") == "dockermirror.access"]
    assert [(e["log_level"], e["method"], e["path"], e["status"]) for e in refused] == [
        # No query: it may hold secrets.
        (LogLevel.info, method.decode(), "/v2/library/x/blobs/uploads/", status)
    ]


def test_a_refused_head_request_gets_no_body(site: MirrorSite) -> None:
    client = Connection(site)
    client.send(b"HEAD /v2/ HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % HUGE)
    status, headers, body = client.answer()
    assert (status, body) == (413, b"")
    assert int(headers[b"content-length"]) > 0  # what a GET would have had


def test_small_bodies_are_read_into_memory(site: MirrorSite, recorder: Recorder) -> None:
    client = Connection(site)
    form = b"grant_type=password&" + b"x" * (MAX_BODY - 20)
    assert len(form) == MAX_BODY
    client.send(
        b"POST /v2/auth HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )
    client.send(
        b"POST /v2/auth HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"b" * 1024 + b"\r\n0\r\n\r\n"
    )
    assert [(method, body) for method, body, _ in recorder.seen] == [
        (b"POST", form),
        (b"POST", b"a" * 1024 + b"b" * 1024),
    ]
    # Twisted would spool the chunked body (length unknown) to a temporary file.
    assert all(type(content) is BytesIO for _, _, content in recorder.seen)
    assert client.transport.value().count(b"HTTP/1.1 200 OK") == 2
    assert not client.closing


@pytest.mark.parametrize(("method", "status"), [(b"PUT", 405), (b"GET", 413)])
def test_a_chunked_body_is_cut_at_the_limit(
    site: MirrorSite, recorder: Recorder, method: bytes, status: int
) -> None:
    client = Connection(site)
    client.send(method + b" /v2/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"400\r\n" + b"z" * 1024 + b"\r\n"
    sent = 0
    while not client.transport.value():
        assert sent <= MAX_BODY, "no answer past the limit"
        client.send(chunk)
        sent += len(chunk)
    assert sent > MAX_BODY - len(chunk)  # small chunked bodies pass (the test above)
    status_seen, headers, _ = client.answer()
    assert (status_seen, headers[b"connection"]) == (status, b"close")
    assert client.closing
    written = client.transport.value()
    client.send(chunk * 100)
    assert (recorder.seen, client.transport.value()) == ([], written)


# -- request line and headers --------------------------------------------------------------


def test_a_long_request_line_gets_414(site: MirrorSite, recorder: Recorder) -> None:
    longest = b"GET /v2/" + b"a" * (MAX_REQUEST_LINE - len(b"GET /v2/ HTTP/1.1")) + b" HTTP/1.1"
    assert len(longest) == MAX_REQUEST_LINE
    client = Connection(site)
    client.send(longest + b"\r\n\r\n")
    assert client.answer()[0] == 200  # at the limit: served

    client = Connection(site)
    client.send(b"GET /v2/" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n")
    status, headers, body = client.answer()
    assert (status, error_code(body)) == (414, "REQUEST_TOO_LARGE")
    assert headers[b"connection"] == b"close"
    assert client.closing

    # A line that never ends is answered once the line buffer is full.
    client = Connection(site)
    sent = 0
    while not client.transport.value():
        assert sent <= MAX_HEADER_BYTES + MAX_REQUEST_LINE, "no answer"
        client.send(b"GET /v2/" if not sent else b"a" * 1024)
        sent += 1024
    assert client.answer()[0] == 414
    assert len(recorder.seen) == 1


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Filler-%d: %s" % (i, b"f" * 1000) for i in range(MAX_HEADER_BYTES // 1000 + 1)],
        [b"X-Many-%d: 1" % i for i in range(MAX_HEADER_LINES + 1)],
        [b"X-Folded: 1", *[b" folded" for _ in range(MAX_HEADER_LINES)]],
    ],
    ids=["bytes", "lines", "continuation-lines"],
)
def test_large_headers_get_431(site: MirrorSite, recorder: Recorder, headers: list[bytes]) -> None:
    client = Connection(site)
    client.send(b"GET /v2/ HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
    status, response_headers, body = client.answer()
    assert (status, error_code(body)) == (431, "REQUEST_TOO_LARGE")
    assert response_headers[b"connection"] == b"close"
    assert client.closing
    assert recorder.seen == []


def test_a_header_line_that_never_ends_gets_431(site: MirrorSite) -> None:
    client = Connection(site)
    client.send(b"GET /v2/ HTTP/1.1\r\nCookie: ")
    sent = 0
    while not client.transport.value():
        assert sent <= MAX_HEADER_BYTES + MAX_REQUEST_LINE, "no answer"
        client.send(b"c" * 1024)
        sent += 1024
    assert client.answer()[0] == 431


def test_headers_within_the_limits_are_served(site: MirrorSite, recorder: Recorder) -> None:
    # One line longer than Twisted's 16 KiB, and in all more than its 16 KiB head.
    token = b"Authorization: Bearer " + b"t" * 20000
    fillers = [b"X-Filler-%d: %s" % (i, b"f" * 100) for i in range(MAX_HEADER_LINES - 1)]
    head = [token, *fillers]
    assert len(head) == MAX_HEADER_LINES
    assert sum(map(len, head)) <= MAX_HEADER_BYTES
    client = Connection(site)
    client.send(b"GET /v2/" + b"p" * 8000 + b" HTTP/1.1\r\n")
    client.send(b"\r\n".join(head) + b"\r\n\r\n")
    assert client.answer()[0] == 200
    assert len(recorder.seen) == 1


def test_a_tls_handshake_on_the_plain_port_is_answered_at_once(site: MirrorSite) -> None:
    client = Connection(site)
    client.send(bytes([0x16, 0x03, 0x01, 0x01, 0x2C, 0x01]))
    assert client.transport.value().startswith(b"HTTP/1.0 400 ")
    assert client.closing
    answer = client.transport.value()
    client.send(b"\x16 more of the handshake\r\n\r\n")  # not parsed as HTTP
    assert client.transport.value() == answer


# -- deadlines -----------------------------------------------------------------------------


def test_a_silent_connection_is_cut_at_the_header_deadline(clock: Clock, site: MirrorSite) -> None:
    client = Connection(site)
    clock.advance(HEADER_TIMEOUT - 0.1)
    assert not client.closing
    clock.advance(0.1)
    assert client.aborted


def test_trickling_does_not_extend_the_header_deadline(clock: Clock, site: MirrorSite) -> None:
    client = Connection(site)
    request = b"GET /v2/ HTTP/1.1\r\nX-Slow: " + b"s" * 100
    for byte in request[: int(HEADER_TIMEOUT) - 1]:
        client.send(bytes([byte]))
        clock.advance(1)
    assert not client.closing
    client.send(b"s")
    clock.advance(1)
    assert client.aborted
    assert client.transport.value() == b""


def test_a_trickled_body_counts_against_the_deadline(
    clock: Clock, site: MirrorSite, recorder: Recorder
) -> None:
    client = Connection(site)
    client.send(b"POST /v2/auth HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    for _ in range(int(HEADER_TIMEOUT)):
        client.send(b"b")
        clock.advance(1)
    assert client.aborted
    assert recorder.seen == []


def test_a_long_answer_is_not_cut_and_the_idle_timeout_follows_it(
    clock: Clock, site: MirrorSite, recorder: Recorder
) -> None:
    client = Connection(site)
    client.send(b"GET /slow HTTP/1.1\r\nHost: m\r\n\r\n")
    (request,) = recorder.pending
    for _ in range(20):  # a slow download: an hour and more, long past both timeouts
        request.write(b"x" * 1024)
        clock.advance(IDLE_TIMEOUT)
    assert not client.closing
    request.finish()
    clock.advance(IDLE_TIMEOUT - 0.1)
    assert not client.closing
    clock.advance(0.1)
    assert client.closing and not client.aborted  # a graceful close for a kept-alive client
    clock.advance(60)
    assert client.aborted  # Twisted's backstop for a client that does not read: on our clock


def test_a_kept_alive_connection_gets_a_head_deadline_from_its_next_first_byte(
    clock: Clock, recorder: Recorder
) -> None:
    site = make_site(clock, recorder, header_timeout=10.0, idle_timeout=20.0)
    client = Connection(site)
    client.send(b"GET /v2/ HTTP/1.1\r\n\r\n")
    assert client.answer()[0] == 200
    clock.advance(19)  # idle, within the idle timeout: longer than the header deadline
    assert not client.closing
    client.send(b"GET /v2/ HT")
    clock.advance(9.9)  # past where the idle timeout would have been: it no longer runs
    assert not client.closing
    clock.advance(0.1)
    assert client.aborted


def test_a_closed_connection_leaves_no_timer(clock: Clock, site: MirrorSite) -> None:
    waiting, idle = Connection(site), Connection(site)
    idle.send(b"GET /v2/ HTTP/1.1\r\n\r\n")
    assert clock.getDelayedCalls() != []
    waiting.close()
    idle.close()
    assert clock.getDelayedCalls() == []


def test_pipelined_requests_are_each_answered(site: MirrorSite, recorder: Recorder) -> None:
    client = Connection(site)
    client.send(b"GET /slow HTTP/1.1\r\n\r\nGET /v2/ HTTP/1.1\r\n\r\n")
    (request,) = recorder.pending
    request.finish()
    assert client.transport.value().count(b"HTTP/1.1 200 OK") == 2
    assert not client.closing


def test_a_pipelined_request_is_timed_as_any_other(
    clock: Clock, site: MirrorSite, recorder: Recorder
) -> None:
    client = Connection(site)
    client.send(b"GET /slow HTTP/1.1\r\n\r\nGET /slow HTTP/1.1\r\n\r\nGET /v2/ HT")
    recorder.pending.pop().finish()
    (second,) = recorder.pending
    clock.advance(IDLE_TIMEOUT * 2)  # the second answer is in progress: no timeout runs
    assert not client.closing
    second.finish()
    # The third head, incomplete, has its deadline from when Twisted went on to it.
    clock.advance(HEADER_TIMEOUT)
    assert client.aborted


def test_a_pipelined_request_after_a_quick_answer_is_not_cut_idle(
    clock: Clock, site: MirrorSite, recorder: Recorder
) -> None:
    """The first answer ends within the packet; the second is a long one: no idle timeout."""
    client = Connection(site)
    client.send(b"GET /v2/ HTTP/1.1\r\n\r\nGET /slow HTTP/1.1\r\n\r\n")
    (second,) = recorder.pending
    clock.advance(IDLE_TIMEOUT * 2)
    assert not client.closing and not client.aborted
    second.finish()
    assert client.transport.value().count(b"HTTP/1.1 200 OK") == 2


def test_build_site_takes_the_server_settings(log_events: list[dict[str, object]]) -> None:
    harness = Harness(FakeRegistry(), {"server": {"header_timeout": 5}})
    address = IPv4Address("TCP", "192.0.2.9", 40000)
    channel = harness.site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    harness.clock.advance(5)
    assert transport.disconnected


# -- connection caps -----------------------------------------------------------------------


def test_connections_over_the_per_client_cap_are_refused(
    clock: Clock, recorder: Recorder, log_events: list[dict[str, object]]
) -> None:
    site = make_site(clock, recorder, max_connections_per_client=2, max_connections=10)
    first, second = Connection(site), Connection(site)
    refused = [Connection(site) for _ in range(5)]
    assert all(c.aborted for c in refused)
    assert not first.closing and not second.closing
    other = Connection(site, "192.0.2.2")
    assert not other.closing
    first.close()
    again = Connection(site)
    assert not again.closing
    again.send(b"GET /v2/ HTTP/1.1\r\n\r\n")
    assert again.answer()[0] == 200
    warnings = [e for e in log_events if e.get("log_level") is LogLevel.warn]
    # Reported at most once a minute: the first refusal, then the rest a minute later.
    assert [(e["refused"], e["which"], e["client"]) for e in warnings] == [
        (1, "per client", "192.0.2.1")
    ]
    clock.advance(60)
    assert Connection(site).aborted
    warnings = [e for e in log_events if e.get("log_level") is LogLevel.warn]
    assert [e["refused"] for e in warnings] == [1, 5]


def test_connections_over_the_global_cap_are_refused(clock: Clock, recorder: Recorder) -> None:
    site = make_site(clock, recorder, max_connections_per_client=5, max_connections=3)
    held = [Connection(site, f"192.0.2.{i}") for i in range(3)]
    assert not any(c.closing for c in held)
    assert Connection(site, "192.0.2.100").aborted
    held[0].close()
    assert not Connection(site, "192.0.2.100").closing


def test_local_socket_connections_are_capped_only_in_all(clock: Clock, recorder: Recorder) -> None:
    # A unix socket has no client address (a local proxy may hold them all).
    site = make_site(clock, recorder, max_connections_per_client=1, max_connections=3)
    transports = []
    for _ in range(4):
        channel = site.buildProtocol(UNIXAddress(b"/run/dockermirror.sock"))
        transports.append(StringTransport())
        channel.makeConnection(transports[-1])
    assert [t.disconnected for t in transports] == [False, False, False, True]


def test_timed_out_connections_free_their_place(clock: Clock, recorder: Recorder) -> None:
    site = make_site(clock, recorder, max_connections_per_client=2)
    tricklers = [Connection(site), Connection(site)]
    assert Connection(site).aborted
    clock.advance(HEADER_TIMEOUT)
    for trickler in tricklers:
        assert trickler.aborted
        trickler.close()  # what the reactor does once the abort took effect
    assert not Connection(site).closing


# -- the open-file limit -------------------------------------------------------------------


class FakeLimits:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.mark.parametrize(
    ("soft", "hard", "refuse", "raised"),
    [
        (1024, 524288, False, 524288),
        (1024, 524288, True, 1024),
        (256, resource.RLIM_INFINITY, False, 1 << 16),
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY, False, resource.RLIM_INFINITY),
        (4096, 4096, False, 4096),
    ],
)
def test_the_open_file_limit_is_raised_where_allowed(
    soft: int, hard: int, refuse: bool, raised: int
) -> None:
    limits = FakeLimits(soft, hard, refuse)
    assert descriptors.raise_limit(limits.get, limits.set) == raised
    assert limits.limits == ((soft, hard) if refuse else (raised, hard))


@pytest.mark.parametrize(
    ("configured", "limit", "cap"),
    [
        (4096, 1024, (1024 - descriptors.RESERVED) // descriptors.PER_CONNECTION),
        (4096, 524288, 4096),
        (4096, 10, 1),
        (4096, resource.RLIM_INFINITY, 4096),
    ],
)
def test_the_connection_cap_fits_under_the_open_file_limit(
    configured: int, limit: int, cap: int
) -> None:
    assert descriptors.connections_that_fit(configured, limit) == cap


def test_make_service_fits_the_cap_to_the_raised_limit(
    monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, object]]
) -> None:
    monkeypatch.setattr(tap.descriptors, "raise_limit", lambda: 400)
    options = Options()
    options.parseOptions(["--port", "tcp:0", "--no-cache"])
    service = makeService(options, reactor=MemoryReactorClock())
    (listener,) = [s for s in service if isinstance(s, tap.Listener)]
    site = listener.factory
    assert isinstance(site, MirrorSite)
    expected = (400 - descriptors.RESERVED) // descriptors.PER_CONNECTION
    assert site.connections.max_connections == expected
    assert site.settings.max_connections == expected
    assert [(e["cap"], e["limit"]) for e in log_events if "cap" in e] == [(expected, 400)]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\x00\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET /v2/\r\n\r\n",
    ],
    ids=["control character", "no colon", "bad length", "no version"],
)
def test_a_malformed_request_gets_an_oci_error(
    site: MirrorSite, recorder: Recorder, head: bytes
) -> None:
    connection = Connection(site)
    connection.send(head)
    status, headers, body = connection.answer()
    assert status == 400
    assert error_code(body) == "UNSUPPORTED"
    assert headers[b"connection"] == b"close"
    assert recorder.seen == []


def test_an_absolute_form_target_s_credentials_never_reach_the_log(
    log_events: list[dict[str, object]],
) -> None:
    harness = Harness(FakeRegistry())
    client = Connection(harness.site)
    client.send(b"GET http://user:secretpw@evil.example/v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    access = [e for e in log_events if e.get("log_namespace") == "dockermirror.access"]
    assert [e["path"] for e in access] == ["/v2/"]
    assert "secretpw" not in repr(log_events)


def test_a_429_has_its_reason_phrase(log_events: list[dict[str, object]]) -> None:
    harness = Harness(FakeRegistry(), {"limits": {"requests_per_second": 1, "request_burst": 1}})
    client = Connection(harness.site)
    client.send(b"GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n")
    assert b"HTTP/1.1 429 Too Many Requests\r\n" in client.transport.value()


def test_a_request_refused_unparsed_is_logged_and_counted_as_any_other(
    log_events: list[dict[str, object]],
) -> None:
    harness = Harness(FakeRegistry())
    Connection(harness.site).send(b"GET /v2/ HTTP/9.9\r\nHost: m\r\n\r\n")
    (event,) = [e for e in log_events if e.get("log_namespace") == "dockermirror.access"]
    fields = ("method", "path", "status", "outcome", "route", "user", "cache", "pid")
    assert set(fields) <= set(event) and event["outcome"] == "refused"
    counted = {
        (sample.labels.get("route"), sample.labels.get("status"))
        for family in harness.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "dockermirror_requests_total"
    }
    assert counted == {("base", str(event["status"]))}


@pytest.mark.parametrize("method", [b"GET", b"OPTIONS"])
def test_the_star_target_gets_an_oci_error_and_is_logged(
    method: bytes, log_events: list[dict[str, object]]
) -> None:
    harness = Harness(FakeRegistry())
    client = Connection(harness.site)
    client.send(method + b" * HTTP/1.1\r\nHost: m\r\n\r\n")
    status, headers, body = client.answer()
    assert (status, error_code(body), headers[b"allow"]) == (405, "UNSUPPORTED", b"GET, HEAD")
    access = [e for e in log_events if e.get("log_namespace") == "dockermirror.access"]
    assert [(e["path"], e["status"]) for e in access] == [("*", 405)]
