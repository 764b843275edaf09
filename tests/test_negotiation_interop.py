"""Content negotiation of a cached tag, against the real registry through a fresh mirror.

The mirror asks the upstream for a tag with every manifest type and decides
locally whether a client takes what it stored; a client that does not is passed
through.  These tests prove that a client accepting only single-platform
manifests does not change what a multi-arch tag means for the others: after it,
a list-aware client still gets the manifest list (from the cache), and an arm64
pull still copies the arm64 image, not the amd64 one the first client was given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import copy, fetch, same_tree
from tests.support.images import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX
from tests.support.peers import Mirror, Upstream, registry_config
from tests.support.probes import indexed
from tests.support.processes import wait_for

NAME = "library/multiarch"
TAG_PATH = f"/v2/{NAME}/manifests/latest"
LISTS = f"{DOCKER_LIST}, {OCI_INDEX}"


@pytest.fixture
def cold_mirror(upstream: Upstream, new_mirror: Callable[..., Mirror]) -> Mirror:
    """A mirror of its own, with an empty cache: the tag is cold."""
    return new_mirror(registry_config("docker.io", upstream.url))


def get(base: str, accept: str, token: str = "") -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": accept} | ({"Authorization": f"Bearer {token}"} if token else {})
    status, response, body = fetch(base + TAG_PATH, headers=headers)
    assert status == 200, body
    return status, response, body


def direct(upstream: Upstream, accept: str) -> bytes:
    """What the upstream itself serves for the tag with this Accept."""
    return get(upstream.url, accept, upstream.token(NAME))[2]


def tag_gets(upstream: Upstream, mark: int) -> list[tuple[str, str, int]]:
    """The mirror's successful upstream GETs of the tag since ``mark`` (401s left out)."""
    return [r for r in upstream.requests(mark) if r == ("GET", TAG_PATH, 200)]


def bound_digest(mirror: Mirror) -> str | None:
    return indexed(mirror)[1].get((NAME, "latest"))


def schema2_only_client(upstream: Upstream, mirror: Mirror) -> dict[str, str]:
    """A client taking only schema2 gets the upstream's own answer to it (amd64)."""
    _, headers, body = get(mirror.url, DOCKER_MANIFEST)
    assert headers["content-type"] == DOCKER_MANIFEST
    assert body == direct(upstream, DOCKER_MANIFEST)
    # The tag is bound (to the list) in the background; wait for it before the next client.
    wait_for(lambda: bound_digest(mirror) is not None, 10)
    return headers


def test_list_client_after_a_schema2_only_client_gets_the_list_from_the_cache(
    upstream: Upstream, cold_mirror: Mirror
) -> None:
    listed = direct(upstream, LISTS)
    list_digest = "sha256:" + hashlib.sha256(listed).hexdigest()
    mark = upstream.log_mark()
    first = schema2_only_client(upstream, cold_mirror)
    assert first["x-dockermirror-cache"] == "MISS"
    # The tag asked with every type (the list, kept), then the client's own request.
    assert len(tag_gets(upstream, mark)) == 2
    assert bound_digest(cold_mirror) == list_digest

    mark = upstream.log_mark()
    _, headers, body = get(cold_mirror.url, LISTS)
    assert body == listed
    assert headers["content-type"] == DOCKER_LIST
    assert headers["docker-content-digest"] == list_digest
    assert headers["x-dockermirror-cache"] == "HIT"
    assert upstream.requests(mark) == []


def test_arm64_pull_after_a_schema2_only_client_copies_arm64(
    upstream: Upstream, cold_mirror: Mirror, containers_env: dict[str, str], tmp_path: Path
) -> None:
    children = json.loads(direct(upstream, LISTS))["manifests"]
    (arm64,) = [c for c in children if c["platform"]["architecture"] == "arm64"]
    schema2_only_client(upstream, cold_mirror)

    arch = ("--override-arch", "arm64")
    copy(containers_env, f"docker://{cold_mirror.address}/{NAME}:latest", tmp_path / "m", *arch)
    manifest = (tmp_path / "m" / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == arm64["digest"]
    copy(containers_env, f"docker://{upstream.address}/{NAME}:latest", tmp_path / "d", *arch)
    same_tree(tmp_path / "d", tmp_path / "m")


def test_schema2_only_client_after_a_list_client_is_passed_through(
    upstream: Upstream, cold_mirror: Mirror
) -> None:
    listed = direct(upstream, LISTS)
    assert get(cold_mirror.url, LISTS)[2] == listed
    wait_for(lambda: bound_digest(cold_mirror) is not None, 10)
    mark = upstream.log_mark()
    schema2_only_client(upstream, cold_mirror)
    assert len(tag_gets(upstream, mark)) == 1  # the pass-through only
    _, headers, body = get(cold_mirror.url, LISTS)
    assert (body, headers["x-dockermirror-cache"]) == (listed, "HIT")
