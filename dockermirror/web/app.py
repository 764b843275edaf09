"""The mirror's HTTP surface: the usage page, the registry API base, its token endpoint and pulls.

A pull reads top to bottom in :meth:`MirrorApp.api`: parse the path, find out
who asks, route it to an upstream, check the access policy, ask the
:class:`~dockermirror.registry.model.Registry`, render.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs, unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from dockermirror.auth.tokens import TokenIssuer, parse_scope
from dockermirror.config import MirrorConfig, strip_port
from dockermirror.errors import (
    DENIED,
    NAME_INVALID,
    NAME_UNKNOWN,
    UNAUTHORIZED,
    UNKNOWN,
    UNSUPPORTED,
    RegistryError,
)
from dockermirror.policy.access import ANONYMOUS, AccessPolicy, Identity
from dockermirror.policy.limits import RateLimiter
from dockermirror.reference import (
    ApiPath,
    Endpoint,
    parse_api_path,
    validate_digest,
    validate_reference,
)
from dockermirror.registry.model import Registry
from dockermirror.registry.search import HubSearch, SearchQuery
from dockermirror.routing import Target, complete_name, registry_for_host, route_request
from dockermirror.status import LiveStatus
from dockermirror.web.errors import render_error
from dockermirror.web.forwarded import client_of
from dockermirror.web.health import render_healthz, render_readyz
from dockermirror.web.homepage import (
    CONTENT_SECURITY_POLICY,
    choose_language,
    content_language,
    render_homepage,
)
from dockermirror.web.requests import (
    header,
    header_values,
    host,
    query_value,
    query_values,
    valid_host,
)
from dockermirror.web.responses import render_blob, render_manifest, render_referrers, render_tags
from dockermirror.web.site import MirrorRequest

log = Logger()

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_API_VERSION = (b"docker-distribution-api-version", [b"registry/2.0"])


class MirrorApp:
    app = Klein()
    # werkzeug answers "//" in a path with a redirect that Klein turns into a 500.
    app.url_map.merge_slashes = False

    def __init__(
        self,
        config: MirrorConfig,
        registry: Registry,
        policy: AccessPolicy,
        issuer: TokenIssuer,
        limiter: RateLimiter,
        search: HubSearch,
        status: Callable[[], LiveStatus],
    ) -> None:
        self._config = config
        self._registry = registry
        self._policy = policy
        self._issuer = issuer
        self._limiter = limiter
        self._search = search
        self._status = status

    def resource(self) -> IResource:
        return _Checked(self.app.resource(), self._policy)

    @app.route("/", methods=["GET", "HEAD"])
    def home(self, request: MirrorRequest) -> bytes:
        client_host = host(request)
        language = choose_language(
            header(request, b"accept-language"), query_value(request, "lang")
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-language", content_language(language).encode())
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode())
        request.setHeader(b"vary", b"Accept-Language, Host")
        request.setHeader(b"cache-control", b"no-store")  # it shows live status
        return render_homepage(
            self._config,
            self._config.registry_for_host(strip_port(client_host.lower())),
            client_host,
            request.scheme,
            language,
            self._status(),
        )

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: MirrorRequest) -> bytes:
        return render_healthz(request, self._status())

    @app.route("/readyz", methods=["GET", "HEAD"])
    def readyz(self, request: MirrorRequest) -> bytes:
        return render_readyz(request, self._registry)

    @app.route("/v1/search", methods=["GET"])
    async def search(self, request: MirrorRequest) -> bytes:
        """``docker search HOST/TERM``: Docker Hub's results that this client may pull."""
        identity = await self._identify(request)
        self._limit(request, identity.user)
        auth = self._config.policy.auth
        if self._policy.login_enabled and identity == ANONYMOUS and not auth.anonymous:
            raise RegistryError(UNAUTHORIZED, message="log in to use this mirror")
        query = SearchQuery.parse(
            query_value(request, "q"), query_value(request, "n"), query_value(request, "page")
        )
        registry = registry_for_host(self._config, host(request))
        page = await self._search.search(registry, query)
        # The same policy as pulls: what this client may not pull, it is not shown.
        results = [
            attrs.asdict(result)
            for result in page.results
            if self._policy.may_pull(
                identity, Target(registry, complete_name(registry, result.name), result.name)
            )
        ]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "query": page.query,
                "page": page.page,
                "page_size": page.page_size,
                "num_pages": page.num_pages,
                "num_results": page.num_results,
                "results": results,
            }
        ).encode()

    @app.route("/v2", methods=["GET", "HEAD"])
    @app.route("/v2/", methods=["GET", "HEAD"])
    async def base(self, request: MirrorRequest) -> bytes:
        _api_headers(request)
        identity = await self._identify(request)
        self._limit(request, identity.user)
        if self._policy.login_enabled and identity == ANONYMOUS:
            # What `docker login` asks first: a 401 makes it send the credentials to check.
            raise RegistryError(UNAUTHORIZED, message="log in to use this mirror")
        request.setHeader(b"content-type", b"application/json")
        return b"{}"

    @app.route("/v2/auth", methods=["GET", "POST"])
    async def auth(self, request: MirrorRequest) -> bytes:
        """A token for the scopes asked for, as far as the policy grants them.

        GET with optional Basic credentials (Docker, skopeo, podman), or POST of
        an OAuth2 password grant form (containerd).
        """
        _api_headers(request)
        # Counted by address before any password is checked: logins are what gets guessed.
        self._limit(request, None)
        if request.method == b"POST":
            form = _form(request)
            if form.get("grant_type") != "password":
                raise RegistryError(
                    UNSUPPORTED, status=400, message="only the password grant is supported"
                )
            user, password = form.get("username", ""), form.get("password", "")
            identity = await self._guarded(request, lambda: self._policy.login(user, password))
            requested = form.get("scope", "")
        else:
            identity = await self._identify(request)
            requested = " ".join(query_values(request, "scope"))
        auth = self._config.policy.auth
        anonymous = identity.user is None and identity.upstream is None
        if self._policy.login_enabled and anonymous and not auth.anonymous:
            raise RegistryError(UNAUTHORIZED, message="log in to use this mirror")
        request.account = identity.user
        grants = self._grants(request, identity, requested)
        token = self._issuer.issue(identity.user, grants, identity.upstream)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(token).encode()

    def _grants(
        self, request: MirrorRequest, identity: Identity, requested: str
    ) -> list[tuple[str, bool]]:
        client_host, ns = host(request), query_value(request, "ns")
        grants = []
        # Clients send one scope per parameter; some put several in one, space-separated.
        for scope in requested.split(" "):
            parsed = parse_scope(scope) if scope else None
            if parsed is None or parsed[0] != "repository":
                continue
            _, name, actions = parsed
            target = route_request(self._config, client_host, name, ns)
            # A mirror is read-only: pull is all it can grant.
            granted = "pull" in actions and self._policy.may_pull(identity, target)
            grants.append((target.label, granted))
        return grants

    @app.route("/v2/<path:rest>", methods=ALL_METHODS)
    async def api(self, request: MirrorRequest, rest: str) -> bytes | IResource:
        _api_headers(request)
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError(
                UNSUPPORTED, message="this mirror is read-only: push and delete are unsupported"
            )
        path = parse_api_path(rest)
        if path.endpoint in (Endpoint.UPLOAD, Endpoint.CATALOG):
            raise RegistryError(UNSUPPORTED, {"endpoint": path.endpoint.value})
        identity = await self._identify(request)
        target = route_request(self._config, host(request), path.name, query_value(request, "ns"))
        request.route = target.label
        self._policy.check_pull(identity, target)
        head = request.method == b"HEAD"
        self._limit(request, identity.user, blob=path.endpoint is Endpoint.BLOB and not head)
        if not target.registry.passthrough:
            return await self._answer(request, path, target, head)
        target = attrs.evolve(target, account=identity.upstream)
        try:
            return await self._answer(request, path, target, head)
        except RegistryError as error:
            if target.account is not None or error.code is not DENIED:
                raise
            # The upstream wants an account: the client is asked for one, to pass on.
            raise RegistryError(
                UNAUTHORIZED,
                error.detail,
                message="log in with your account at the upstream registry",
                scope=f"repository:{target.client_name}:pull",
            ) from None

    async def _answer(
        self, request: MirrorRequest, path: ApiPath, target: Target, head: bool
    ) -> bytes | IResource:
        """Ask the registry what the path names, and render it."""
        if path.endpoint is Endpoint.MANIFEST:
            reference = validate_reference(path.reference)
            accept = header_values(request, b"accept")
            manifest = await self._registry.manifest(target, reference, accept, head=head)
            return render_manifest(request, manifest)
        if path.endpoint is Endpoint.BLOB:
            source = await self._registry.blob(target, validate_digest(path.reference))
            return await render_blob(request, source)
        if path.endpoint is Endpoint.REFERRERS:
            digest = validate_digest(path.reference)
            artifact_type = query_value(request, "artifactType")
            referrers = await self._registry.referrers(target, digest, artifact_type)
            return render_referrers(request, referrers)
        page = await self._registry.tags(
            target, query_value(request, "n"), query_value(request, "last")
        )
        return render_tags(request, page, target)

    async def _identify(self, request: MirrorRequest) -> Identity:
        authorization = header(request, b"authorization")
        if authorization is None:
            return ANONYMOUS  # nothing to check, nothing to count against guessing
        identity = await self._guarded(request, lambda: self._policy.identify(authorization))
        request.account = identity.user
        return identity

    async def _guarded(
        self, request: MirrorRequest, check: Callable[[], Deferred[Identity]]
    ) -> Identity:
        """A password check, which an address that keeps guessing wrong must wait for."""
        client = f"address {request.client or 'local'}"
        self._limiter.check_guesses(client)
        try:
            return await check()
        except RegistryError as error:
            if error.code is UNAUTHORIZED:
                self._limiter.guessed_wrong(client)
            raise

    def _limit(self, request: MirrorRequest, user: str | None, *, blob: bool = False) -> None:
        """Count the request against its client's limits (429 when over one)."""
        client = f"user {user}" if user is not None else f"address {request.client or 'local'}"
        done = self._limiter.admit(client, self._limiter.limits_for(user), blob=blob)
        request.notifyFinish().addBoth(lambda _: done(request.sentLength))

    @app.handle_errors(RegistryError)
    def registry_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, RegistryError)
        if error.status >= 500:
            log.warn(
                "{method} {path}: {code} {message} {detail}",
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("utf-8", "replace"),
                code=error.code.code,
                message=error.message,
                detail=error.detail,
            )
        return render_error(request, error)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(
            request,
            RegistryError(
                NAME_UNKNOWN,
                {"path": request.path.decode("utf-8", "replace")},
                message="not found",
            ),
        )

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(
            request,
            RegistryError(UNSUPPORTED, {"method": request.method.decode("ascii", "replace")}),
        )

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(CancelledError):
            return b""  # the client went away while we waited for the upstream
        log.failure("unexpected error answering {path}", failure, path=request.path)
        return render_error(request, RegistryError(UNKNOWN))


class _Checked(Resource):
    """Refuses a path that is not UTF-8, or a Host header that is no host, with an OCI error.

    Klein would answer a non-UTF-8 path with an HTML body and log a traceback for
    each one, which lets any client fill the log; a Host header is used in
    routes, links and the token realm, so it must be a host before anything reads it.
    """

    isLeaf = True

    def __init__(self, app: IResource, policy: AccessPolicy) -> None:
        super().__init__()
        self._app = app
        self._policy = policy

    def render(self, request: IRequest) -> bytes | int:
        error = self._refusal(request)
        if error is not None:
            return render_error(request, error)
        rendered: bytes | int = self._app.render(request)
        return rendered

    def _refusal(self, request: IRequest) -> RegistryError | None:
        client = client_of(request, self._policy.settings.access.trusted_proxies)
        if isinstance(request, MirrorRequest):
            request.client, request.scheme = client.address, client.scheme
            if client.host is not None:
                if not valid_host(client.host):
                    return RegistryError(
                        UNSUPPORTED,
                        status=400,
                        message="the forwarded host is not a host name or address",
                    )
                request.forwarded_host = client.host
        try:
            self._policy.check_address(client.address)
        except RegistryError as error:
            return error
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return RegistryError(NAME_INVALID, message="the path is not UTF-8")
        client_host = host(request)
        if client_host and not valid_host(client_host):
            return RegistryError(
                UNSUPPORTED,
                status=400,
                message="the Host header is not a host name or address with an optional port",
            )
        return None


def _form(request: MirrorRequest) -> dict[str, str]:
    """A small urlencoded form body (the channel refuses large ones before they are read)."""
    body = request.content.read() if request.content is not None else b""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise RegistryError(UNSUPPORTED, status=400, message="the form is not UTF-8") from None
    return {key: values[0] for key, values in fields.items()}


def _api_headers(request: MirrorRequest) -> None:
    request.responseHeaders.setRawHeaders(*_API_VERSION)
