"""Prometheus metrics on the private metrics port, scraped after real pulls (skopeo).

The scrape is parsed with prometheus_client's own parser, and the counts must
match what was pulled: requests by route and status, bytes from the upstream on
the first pull and from the cache on the second, cache hits and misses.
"""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import copy, fetch, require
from tests.support.peers import Mirror, Upstream, assert_clean_log, registry_config, start_mirror
from tests.support.processes import free_port


def scrape(port: int) -> dict[str, float]:
    """{name{labels}: value} of every sample (counters by their ``_total`` names)."""
    status, headers, body = fetch(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def requests(samples: dict[str, float], route: str, status: str = "200") -> float:
    return samples.get(
        "dockermirror_requests_total"
        + json.dumps({"method": "GET", "route": route, "status": status}, sort_keys=True),
        0.0,
    )


def test_metrics_after_pulls(
    upstream: Upstream, tmp_path: Path, containers_env: dict[str, str]
) -> None:
    metrics_port = free_port()
    mirror: Mirror = start_mirror(
        tmp_path,
        require("twistd"),
        registry_config("docker.io", upstream.url),
        server=f'metrics_ports = ["tcp:{metrics_port}:interface=127.0.0.1"]',
    )
    try:
        image = upstream.images["schema2"]
        manifest = image.tags["latest"]
        blob_bytes = sum(blob.size for blob in image.blobs)
        pulled = len(manifest.body) + blob_bytes

        before = scrape(metrics_port)
        assert requests(before, "manifests") == 0
        copy(containers_env, f"docker://{mirror.address}/library/alpine:latest", tmp_path / "a")
        first = scrape(metrics_port)
        assert requests(first, "manifests") == 1
        assert requests(first, "blobs") == len(image.blobs)
        assert first['dockermirror_response_bytes_total{"source": "upstream"}'] == pulled
        assert first['dockermirror_cache_answers_total{"outcome": "miss"}'] == 1 + len(image.blobs)
        assert first["dockermirror_cache_size_bytes{}"] == pulled
        assert first["dockermirror_cache_entries{}"] == 1 + len(image.blobs)
        assert first["dockermirror_fills_in_flight{}"] == 0
        latency = first[
            'dockermirror_upstream_request_duration_seconds_count{"registry": "docker.io"}'
        ]
        assert latency >= 1 + len(image.blobs)  # plus token requests

        copy(containers_env, f"docker://{mirror.address}/library/alpine:latest", tmp_path / "b")
        second = scrape(metrics_port)
        assert requests(second, "blobs") == 2 * len(image.blobs)
        assert second['dockermirror_response_bytes_total{"source": "cache"}'] == pulled
        assert second['dockermirror_cache_answers_total{"outcome": "hit"}'] == 1 + len(image.blobs)
        # Nothing more went upstream for the second pull.
        assert (
            second['dockermirror_upstream_request_duration_seconds_count{"registry": "docker.io"}']
            == latency
        )

        # A miss the upstream does not know: counted by its status, not as an upstream error.
        status, _, _ = fetch(f"http://{mirror.address}/v2/library/nothing/manifests/1")
        assert status == 404
        assert requests(scrape(metrics_port), "manifests", "404") == 1

        # The health checks answer on the metrics port as on the main one; /metrics is not public.
        for port in (metrics_port, mirror.port):
            assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
            status, _, body = fetch(f"http://127.0.0.1:{port}/readyz")
            assert (status, json.loads(body)["status"]) == (200, "ready")
        assert fetch(f"http://{mirror.address}/metrics")[0] == 404
    finally:
        mirror.stop()
    assert_clean_log(mirror)
    assert f"listening on tcp:{metrics_port}:interface=127.0.0.1 for metrics" in (
        mirror.peer.output()
    )
