"""The client side: one :class:`UpstreamClient` per upstream registry.

It answers the registry's ``WWW-Authenticate`` challenges (anonymously or with
configured credentials), caches tokens per scope until they expire, follows
redirects itself (credentials go only to the origin they are for: never to a
CDN, S3 or anywhere a redirect points), and turns transport failures into OCI
errors (502 unreachable, 504 timeout).

It uses the Agent directly rather than treq's client, which always asks for
gzip and inflates it (an upstream's 1 MiB gzip bomb became 900 MiB for a
client) and keeps cookies across registries and redirect targets.  Bodies are
asked for and accepted in ``identity`` encoding only: their digests are over
the bytes as stored.
"""

from __future__ import annotations

import hashlib
import json
from base64 import b64encode
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from hyperlink import EncodedURL
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from dockermirror import __version__
from dockermirror.coalesce import Coalescer
from dockermirror.config import Registry, UpstreamSettings
from dockermirror.errors import DENIED, RegistryError
from dockermirror.upstream.addresses import GuardedResolver
from dockermirror.upstream.body import BodyTooLarge
from dockermirror.upstream.challenge import Challenge, parse_challenges
from dockermirror.upstream.errors import upstream_error
from dockermirror.upstream.events import NoEvents, UpstreamEvents
from dockermirror.upstream.heads import HeadTooLarge
from dockermirror.upstream.response import UpstreamResponse

log = Logger()

USER_AGENT = f"dockermirror/{__version__}".encode()
MAX_REDIRECTS = 5
_REDIRECT_CODES = {301, 302, 303, 307, 308}
_MAX_TOKEN_BYTES = 1024 * 1024
# Renew a token this many seconds before the upstream says it expires.
_TOKEN_MARGIN = 10.0
_MAX_CACHED_TOKENS = 1024
# A registry that refuses the configured credentials is reported at most this often.
_REFUSAL_LOG_INTERVAL = 60.0
_TRANSPORT_ERRORS = (
    netError.ConnectError,
    netError.DNSLookupError,
    netError.ConnectionLost,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)


class UpstreamClient:
    """Requests to one upstream registry, authenticated and with redirects followed."""

    def __init__(
        self,
        registry: Registry,
        agent: IAgent,
        clock: IReactorTime,
        settings: UpstreamSettings,
        *,
        resolver: GuardedResolver | None = None,
        events: UpstreamEvents | None = None,
    ) -> None:
        self.registry = registry
        self._events = events or NoEvents()
        self._agent = agent
        self._resolver = resolver
        self._clock = clock
        self._settings = settings
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[bytes, float]] = {}
        self._token_fetches = Coalescer()
        self._refusal_logged = float("-inf")

    async def request(
        self,
        method: bytes,
        name: str,
        path: Iterable[str],
        *,
        query: Iterable[tuple[str, str]] = (),
        headers: Mapping[bytes, Sequence[bytes]] | None = None,
        account: tuple[str, str] | None = None,
    ) -> UpstreamResponse:
        """``METHOD <registry>/v2/<name>/<path...>?<query>``, authenticated to pull ``name``.

        ``account``: a client's own credentials, used (instead of none) for a registry
        whose credentials are passed through; a configured account is used otherwise.
        """
        credentials = account if self.registry.passthrough else self.registry.credentials
        # Names, tags and digests are validated against the reference grammar and need no
        # escaping; a DecodedURL would escape the ":" of a digest, which registries need not undo.
        url = self.registry.url.encoded_url.child("v2", *name.split("/"), *path)
        for key, value in query:
            url = url.add(key, quote(value, safe=""))
        scope = f"repository:{name}:pull"
        known = self._challenge
        authorization = None
        if known is not None:
            authorization = await self._authorization(known, scope, credentials, fresh=False)
        response = await self._send(method, url, headers or {}, authorization)
        if response.code != 401 or response.redirected:
            # (A redirect target's challenge is not the registry's: it gets no credentials.)
            return response
        challenge = _usable_challenge(response)
        if challenge is None:
            return response
        response.discard()
        authorization = await self._authorization(challenge, scope, credentials, fresh=True)
        if authorization is None:
            return response
        # Remembered only once it worked: one unusable challenge fails one request, not all.
        self._challenge = challenge
        response = await self._send(method, url, headers or {}, authorization)
        if response.code == 401 and challenge.scheme == "basic" and account is None:
            self._credentials_refused()
        return response

    async def fetch(self, url: EncodedURL) -> UpstreamResponse:
        """An anonymous GET of one of the registry's other APIs (Docker Hub's search).

        Redirects are followed as for the registry's own requests; no credentials are sent.
        """
        _request_uri(url)  # a URL the request line can carry, or ValueError
        return await self._send(b"GET", url, {}, None)

    def _credentials_refused(self) -> None:
        """Tell the operator, once a minute per registry: every pull with them will fail."""
        if self.registry.username is None:
            return
        now = self._clock.seconds()
        if now < self._refusal_logged + _REFUSAL_LOG_INTERVAL:
            return
        self._refusal_logged = now
        log.warn(
            "{registry} refused the configured credentials of user {user}; check them",
            registry=self.registry.name,
            user=self.registry.username,
        )

    async def _authorization(
        self,
        challenge: Challenge,
        scope: str,
        credentials: tuple[str, str] | None,
        *,
        fresh: bool,
    ) -> bytes | None:
        if challenge.scheme == "basic":
            return _basic(credentials)
        # Tokens are the account's: a client's own are never another's.
        key = scope if credentials is None else f"{scope}\0{_fingerprint(credentials)}"
        cached = self._tokens.get(key)
        now = self._clock.seconds()
        if cached is not None and not fresh and cached[1] > now:
            return cached[0]
        # Callers that need a token for the same scope at once share one fetch.
        token, lifetime = await self._token_fetches.run(
            key, lambda: self._fetch_token(challenge, scope, credentials)
        )[0]
        if len(self._tokens) >= _MAX_CACHED_TOKENS:
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
        header = b"Bearer " + token.encode()
        self._tokens[key] = (header, now + max(lifetime - _TOKEN_MARGIN, lifetime / 2))
        return header

    async def _fetch_token(
        self, challenge: Challenge, scope: str, credentials: tuple[str, str] | None
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm", "")
        try:
            url = EncodedURL.from_text(realm)
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise upstream_error(self.registry.name, 502, f"unusable token realm {realm!r}")
        # The query is the mirror's to build: a realm's own could ask for other scopes.
        url = url.replace(query=(), fragment="")
        basic = _basic(credentials)
        if basic is not None and self.registry.url.scheme == "https" and url.scheme == "http":
            raise upstream_error(
                self.registry.name,
                502,
                "the token realm is plain http; the credentials are not sent there",
            )
        if challenge.params.get("service"):
            url = url.add("service", quote(challenge.params["service"], safe=""))
        url = url.add("scope", quote(scope, safe=""))
        response = await self._send(b"GET", url, {}, basic)
        try:
            body = await response.collect(_MAX_TOKEN_BYTES)
        except BodyTooLarge:
            raise upstream_error(self.registry.name, 502, "token response too large") from None
        if response.code in (401, 403):
            if self.registry.passthrough:
                raise RegistryError(
                    DENIED,
                    {"registry": self.registry.name},
                    message="the upstream registry refused your credentials",
                )
            self._credentials_refused()
            raise RegistryError(
                DENIED,
                {"registry": self.registry.name},
                message="the upstream registry refused the mirror's credentials",
            )
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            lifetime = float(document.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if response.code != 200 or not isinstance(token, str) or not token:
            raise upstream_error(
                self.registry.name, 502, f"token endpoint answered {response.code}"
            )
        return token, lifetime

    async def _send(
        self,
        method: bytes,
        url: EncodedURL,
        headers: Mapping[bytes, Sequence[bytes]],
        authorization: bytes | None,
    ) -> UpstreamResponse:
        """One request, following up to MAX_REDIRECTS redirects by hand.

        ``authorization`` goes only to the URL's origin (scheme, host and port):
        never to a redirect target elsewhere (Docker Hub's CDN, S3, which rejects
        a request that carries one, or a host that would keep it), never over
        plain HTTP after HTTPS.
        """
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent: dict[bytes, Sequence[bytes]] = {
                b"user-agent": [USER_AGENT],
                b"accept-encoding": [b"identity"],
                **headers,
            }
            if authorization is not None and _origin(url) == origin:
                sent[b"authorization"] = [authorization]
            response = await self._once(method, url, sent)
            if response.code not in _REDIRECT_CODES:
                response.redirected = _origin(url) != origin
                return response
            location = response.header("location") or ""
            response.discard()
            try:
                url = url.click(EncodedURL.from_text(location))
                _request_uri(url)
            except ValueError:
                raise upstream_error(
                    self.registry.name, 502, "redirect to an invalid location"
                ) from None
            if url.scheme not in ("http", "https"):
                raise upstream_error(
                    self.registry.name, 502, f"redirect to a {url.scheme!r} URL refused"
                )
        raise upstream_error(self.registry.name, 502, f"more than {MAX_REDIRECTS} redirects")

    async def _once(
        self, method: bytes, url: EncodedURL, headers: Mapping[bytes, Sequence[bytes]]
    ) -> UpstreamResponse:
        sent = self._clock.seconds()
        try:
            response = await self._exchange(method, url, headers)
        except RegistryError as error:
            problem = error.detail.get("problem") if isinstance(error.detail, dict) else None
            self._events.failed(self.registry.name, str(problem), self._clock.seconds() - sent)
            raise
        self._events.answered(self.registry.name, response.code, self._clock.seconds() - sent)
        answer = UpstreamResponse(
            response,
            head=method == b"HEAD",
            registry=self.registry.name,
            clock=self._clock,
            settings=self._settings,
            sent=sent,
        )
        encodings = [v.strip().lower() for v in answer.header_values("content-encoding")]
        if any(encoding not in ("", "identity") for encoding in encodings):
            answer.discard()
            raise upstream_error(
                self.registry.name, 502, f"{url.host} sent a {', '.join(encodings)} body"
            )
        return answer

    async def _exchange(
        self, method: bytes, url: EncodedURL, headers: Mapping[bytes, Sequence[bytes]]
    ) -> IResponse:
        """One request to its response head; transport failures become OCI errors."""
        d = self._agent.request(method, _request_uri(url), Headers(dict(headers)), None)
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self._clock.callLater(self._settings.response_timeout, give_up)
        try:
            response: IResponse = await d
        except Exception as e:
            if timed_out:
                raise upstream_error(
                    self.registry.name, 504, f"{url.host} did not answer in time"
                ) from None
            if _cancelled(e):
                raise CancelledError() from None  # the client went away; nobody to answer
            refused = self._resolver.refused(url.host) if self._resolver is not None else None
            if isinstance(e, netError.DNSLookupError) and refused is not None:
                # (The address stays in the operator's log: a client learns no internal DNS.)
                raise upstream_error(
                    self.registry.name, 502, f"{url.host} is not a public address"
                ) from None
            if _failed_with(e, HeadTooLarge):
                raise upstream_error(
                    self.registry.name, 502, f"{url.host} sent too large a response head"
                ) from None
            if isinstance(e, _TRANSPORT_ERRORS):
                raise upstream_error(
                    self.registry.name, 502, f"{url.host}: {type(e).__name__}"
                ) from None
            raise
        finally:
            if timer.active():
                timer.cancel()
        return response


def _cancelled(error: Exception) -> bool:
    """Cancelling an Agent request fails it with a wrapper around CancelledError."""
    return _failed_with(error, CancelledError)


def _failed_with(error: Exception, kind: type[Exception]) -> bool:
    """Whether ``error`` is ``kind`` or, as Agent wraps them, has it among its reasons."""
    reasons = getattr(error, "reasons", [])
    return isinstance(error, kind) or any(r.check(kind) for r in reasons)


def _usable_challenge(response: UpstreamResponse) -> Challenge | None:
    for header in response.header_values("www-authenticate"):
        for challenge in parse_challenges(header):
            if challenge.scheme in ("bearer", "basic"):
                return challenge
    return None


def _request_uri(url: EncodedURL) -> bytes:
    text = url.to_text()
    # Only a URL with non-ASCII parts needs IDNA and escaping (which IPv6 hosts fail).
    return (text if text.isascii() else url.to_uri().to_text()).encode("ascii")


def _origin(url: EncodedURL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host.lower(), url.port)


def _fingerprint(credentials: tuple[str, str]) -> str:
    return hashlib.sha256("\0".join(credentials).encode()).hexdigest()


def _basic(credentials: tuple[str, str] | None) -> bytes | None:
    if credentials is None:
        return None
    return b"Basic " + b64encode(":".join(credentials).encode())
