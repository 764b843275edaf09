"""``/v1/search`` in memory: its edge cases (the real Docker engine is in test_search_interop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.server import Request

from tests.fakes import FakeRegistry, Harness, json_error

RESULTS = {
    "num_pages": 1,
    "num_results": 2,
    "page_size": 25,
    "page": 1,
    "query": "redis",
    "results": [
        {"name": "redis", "description": "", "star_count": 9, "is_official": True},
        {"name": "team/redis", "description": "ours", "star_count": 1, "is_automated": False},
    ],
}


def hub(answer: Any = RESULTS, status: int = 200) -> FakeRegistry:
    registry = FakeRegistry()

    def search(request: Request) -> bytes:
        if status != 200:
            return json_error(request, status, "UNKNOWN")
        request.setHeader(b"content-type", b"application/json")
        return answer if isinstance(answer, bytes) else json.dumps(answer).encode()

    registry.handlers["/v1/search"] = search
    return registry


def mirror(registry: FakeRegistry, **toml: Any) -> Harness:
    return Harness(
        registry, {"docker_hub": {"search_url": "http://upstream.test/v1/search"}, **toml}
    )


def search(harness: Harness, query: str, **kwargs: Any) -> tuple[int, Any]:
    response = harness.request("GET", "/v1/search?" + query, **kwargs)
    return response.code, json.loads(harness.body(response))


def test_results_and_the_query_sent() -> None:
    registry = hub()
    code, document = search(mirror(registry), "q=redis&n=10")
    assert code == 200
    assert [r["name"] for r in document["results"]] == ["redis", "team/redis"]
    assert document["results"][0] == {
        "name": "redis",
        "description": "",
        "star_count": 9,
        "is_official": True,
        "is_automated": False,
    }
    assert registry.paths() == ["/v1/search?q=redis&n=10&page=1"]


def test_answers_are_kept_for_the_ttl() -> None:
    registry = hub()
    harness = mirror(
        registry, docker_hub={"search_url": "http://upstream.test/v1/search", "search_ttl": 60}
    )
    search(harness, "q=redis")
    search(harness, "q=redis")
    assert len(registry.paths()) == 1
    harness.clock.advance(61)
    search(harness, "q=redis")
    assert len(registry.paths()) == 2


def test_repository_policy_filters_results() -> None:
    code, document = search(
        mirror(
            hub(),
            registries={
                "docker.io": {"url": "http://upstream.test", "repositories": ["library/*"]}
            },
        ),
        "q=redis",
    )
    assert (code, [r["name"] for r in document["results"]]) == (200, ["redis"])


def test_a_mirror_with_users_asks_anonymous_clients_to_log_in(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    harness = mirror(hub(), auth={"htpasswd": str(htpasswd), "anonymous": False})
    code, document = search(harness, "q=redis")
    assert (code, document["errors"][0]["code"]) == (401, "UNAUTHORIZED")
    code, document = search(harness, "q=redis", auth=("alice", "pw"))
    assert (code, len(document["results"])) == (200, 2)


@pytest.mark.parametrize(
    "query", ["", "q=", "q=" + "x" * 256, "q=a&n=0", "q=a&n=x", "q=a&page=-1", "q=a&n=²"]
)
def test_invalid_queries_get_a_400(query: str) -> None:
    registry = hub()
    code, document = search(mirror(registry), query)
    assert (code, document["errors"][0]["code"]) == (400, "UNSUPPORTED")
    assert registry.paths() == []


def test_search_is_for_docker_hub_only() -> None:
    harness = mirror(
        hub(),
        registries={
            "docker.io": {"url": "http://upstream.test"},
            "quay": {"url": "http://q.test"},
        },
        routes={"*": "quay"},
    )
    code, document = search(harness, "q=redis")
    assert (code, document["errors"][0]["code"]) == (404, "NAME_UNKNOWN")


@pytest.mark.parametrize(
    ("answer", "status", "expected"),
    [
        (RESULTS, 500, 502),
        (b"not json", 200, 502),
        ({"results": "no"}, 200, 502),
        ({"results": [{"name": 3}]}, 200, 502),
        (RESULTS, 429, 429),
    ],
)
def test_upstream_failures(answer: Any, status: int, expected: int) -> None:
    code, document = search(mirror(hub(answer, status)), "q=redis")
    assert code == expected and document["errors"]


@settings(max_examples=50, deadline=None)
@given(query=st.text(max_size=60))
def test_no_query_gets_a_500(query: str) -> None:
    response = mirror(hub()).request("GET", "/v1/search?q=" + query.replace("#", ""))
    assert response.code in (200, 400, 404)


def test_a_page_holds_what_was_asked_for_and_only_repository_names() -> None:
    many = {
        "results": [{"name": f"team/app{i}"} for i in range(100)]
        + [{"name": ""}, {"name": "Not A Name"}]
    }
    code, document = search(mirror(hub(many)), "q=app&n=10")
    assert (code, [r["name"] for r in document["results"]]) == (
        200,
        [f"team/app{i}" for i in range(10)],
    )
    code, document = search(mirror(hub({"results": [{"name": ""}, {"name": "ok/x"}]})), "q=x")
    assert [r["name"] for r in document["results"]] == ["ok/x"]


def test_numbers_past_floats_are_an_invalid_answer() -> None:
    answer = b'{"num_pages": 1e400, "results": [{"name": "a/b", "star_count": 1e400}]}'
    code, document = search(mirror(hub(answer)), "q=a")
    assert (code, document["errors"][0]["code"]) == (502, "UNAVAILABLE")


def test_answers_kept_are_bounded_by_their_size() -> None:
    """A hostile upstream's megabyte answers do not pile up: the oldest are let go."""
    big = {"results": [{"name": "a/b", "description": "x" * (1000 * 1000 - 100)}]}
    registry = hub(big)
    harness = mirror(registry)
    for i in range(20):
        search(harness, f"q=term{i}")
    search(harness, "q=term19")
    assert len(registry.paths()) == 20  # the newest is still kept
    search(harness, "q=term0")
    assert len(registry.paths()) == 21  # the oldest was let go
