"""``docker search MIRROR/TERM`` with the real Docker engine.

Answered from a stand-in for Docker Hub's search API (tests/support/hubsearch.py)
through the mirror, reused for a while rather than asked again, and filtered by the
mirror's repository policy as pulls are.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker import Docker, mirror_config, running_docker
from tests.support.images import Image
from tests.support.peers import Upstream
from tests.support.processes import Peer, free_port

HUBSEARCH = Path(__file__).parent / "support" / "hubsearch.py"


class Searching:
    """The Docker namespace, and the search stand-in running in it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.peer: Peer | None = None

    def requests(self) -> list[str]:
        assert self.peer is not None
        return [line for line in self.peer.output().splitlines() if line.startswith("GET ")]


@pytest.fixture(scope="module")
def hub() -> Searching:
    return Searching()


@pytest.fixture(scope="module")
def docker(
    images: dict[str, Image], hub: Searching, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Docker]:
    logs = tmp_path_factory.mktemp("hubsearch")

    def config(upstream: Upstream, directory: Path) -> str:
        # The "blocked" namespace is refused by policy: search must not show it either.
        plain = f'[registries."docker.io"]\nurl = "{upstream.url}"\n'
        text = mirror_config(upstream, directory / "secret")
        assert plain in text
        text = text.replace(plain, plain + 'repositories = ["*", "!blocked/*"]\n')
        return text + f'\n[docker_hub]\nsearch_url = "http://127.0.0.1:{hub.port}/v1/search"\n'

    def setup() -> None:
        # Started in the namespace, where the mirror reaches it on loopback.
        hub.peer = Peer(
            "hubsearch",
            [sys.executable, str(HUBSEARCH), str(hub.port)],
            ("127.0.0.1", hub.port),
            logs / "hubsearch.log",
        )

    try:
        yield from running_docker(images, config, setup=setup)
    finally:
        if hub.peer is not None:
            hub.peer.stop()


def names(docker: Docker, term: str) -> list[str]:
    result = docker("search", "--format", "{{.Name}} {{.IsOfficial}}", term)
    return result.stdout.splitlines()


def test_docker_search_through_the_mirror(docker: Docker, hub: Searching) -> None:
    term = f"{docker.mirror.address}/alpine"
    # Hub's results, less what this mirror refuses to pull.
    assert names(docker, term) == ["alpine [OK]", "someone/alpine-tools "]
    assert len(hub.requests()) == 1
    # The same search again is answered from the mirror's memory.
    assert names(docker, term) == ["alpine [OK]", "someone/alpine-tools "]
    assert len(hub.requests()) == 1
    assert hub.requests()[0].startswith("GET /v1/search?q=alpine&n=25")
    # Another search is another request.
    assert names(docker, f"{docker.mirror.address}/tools") == ["someone/alpine-tools "]
    assert len(hub.requests()) == 2
