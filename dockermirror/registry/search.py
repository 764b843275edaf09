"""``docker search``: Docker Hub's search API, asked through the mirror and its answers reused.

Docker asks ``GET /v1/search?q=TERM&n=25`` of the registry named in
``docker search HOST/TERM``.  The answers are the same for everyone, so each is
kept for ``search_ttl`` seconds (up to a bounded number of queries) and one
upstream request serves all the clients asking the same at the same time.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping

import attrs
from hyperlink import DecodedURL
from twisted.internet.interfaces import IReactorTime

from dockermirror.coalesce import Coalescer
from dockermirror.config import DockerHubSettings, Registry
from dockermirror.errors import NAME_UNKNOWN, UNSUPPORTED, RegistryError
from dockermirror.reference import validate_name
from dockermirror.upstream.body import BodyTooLarge
from dockermirror.upstream.client import UpstreamClient
from dockermirror.upstream.errors import failure_of, upstream_error

_MAX_BODY = 1024 * 1024
# Answers kept, by their size upstream: a hostile upstream's large answers cannot pile up.
_MAX_KEPT_BYTES = 16 * 1024 * 1024
MAX_QUERY = 255
MAX_PAGE_SIZE = 100
MAX_PAGE = 1000


@attrs.frozen
class SearchResult:
    name: str
    description: str
    star_count: int
    is_official: bool
    is_automated: bool


@attrs.frozen
class SearchPage:
    query: str
    page: int
    page_size: int
    num_pages: int
    num_results: int
    results: tuple[SearchResult, ...]


@attrs.frozen
class SearchQuery:
    """A client's query, checked: what the cache of answers is keyed by."""

    term: str
    page_size: int = 25
    page: int = 1

    @classmethod
    def parse(cls, term: str | None, n: str | None, page: str | None) -> SearchQuery:
        if not term or len(term) > MAX_QUERY:
            raise _bad_query(f"q must be 1 to {MAX_QUERY} characters")
        return cls(term, _number(n, "n", 25, MAX_PAGE_SIZE), _number(page, "page", 1, MAX_PAGE))


class HubSearch:
    def __init__(
        self,
        clients: Mapping[str, UpstreamClient],
        settings: DockerHubSettings,
        clock: IReactorTime,
    ) -> None:
        self._clients = clients
        self._url = DecodedURL.from_text(settings.search_url)
        self._ttl = settings.search_ttl
        self._clock = clock
        self._kept: OrderedDict[tuple[str, SearchQuery], tuple[SearchPage, float, int]] = (
            OrderedDict()
        )
        self._kept_bytes = 0
        self._fetches = Coalescer()

    async def search(self, registry: Registry, query: SearchQuery) -> SearchPage:
        """Docker Hub's answer for ``registry`` (which must be a Docker Hub registry)."""
        if not registry.docker_hub:
            raise RegistryError(
                NAME_UNKNOWN,
                {"registry": registry.name},
                message="search is answered for Docker Hub only",
            )
        key = (registry.name, query)
        kept = self._kept.get(key)
        now = self._clock.seconds()
        if kept is not None and kept[1] > now:
            return kept[0]
        page, size = await self._fetches.run(key, lambda: self._fetch(registry, query))[0]
        if key in self._kept:
            self._kept_bytes -= self._kept.pop(key)[2]
        self._kept[key] = (page, self._clock.seconds() + self._ttl, size)
        self._kept_bytes += size
        while self._kept_bytes > _MAX_KEPT_BYTES:
            self._kept_bytes -= self._kept.popitem(last=False)[1][2]
        return page

    async def _fetch(self, registry: Registry, query: SearchQuery) -> tuple[SearchPage, int]:
        """The page, and the size of Hub's answer (what keeping it costs, roughly)."""
        url = self._url.add("q", query.term).add("n", str(query.page_size))
        url = url.add("page", str(query.page))
        response = await self._clients[registry.name].fetch(url.encoded_url)
        if response.code != 200:
            raise await failure_of(response, "search", NAME_UNKNOWN)
        try:
            body = await response.collect(_MAX_BODY)
        except BodyTooLarge:
            raise upstream_error(registry.name, 502, "search answer too large") from None
        try:
            return _page(json.loads(body), query), len(body)
        except (ValueError, TypeError, OverflowError):
            raise upstream_error(registry.name, 502, "invalid search answer") from None


def _page(document: object, query: SearchQuery) -> SearchPage:
    """Hub's answer, as plain values; ValueError (or TypeError) when it is not that shape."""
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise ValueError("not a search answer")
    # No more than asked for, and only names that are repository names.
    found = (_result(item) for item in document["results"])
    results = tuple(r for r in found if _repository_name(r.name))[: query.page_size]
    return SearchPage(
        query=query.term,
        page=query.page,
        page_size=query.page_size,
        num_pages=int(document.get("num_pages") or 1),
        num_results=int(document.get("num_results") or len(results)),
        results=results,
    )


def _result(item: object) -> SearchResult:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ValueError("not a search result")
    return SearchResult(
        name=item["name"],
        description=str(item.get("description") or ""),
        star_count=int(item.get("star_count") or 0),
        is_official=bool(item.get("is_official")),
        is_automated=bool(item.get("is_automated")),
    )


def _repository_name(name: str) -> bool:
    try:
        validate_name(name)
    except RegistryError:
        return False
    return True


def _number(value: str | None, name: str, default: int, most: int) -> int:
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 6 or not 1 <= int(value):
        raise _bad_query(f"{name} must be a whole number from 1")
    return min(int(value), most)


def _bad_query(problem: str) -> RegistryError:
    return RegistryError(UNSUPPORTED, {"problem": problem}, status=400, message="invalid search")
