"""Behaviours that need a real mirror process, once left unguarded by the suite.

- A plain-HTTP port answers a TLS ClientHello at once and closes, so Go clients
  that try HTTPS first fall back to HTTP without their 10 s handshake timeout.
- With the cache off, a client that stalls mid-layer pauses the upstream: the
  mirror's memory stays flat while it streams the suite's 256 MiB layer.
"""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import fetch
from tests.support.peers import Mirror, Upstream, registry_config

MIB = 1024 * 1024
# The first bytes of a TLS 1.2/1.3 ClientHello as Go sends it: a handshake record (0x16),
# legacy version 3.1, its length, then the ClientHello header and 32 random bytes.  No byte
# is a line feed, so an HTTP server waiting for a request line would wait for more.
CLIENT_HELLO = (
    bytes([0x16, 0x03, 0x01, 0x01, 0x2C, 0x01, 0x00, 0x01, 0x28, 0x03, 0x03])
    + bytes(range(0x20, 0x40))
    + bytes([0x20])
    + bytes(range(0x40, 0x60))
)


def test_tls_client_hello_on_a_plain_port_is_answered_at_once(
    new_mirror: Callable[..., Mirror], closed_port: int
) -> None:
    mirror = new_mirror(registry_config("docker.io", f"http://127.0.0.1:{closed_port}"))
    assert b"\n" not in CLIENT_HELLO
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=5) as s:
        s.sendall(CLIENT_HELLO)
        try:
            while chunk := s.recv(4096):  # until the mirror closes the connection
                answer += chunk
        except TimeoutError:
            pytest.fail(f"no answer and close within 5 s; received {answer!r}")
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 400 "), answer
    # Go's TLS handshake timeout is 10 s; the answer must come long before it.
    assert elapsed < 2, f"answered and closed after {elapsed:.1f}s"
    # The mirror keeps serving, on new connections.
    for _ in range(2):
        status, _, body = fetch(mirror.url + "/v2/")
        assert (status, body) == (200, b"{}")


def test_pass_through_memory_stays_flat_while_a_client_stalls_mid_layer(
    upstream: Upstream, new_mirror: Callable[..., Mirror], tmp_path: Path
) -> None:
    mirror = new_mirror(registry_config("docker.io", upstream.url, "[cache]\nenabled = false\n"))
    layer = max(upstream.images["big"].blobs, key=lambda b: b.size)
    assert layer.size >= 256 * MIB
    url = f"{mirror.url}/v2/library/big/blobs/{layer.digest}"
    hasher = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=60) as response:
        first = response.read(MIB)
        hasher.update(first)
        received += len(first)
        time.sleep(6)  # the client stalls; the mirror must pause the upstream, not buffer
        stalled_peak = mirror.peer.rss_peak_kib()
        while chunk := response.read(MIB):
            hasher.update(chunk)
            received += len(chunk)
    assert received == layer.size
    assert "sha256:" + hasher.hexdigest() == layer.digest
    peak = mirror.peer.rss_peak_kib()
    print(f"pass-through peak RSS {peak / 1024:.1f} MiB ({stalled_peak / 1024:.1f} at the stall)")
    assert peak < 100 * 1024
    stored = list((mirror.cache / "blobs").rglob("*")) if (mirror.cache / "blobs").exists() else []
    assert stored == []  # the cache is off: nothing was kept
    log = mirror.peer.output()
    assert f"GET /v2/library/big/blobs/{layer.digest} -> 200 complete" in log
