"""Warming an image into a Registry, and ``dockermirror cache warm`` around it, in memory.

The walk on a Registry in memory: platforms chosen by Docker's rules, blobs
already local never read, a failure reported while the rest go on, a few blobs
at a time, cancellation stopping every transfer.  Then through the real
caching Registry (the blobs are stored; a second warm reads nothing), through
an in-memory mirror over HTTP (a HIT skips the GET), and the command's own
parts: reference lists, usage errors, exit statuses, and opening a cache
directory a mirror is using without deleting what the mirror is writing.
"""

from __future__ import annotations

import argparse
import gc
import io
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hyperlink import DecodedURL
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from dockermirror.cli import warm
from dockermirror.config import Registry
from dockermirror.errors import UNAVAILABLE, RegistryError
from dockermirror.reference import digest_of
from dockermirror.registry.caching import CachingRegistry
from dockermirror.registry.mediatypes import DOCKER_LIST
from dockermirror.registry.upstream import UpstreamRegistry
from dockermirror.registry.warming import Platform, WarmResult, warm_image
from dockermirror.routing import Target
from dockermirror.storage import layout
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.workers import InlineWorker
from dockermirror.upstream.client import UpstreamClient
from dockermirror.web.responses import CACHE_HEADER
from tests.fakes import FakeRegistry, Harness, result_of
from tests.support.warming import Content, HeldStream, MemoryRegistry, cancelled, platform

# Logged errors fail a test; so do Deferreds whose failures nobody handled (they are logged).
pytestmark = pytest.mark.usefixtures("observe_errors")

T = TypeVar("T")
NAME = "library/app"
TARGET = Target(Registry("docker.io", DecodedURL.from_text("http://upstream.test")), NAME, "app")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    value: T = result_of(Deferred.fromCoroutine(coroutine))
    return value


class Counted:
    """A WarmProgress that sums what it is told."""

    def __init__(self) -> None:
        self.blobs = self.size = self.blobs_done = self.size_done = 0

    def found(self, blobs: int, size: int) -> None:
        self.blobs += blobs
        self.size += size

    def advanced(self, blobs: int, size: int) -> None:
        self.blobs_done += blobs
        self.size_done += size


def multi_platform(content: Content) -> dict[str, list[str]]:
    """``app:latest``, an index of four platforms and an attestation; blobs by platform."""
    blobs: dict[str, list[str]] = {}
    children = []
    for label, where in [
        ("amd64", platform("linux", "amd64")),
        ("arm64", platform("linux", "arm64", "v8")),
        ("armv7", platform("linux", "arm", "v7")),
        ("armv6", platform("linux", "arm", "v6")),
        ("attestation", platform("unknown", "unknown")),
    ]:
        descriptor, blobs[label] = content.image(NAME, label)
        blobs[label] = [descriptor["digest"], *blobs[label]]  # the manifest first
        children.append((descriptor, where))
    content.index(NAME, children, "latest")
    return blobs


def test_an_index_is_warmed_whole_for_every_platform() -> None:
    content = Content()
    blobs = multi_platform(content)
    registry = MemoryRegistry(content)
    progress = Counted()
    result = run(warm_image(registry, TARGET, "latest", progress=progress))
    assert result.ok and result.image == "docker.io/library/app:latest"
    assert result.digest == digest_of(content.manifests[(NAME, "latest")][1])
    manifests = {b[0] for b in blobs.values()}
    assert set(result.manifests) == manifests | {result.digest}
    layers = {d for b in blobs.values() for d in b[1:]}
    assert set(result.fetched) == layers == set(registry.opened())
    assert len(registry.opened()) == len(layers)  # each once
    assert result.bytes == sum(len(content.blobs[d]) for d in layers)
    assert (progress.blobs, progress.blobs_done) == (len(layers), len(layers))
    assert progress.size == progress.size_done == result.bytes


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        (["linux/amd64"], ["amd64"]),
        (["linux/arm64"], ["arm64"]),
        (["linux/arm64/v8"], ["arm64"]),
        (["linux/aarch64"], ["arm64"]),
        # No variant: every variant (Docker's rule); a variant: that one.
        (["linux/arm"], ["armv7", "armv6"]),
        (["linux/arm/v6"], ["armv6"]),
        (["linux/amd64", "linux/arm/v7"], ["amd64", "armv7"]),
    ],
)
def test_platforms_choose_the_manifests(wanted: list[str], chosen: list[str]) -> None:
    content = Content()
    blobs = multi_platform(content)
    registry = MemoryRegistry(content)
    platforms = [Platform.parse(p) for p in wanted]
    result = run(warm_image(registry, TARGET, "latest", platforms))
    assert result.ok
    assert set(result.manifests) == {result.digest} | {blobs[label][0] for label in chosen}
    expected = {d for label in chosen for d in blobs[label][1:]}
    assert set(registry.opened()) == set(result.fetched) == expected


def test_a_platform_the_index_lacks_is_a_failure_and_the_rest_is_warmed() -> None:
    content = Content()
    blobs = multi_platform(content)
    registry = MemoryRegistry(content)
    platforms = [Platform.parse("linux/s390x"), Platform.parse("linux/amd64")]
    result = run(warm_image(registry, TARGET, "latest", platforms))
    assert [f.problem for f in result.failures] == ["the index has no manifest for linux/s390x"]
    assert set(result.fetched) == set(blobs["amd64"][1:])


def test_platform_names_are_normalised() -> None:
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert Platform.parse("Linux/ARM64/v8") == Platform("linux", "arm64")
    assert Platform.parse("linux/armhf") == Platform("linux", "arm", "v7")
    assert Platform.parse("linux/arm") == Platform("linux", "arm")  # any variant
    assert str(Platform.parse("linux/arm/7")) == "linux/arm/v7"
    for bad in ("linux", "linux/", "a/b/c/d", "/amd64"):
        with pytest.raises(ValueError):
            Platform.parse(bad)


def test_blobs_already_local_are_not_read() -> None:
    content = Content()
    _, blobs = content.image(NAME, "one", layers=3, tag="latest")
    registry = MemoryRegistry(content)
    registry.local = {blobs[0], blobs[2]}
    progress = Counted()
    result = run(warm_image(registry, TARGET, "latest", progress=progress))
    assert registry.opened() == [blobs[1], blobs[3]]
    assert set(result.cached) == {blobs[0], blobs[2]}
    assert result.bytes == len(content.blobs[blobs[1]]) + len(content.blobs[blobs[3]])
    # The bar still reaches its end: a cached blob's bytes count as done.
    assert progress.size_done == progress.size == sum(len(content.blobs[d]) for d in blobs)


def test_a_failing_blob_is_reported_and_the_others_go_on() -> None:
    content = Content()
    blobs = multi_platform(content)
    registry = MemoryRegistry(content)
    bad = blobs["amd64"][2]
    registry.broken[bad] = RegistryError(UNAVAILABLE, status=502, message="upstream gone")
    # A child manifest the registry does not have: the other platforms are warmed all the same.
    del content.manifests[(NAME, blobs["arm64"][0])]
    progress = Counted()
    result = run(warm_image(registry, TARGET, "latest", progress=progress))
    assert not result.ok
    assert {(f.what, f.problem) for f in result.failures} == {
        (bad, "upstream gone (502)"),
        (blobs["arm64"][0], "manifest unknown (404)"),
    }
    others = {d for label in ("amd64", "armv7", "armv6", "attestation") for d in blobs[label][1:]}
    assert set(result.fetched) == others - {bad}
    assert progress.blobs_done == progress.blobs and progress.size_done == progress.size


def test_a_reference_that_cannot_be_resolved_is_a_failure_not_an_exception() -> None:
    registry = MemoryRegistry(Content())
    result = run(warm_image(registry, TARGET, "nope", image="app:nope"))
    assert result == WarmResult(
        "app:nope", failures=(warm.WarmFailure("app:nope", "manifest unknown (404)"),)
    )


def test_foreign_layers_are_skipped_and_schema1_is_walked() -> None:
    content = Content()
    config = content.blob(b"{}", "application/vnd.oci.image.config.v1+json")
    normal = content.blob(b"normal layer")
    foreign = content.blob(
        b"windows base", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
    with_urls = content.blob(b"elsewhere", urls=["https://example.com/layer"])
    nondistributable = content.blob(
        b"licensed", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    )
    layers = [normal, foreign, with_urls, nondistributable]
    document = {"schemaVersion": 2, "config": config, "layers": layers}
    content.put(NAME, "application/vnd.oci.image.manifest.v1+json", document, "win")
    sums = content.schema1(NAME, [b"old layer", b"empty"], "old")
    registry = MemoryRegistry(content)

    result = run(warm_image(registry, TARGET, "win"))
    assert result.ok and set(result.fetched) == {config["digest"], normal["digest"]}
    assert set(result.skipped) == {d["digest"] for d in (foreign, with_urls, nondistributable)}

    result = run(warm_image(registry, TARGET, "old"))
    assert result.ok and sorted(result.fetched) == sorted(sums)  # listed twice, fetched once


def test_at_most_a_few_blobs_at_a_time() -> None:
    content = Content()
    _, blobs = content.image(NAME, "big", layers=7, tag="latest")
    registry = MemoryRegistry(content)
    registry.held = {d: HeldStream(content.blobs[d]) for d in blobs}
    d = Deferred.fromCoroutine(warm_image(registry, TARGET, "latest", concurrency=3))
    assert [held.started for held in registry.held.values()].count(True) == 3
    for digest in blobs:
        held = registry.held[digest]
        assert held.started
        held.release()  # the next in line starts
        assert sum(h.running for h in registry.held.values()) <= 3
    result = result_of(d)
    assert result.ok and len(result.fetched) == len(blobs)


def test_cancelling_stops_the_transfers_and_the_queue() -> None:
    content = Content()
    _, blobs = content.image(NAME, "big", layers=5, tag="latest")
    registry = MemoryRegistry(content)
    registry.held = {d: HeldStream(content.blobs[d]) for d in blobs}
    d = Deferred.fromCoroutine(warm_image(registry, TARGET, "latest", concurrency=2))
    started = [h for h in registry.held.values() if h.started]
    assert len(started) == 2
    d.cancel()
    assert cancelled(d)
    assert all(h.cancelled for h in started)
    assert len(registry.opened()) == 2  # the queued ones never started
    gc.collect()  # (a cancelled task's unhandled failure would be logged now)


def test_cancelling_while_an_index_is_read_stops_what_its_children_started() -> None:
    content = Content()
    blobs = multi_platform(content)
    registry = MemoryRegistry(content)
    registry.held = {d: HeldStream(content.blobs[d]) for d in blobs["amd64"][1:]}
    registry.waiting[blobs["arm64"][0]] = []  # one child manifest does not come
    d = Deferred.fromCoroutine(warm_image(registry, TARGET, "latest"))
    assert any(h.started for h in registry.held.values())
    d.cancel()
    assert cancelled(d)
    assert all(h.cancelled for h in registry.held.values() if h.started)
    gc.collect()


# Through the real caching Registry, and through a mirror over HTTP


def cached_harness(tmp_path: Path, content: Content) -> Harness:
    upstream = FakeRegistry()
    content.publish(upstream)
    return Harness(upstream, {"cache": {"dir": str(tmp_path / "cache")}})


def warm_in(harness: Harness, registry: Any, **kwargs: Any) -> WarmResult:
    d = Deferred.fromCoroutine(warm_image(registry, TARGET, "latest", **kwargs))
    harness.settle()
    return result_of(d)


def test_warming_fills_the_cache_and_a_second_warm_reads_nothing(tmp_path: Path) -> None:
    content = Content()
    blobs = multi_platform(content)
    harness = cached_harness(tmp_path, content)
    result = warm_in(harness, harness.registry_stack)
    assert result.ok and len(result.fetched) == 15
    storage = harness.storage()
    for digest in result.fetched:
        assert storage.path(digest).read_bytes() == content.blobs[digest]
    blob_gets = [p for p in harness.registry.paths("GET") if "/blobs/" in p]
    assert len(blob_gets) == 15

    again = warm_in(harness, harness.registry_stack)
    assert again.ok and again.fetched == () and set(again.cached) == set(result.fetched)
    assert [p for p in harness.registry.paths("GET") if "/blobs/" in p] == blob_gets
    assert set(again.manifests) == {again.digest} | {b[0] for b in blobs.values()}


@implementer(IAgent)
class Recording:
    """An agent that notes every request it passes on."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.requests: list[tuple[str, str]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        self.requests.append((method.decode(), uri.decode()))
        d: Deferred[IResponse] = self.agent.request(method, uri, headers, bodyProducer)
        return d


def test_through_a_mirror_a_stored_blob_is_asked_with_a_head_only(tmp_path: Path) -> None:
    content = Content()
    _, blobs = content.image(NAME, "one", layers=2, tag="latest")
    harness = cached_harness(tmp_path, content)
    traversal = RequestTraversalAgent(harness.site.resource)
    traversal._serverFactory = harness.site  # served by the mirror's own Site
    agent = Recording(traversal)
    mirror = Registry("mirror", DecodedURL.from_text("http://mirror.test"))
    client = UpstreamClient(mirror, agent, harness.clock, warm.MIRROR_SETTINGS)
    registry = UpstreamRegistry({"mirror": client}, warm.MIRROR_SETTINGS)
    target = warm.mirror_target(mirror, "library/app")

    def warm_through() -> WarmResult:
        d = Deferred.fromCoroutine(
            warm_image(registry, target, "latest", stored=warm.MirrorHits(client))
        )
        for _ in range(10):
            harness.settle()
            traversal.flush()
        return result_of(d)

    first = warm_through()
    assert first.ok and set(first.fetched) == set(blobs)
    blob_requests = [r for r in agent.requests if "/blobs/" in r[1]]
    assert sorted(m for m, _ in blob_requests) == ["GET"] * 3 + ["HEAD"] * 3
    agent.requests.clear()

    second = warm_through()
    assert second.ok and set(second.cached) == set(blobs) and second.fetched == ()
    assert [m for m, uri in agent.requests if "/blobs/" in uri] == ["HEAD"] * 3
    assert all(uri.startswith("http://mirror.test/v2/library/app/") for _, uri in agent.requests)


def test_the_header_read_is_the_one_the_mirror_sends() -> None:
    assert warm.CACHE_HEADER.encode() == CACHE_HEADER


def test_mirror_names_are_as_docker_pull_mirror_slash_ref_writes_them() -> None:
    mirror = Registry("mirror", DecodedURL.from_text("http://mirror.test"))
    assert warm.mirror_target(mirror, "redis:7").name == "redis"
    assert warm.mirror_target(mirror, "library/redis").name == "library/redis"
    assert warm.mirror_target(mirror, "ghcr.io/o/i@sha256:" + "a" * 64).name == "ghcr.io/o/i"
    assert warm.mirror_url("http://m.example:5000/").to_text() == "http://m.example:5000"
    for bad in ("ftp://m.example", "m.example", "http://u:p@m.example", "http://m/?x=1"):
        with pytest.raises(warm.UsageError):
            warm.mirror_url(bad)


# The cache directory beside a running mirror


def test_the_cache_directory_is_opened_without_deleting_what_a_mirror_writes(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cache"
    own = FilesystemStorage(
        directory, Clock(), 10**9, 0, lookups=InlineWorker(), writes=InlineWorker()
    )
    result_of(own.open())  # the mirror's: it made the directory
    in_progress = directory / layout.TMP / "0123abcd"
    in_progress.write_bytes(b"a download under way")
    digest = "sha256:" + "b" * 64
    renamed = layout.blob_path(directory, digest)  # renamed, its index row not written yet
    renamed.parent.mkdir(parents=True)
    renamed.write_bytes(b"just stored")

    shared = FilesystemStorage(
        directory, Clock(), 10**9, 0, lookups=InlineWorker(), writes=InlineWorker(), owner=False
    )
    result_of(shared.open())
    assert shared.is_open
    assert in_progress.read_bytes() == b"a download under way"
    assert renamed.read_bytes() == b"just stored"
    result_of(shared.close())
    result_of(own.close())


def test_a_directory_of_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not a cache")
    shared = FilesystemStorage(
        tmp_path, Clock(), 10**9, 0, lookups=InlineWorker(), writes=InlineWorker(), owner=False
    )
    d = shared.open()
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(layout.NotACache)
    assert (tmp_path / "precious.txt").exists() and not (tmp_path / layout.MARKER).exists()


def test_a_blob_fetched_but_not_kept_is_a_failure(tmp_path: Path) -> None:
    content = Content()
    _, blobs = content.image(NAME, "one", layers=1, tag="latest")
    upstream = FakeRegistry()
    content.publish(upstream)
    # Room for the config, not the layer: the layer streams through without being stored.
    layer = len(content.blobs[blobs[1]])
    harness = Harness(upstream, {"cache": {"dir": str(tmp_path), "max_size": layer - 1}})
    cache = harness.caching()
    assert isinstance(cache, CachingRegistry)
    result = warm_in(harness, cache)
    assert result.ok and set(result.fetched) == set(blobs)
    d = Deferred.fromCoroutine(warm.kept(cache, TARGET, result))
    harness.settle()
    checked: WarmResult = result_of(d)
    assert [f.what for f in checked.failures] == [blobs[1]]
    assert "not kept" in checked.failures[0].problem


# The command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dockermirror cache")
    warm.add_parser(parser.add_subparsers(metavar="COMMAND", required=True))
    return parser.parse_args(["warm", *argv])


def test_reference_lists(tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("# the base images\nredis:7\n\n  alpine:3.20   # pinned\nredis:7\n")
    args = parse("nginx", "--file", str(listing))
    assert warm.references(args, io.StringIO()) == ["nginx", "redis:7", "alpine:3.20"]
    args = parse("--file", "-")
    assert warm.references(args, io.StringIO("busybox\n")) == ["busybox"]
    for argv in [(), ("Not/Valid",), ("--file", str(tmp_path / "missing"))]:
        with pytest.raises(warm.UsageError):
            warm.references(parse(*argv), io.StringIO())
    with pytest.raises(SystemExit):
        parse("--platform", "linux", "redis")
    # A bad line is named by its file and line.
    listing.write_text("redis\n# a comment\n\nNot Valid\n")
    with pytest.raises(warm.UsageError, match=rf"^{listing}:4: 'Not Valid' is not an image"):
        warm.references(parse("--file", str(listing)), io.StringIO())


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("--mirror", "http://m.test", "--cache-dir", "/tmp/x", "redis"), "--mirror warms"),
        (("--mirror", "http://m.test", "--username", "u", "redis"), "go together"),
        (("--username", "u", "--password-stdin", "redis"), "go with --mirror"),
        (("--mirror", "m.test", "redis"), "http(s)://"),
        (("--config", "/nonexistent/dockermirror.toml", "redis"), "cannot read"),
        (("unknown.example/app",), "not configured"),
    ],
)
def test_usage_and_configuration_errors_exit_2(argv: tuple[str, ...], problem: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(warm.warm_command(None, parse(*argv), io.StringIO("pw\n"), out, err))
    assert code == warm.USAGE
    assert problem in err.getvalue() and out.getvalue() == ""


def test_a_line_per_image_and_per_failure_and_the_exit_status() -> None:
    content = Content()
    _, good = content.image(NAME, "good", layers=1, tag="good")
    _, bad = content.image(NAME, "bad", layers=1, tag="bad")
    registry = MemoryRegistry(content)
    registry.local = {good[0]}
    registry.broken[bad[1]] = RegistryError(UNAVAILABLE, status=502, message="upstream gone")
    jobs = [warm.Job("app:good", TARGET, "good")]
    out, err = io.StringIO(), io.StringIO()
    assert run(warm.warm_all(registry, jobs, [], out, err)) == warm.WARMED
    assert len(content.blobs[good[1]]) == 13000
    digest = digest_of(content.manifests[(NAME, "good")][1])
    assert out.getvalue() == (
        f"warmed app:good ({digest}): 1 manifest, 1 blob fetched (12.7 KiB), 1 already cached\n"
    )
    assert err.getvalue() == ""

    jobs.append(warm.Job("app:bad", TARGET, "bad"))
    out, err = io.StringIO(), io.StringIO()
    assert run(warm.warm_all(registry, jobs, [], out, err)) == warm.SOME_FAILED
    assert out.getvalue().splitlines()[1].startswith("FAILED app:bad (sha256:")
    assert out.getvalue().endswith(", 1 failure\n")
    assert err.getvalue() == f"dockermirror: app:bad: {bad[1]}: upstream gone (502)\n"


def test_an_index_through_a_docker_manifest_list_too() -> None:
    content = Content()
    amd, amd_blobs = content.image(NAME, "amd", layers=1)
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{**amd, "platform": platform("linux", "amd64")}],
    }
    content.put(NAME, DOCKER_LIST, document, "latest")
    result = run(
        warm_image(MemoryRegistry(content), TARGET, "latest", [Platform.parse("linux/amd64")])
    )
    assert result.ok and set(result.fetched) == set(amd_blobs)
