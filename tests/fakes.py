"""In-memory peers: a scriptable fake registry, and a harness that runs the mirror without sockets.

The harness nests treq's in-memory agents twice: a StubTreq client talks to
the mirror's resource, and the mirror's upstream client talks to a
:class:`FakeRegistry` resource through a ``RequestTraversalAgent``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from dockermirror.auth.htpasswd import Htpasswd
from dockermirror.config import MirrorConfig, build_config
from dockermirror.metrics import Metrics
from dockermirror.registry.caching import CachingRegistry
from dockermirror.service import build_registry, build_site, hub_quotas
from dockermirror.storage.filesystem import FilesystemStorage
from dockermirror.storage.workers import InlineWorker
from dockermirror.upstream.client import UpstreamClient

Handler = Callable[[Request], bytes | int]

# docker.io anonymously, and private.test: the same upstream with the mirror's credentials,
# reached by prefix in the tests.
WITH_PRIVATE: dict[str, Any] = {
    "docker.io": {"url": "http://upstream.test"},
    "private.test": {
        "url": "http://upstream.test",
        "username": "u",
        "password": "p",
        "by_prefix": True,
    },
}


def json_error(request: Request, status: int, code: str, message: str = "") -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"errors": [{"code": code, "message": message or code}]}).encode()


class FakeRegistry(Resource):
    """Answers by exact path; records every request; optional bearer-token auth."""

    isLeaf = True

    def __init__(self, *, token_auth: bool = False, token_lifetime: int = 300) -> None:
        super().__init__()
        self.handlers: dict[str, Handler] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.token_auth = token_auth
        self.token_lifetime = token_lifetime
        self.issued = 0
        self.valid_tokens: set[str] = set()
        # While set, token requests wait here until release_tokens().
        self.held_tokens: list[Request] | None = None
        # While set, answers token requests instead of the default.
        self.token_handler: Handler | None = None

    def render(self, request: Request) -> bytes | int:
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode(), request.uri.decode(), headers))
        path = request.path.decode()
        if path == "/token":
            if self.token_handler is not None:
                return self.token_handler(request)
            if self.held_tokens is not None:
                self.held_tokens.append(request)
                return NOT_DONE_YET
            return self._token()
        if self.token_auth and path.startswith("/v2/"):
            sent = headers.get("authorization", [""])[0].removeprefix("Bearer ")
            if sent not in self.valid_tokens:
                request.setHeader(
                    b"www-authenticate",
                    b'Bearer realm="http://upstream.test/token",service="fake",scope="x"',
                )
                return json_error(request, 401, "UNAUTHORIZED")
        handler = self.handlers.get(path)
        if handler is None:
            return json_error(request, 404, "NAME_UNKNOWN")
        return handler(request)

    def _token(self) -> bytes:
        self.issued += 1
        token = f"token-{self.issued}"
        self.valid_tokens.add(token)
        return json.dumps({"token": token, "expires_in": self.token_lifetime}).encode()

    def release_tokens(self) -> None:
        held, self.held_tokens = self.held_tokens or [], None
        for request in held:
            request.write(self._token())
            request.finish()

    def paths(self, method: str | None = None) -> list[str]:
        return [uri for m, uri, _ in self.requests if method is None or m == method]


def blob_handler(data: bytes, *, content_type: bytes = b"application/octet-stream") -> Handler:
    def handle(request: Request) -> bytes:
        request.setHeader(b"content-type", content_type)
        return data

    return handle


def stalling_handler(first_part: bytes, status: int = 200) -> Handler:
    """Sends headers and the first part of a larger body, then nothing more, ever."""

    def handle(request: Request) -> int:
        request.setResponseCode(status)
        request.setHeader(b"content-length", str(len(first_part) * 4).encode())
        request.write(first_part)
        return NOT_DONE_YET

    return handle


def dying_handler(first_part: bytes) -> Handler:
    """Sends the first part of a larger body, then drops the connection."""

    def handle(request: Request) -> int:
        request.setHeader(b"content-length", str(len(first_part) * 4).encode())
        request.write(first_part)
        assert request.channel is not None
        request.channel.transport.abortConnection()  # type: ignore[union-attr]
        return NOT_DONE_YET

    return handle


class HeldBlob:
    """An upstream blob that sends its headers and ``sent`` bytes, the rest when released."""

    def __init__(self, registry: FakeRegistry, path: str, data: bytes, sent: int) -> None:
        self.data = data
        self.sent = sent
        self.request: Request | None = None
        self.closed: list[Failure | None] = []  # how the upstream connection ended, once it has
        registry.handlers[path] = self.handle

    def handle(self, request: Request) -> int:
        request.setHeader(b"content-length", str(len(self.data)).encode())
        request.write(self.data[: self.sent])
        request.notifyFinish().addBoth(self.closed.append)
        self.request = request
        return NOT_DONE_YET

    def release(self) -> None:
        assert self.request is not None
        self.request.write(self.data[self.sent :])
        self.request.finish()


class Harness:
    """The mirror, in memory, with docker.io pointed at a fake registry."""

    def __init__(
        self,
        registry: FakeRegistry,
        toml: dict[str, Any] | None = None,
        *,
        token_key: bytes = b"k" * 32,
    ) -> None:
        self.clock = Clock()
        self.registry = registry
        self.upstream_agent = RequestTraversalAgent(registry)
        base: dict[str, Any] = {
            "registries": {"docker.io": {"url": "http://upstream.test"}},
            "cache": {"enabled": False},
        }
        self.config: MirrorConfig = build_config({**base, **(toml or {})})
        self.metrics = Metrics(self.clock, hub_quotas(self.config, self.clock))
        self.clients = {
            name: UpstreamClient(
                registry_config,
                self.upstream_agent,
                self.clock,
                self.config.upstream,
                events=self.metrics,
            )
            for name, registry_config in self.config.registries.items()
        }
        # Storage work runs inline: the fake clock has no threads.
        self.registry_stack, self.cache = build_registry(
            self.config,
            self.clock,
            self.clients,
            worker=lambda name: InlineWorker(),
            metrics=self.metrics,
        )
        if self.cache is not None:
            self.cache.startService()
        htpasswd = self.config.policy.auth.htpasswd
        # bcrypt runs inline too (a real mirror runs it on a thread).
        users = Htpasswd(Path(htpasswd), self.clock, maybeDeferred) if htpasswd else None
        self.site = build_site(
            self.config,
            self.clock,
            self.registry_stack,
            self.clients,
            metrics=self.metrics,
            token_key=token_key,
            users=users,
        )
        self.client = stub_client(self.site)

    def caching(self) -> CachingRegistry:
        """The caching registry (the cache is on)."""
        assert isinstance(self.registry_stack, CachingRegistry)
        return self.registry_stack

    def storage(self) -> FilesystemStorage:
        store = self.caching().storage
        assert isinstance(store, FilesystemStorage)
        return store

    def settle(self) -> None:
        for _ in range(20):
            self.upstream_agent.flush()
            self.client.flush()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = path if path.startswith("http") else "http://mirror.test" + path
        d = self.client.request(method, url, **kwargs)
        self.settle()
        return result_of(d)

    def body(self, response: Any) -> bytes:
        d = response.content()
        self.settle()
        value = result_of(d)
        assert isinstance(value, bytes)
        return value

    def error(self, response: Any) -> tuple[int, str]:
        document = json.loads(self.body(response))
        return response.code, document["errors"][0]["code"]


def stub_client(site: Site) -> Any:
    """An in-memory treq client of ``site``.

    It is served through the mirror's own Site (its request type, access log and
    channel), not the plain Site that treq's in-memory agent builds.  StubTreq
    builds its methods at run time; mypy cannot see them.
    """
    client: Any = StubTreq(site.resource)
    client._agent._serverFactory = site
    return client


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def watch(d: Deferred[Any]) -> list[Any]:
    """The result of ``d`` once it has one, without taking it away from later callbacks."""
    results: list[Any] = []

    def record(result: Any) -> Any:
        results.append(result)
        return result

    d.addBoth(record)
    return results
