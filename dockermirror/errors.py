"""The OCI error codes the mirror speaks and the one exception type that carries them.

Codes and statuses follow the distribution-spec "Error Codes" table, plus the
UNAVAILABLE, TOOMANYREQUESTS and RANGE_INVALID codes that distribution registers.  Every layer
raises :class:`RegistryError`; only :mod:`dockermirror.web.errors` renders it.
"""

from __future__ import annotations

import json

import attrs


@attrs.frozen
class ErrorCode:
    code: str
    status: int
    message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = ErrorCode("SIZE_INVALID", 400, "provided length did not match content length")
# Registered by distribution: a Range that no byte of the blob satisfies.
RANGE_INVALID = ErrorCode("RANGE_INVALID", 416, "invalid content range")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED = ErrorCode("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = ErrorCode("UNSUPPORTED", 405, "the operation is unsupported")
# The mirror's own, for requests over its limits (413; 414 and 431 by status); no upstream
# speaks it, so it is not in CODES.
REQUEST_TOO_LARGE = ErrorCode("REQUEST_TOO_LARGE", 413, "request too large")
TOOMANYREQUESTS = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "service unavailable")
UNKNOWN = ErrorCode("UNKNOWN", 500, "unknown error")

CODES: dict[str, ErrorCode] = {
    c.code: c
    for c in (
        BLOB_UNKNOWN,
        DIGEST_INVALID,
        MANIFEST_INVALID,
        MANIFEST_UNKNOWN,
        NAME_INVALID,
        NAME_UNKNOWN,
        SIZE_INVALID,
        RANGE_INVALID,
        UNAUTHORIZED,
        DENIED,
        UNSUPPORTED,
        TOOMANYREQUESTS,
        UNAVAILABLE,
        UNKNOWN,
    )
}


class RegistryError(Exception):
    """An error the client sees as an OCI error body.

    ``status`` overrides the code's usual status where the spec's code fits but
    the cause is different (an unreachable upstream is UNAVAILABLE with 502).
    """

    def __init__(
        self,
        code: ErrorCode,
        detail: object = None,
        *,
        status: int | None = None,
        message: str | None = None,
        retry_after: str | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(code.code, detail)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else code.status
        self.message = message if message is not None else code.message
        # Seconds (or an HTTP date) after which a TOOMANYREQUESTS client may try again.
        self.retry_after = retry_after
        # The token scope an UNAUTHORIZED client should ask the mirror for.
        self.scope = scope

    def __str__(self) -> str:
        return f"{self.code.code}: {self.message}"

    def body(self) -> bytes:
        error = {"code": self.code.code, "message": self.message, "detail": self.detail}
        return json.dumps({"errors": [error]}).encode()
