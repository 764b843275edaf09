"""The mirror's HTTP surface: the usage page, the registry API base, its token endpoint and pulls.

A pull reads top to bottom in :meth:`MirrorApp.api`: parse the path, route it to
an upstream, then let the :class:`~dockermirror.pull.Puller` answer it.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from dockermirror.config import MirrorConfig, strip_port
from dockermirror.errors import (
    NAME_UNKNOWN,
    UNAUTHORIZED,
    UNKNOWN,
    UNSUPPORTED,
    RegistryError,
    render_error,
)
from dockermirror.homepage import choose_language, render_homepage
from dockermirror.issuer import SERVICE, TokenIssuer
from dockermirror.pull import Puller, query_values
from dockermirror.reference import Endpoint, parse_api_path, validate_digest, validate_reference
from dockermirror.routing import route_request
from dockermirror.site import note_route

log = Logger()

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_API_VERSION = (b"docker-distribution-api-version", [b"registry/2.0"])


class MirrorApp:
    app = Klein()

    def __init__(self, config: MirrorConfig, puller: Puller, issuer: TokenIssuer) -> None:
        self._config = config
        self._puller = puller
        self._issuer = issuer

    def resource(self) -> IResource:
        resource: IResource = self.app.resource()
        return resource

    @app.route("/", methods=["GET", "HEAD"])
    def home(self, request: Request) -> bytes:
        host = _host(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"vary", b"Accept-Language, Host")
        return render_homepage(
            self._config,
            self._config.registry_for_host(strip_port(host.lower())),
            host,
            "https" if request.isSecure() else "http",
            choose_language(_header(request, b"accept-language")),
        )

    @app.route("/v2", methods=["GET", "HEAD"])
    @app.route("/v2/", methods=["GET", "HEAD"])
    def base(self, request: Request) -> bytes:
        _api_headers(request)
        self._check_token(request)
        request.setHeader(b"content-type", b"application/json")
        return b"{}"

    @app.route("/v2/auth", methods=["GET"])
    def auth(self, request: Request) -> bytes:
        _api_headers(request)
        host, ns = _host(request), _ns(request)
        # Clients send one scope per parameter; some put several in one, space-separated.
        scopes = [s for v in query_values(request, "scope") for s in v.split(" ") if s]
        token = self._issuer.issue(
            scopes, lambda name: route_request(self._config, host, name, ns).label
        )
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(token).encode()

    @app.route("/v2/<path:rest>", methods=ALL_METHODS)
    async def api(self, request: Request, rest: str) -> bytes | IResource:
        _api_headers(request)
        if request.method not in (b"GET", b"HEAD"):
            raise RegistryError(
                UNSUPPORTED, message="this mirror is read-only: push and delete are unsupported"
            )
        path = parse_api_path(rest)
        if path.endpoint in (Endpoint.UPLOAD, Endpoint.CATALOG):
            raise RegistryError(UNSUPPORTED, {"endpoint": path.endpoint.value})
        self._check_token(request)
        target = route_request(self._config, _host(request), path.name, _ns(request))
        note_route(request, target.label)
        if path.endpoint is Endpoint.MANIFEST:
            return await self._puller.manifest(request, target, validate_reference(path.reference))
        if path.endpoint is Endpoint.BLOB:
            return await self._puller.blob(request, target, validate_digest(path.reference))
        if path.endpoint is Endpoint.REFERRERS:
            return await self._puller.referrers(request, target, validate_digest(path.reference))
        return await self._puller.tags(request, target)

    def _check_token(self, request: Request) -> None:
        """A Bearer token, if sent, must be one of ours and current (the mirror asks none yet)."""
        authorization = _header(request, b"authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and self._issuer.verify(token.strip()) is None:
            realm = f"{'https' if request.isSecure() else 'http'}://{_host(request)}/v2/auth"
            challenge = f'Bearer realm="{realm}",service="{SERVICE}"'.encode()
            raise RegistryError(
                UNAUTHORIZED,
                message="invalid or expired token",
                headers=[(b"www-authenticate", challenge)],
            )

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


def _api_headers(request: Request) -> None:
    request.responseHeaders.setRawHeaders(*_API_VERSION)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _host(request: Request) -> str:
    return _header(request, b"host") or ""


def _ns(request: Request) -> str | None:
    values = query_values(request, "ns")
    return values[0] if values else None
