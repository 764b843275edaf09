"""What a client is told when the upstream fails: one OCI error per kind of upstream failure."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from dockermirror.errors import (
    BLOB_UNKNOWN,
    CODES,
    DENIED,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    UNKNOWN,
    ErrorCode,
    RegistryError,
)

if TYPE_CHECKING:
    from dockermirror.upstream.response import UpstreamResponse

_NOT_FOUND_CODES = {MANIFEST_UNKNOWN.code, BLOB_UNKNOWN.code, NAME_UNKNOWN.code}
_MAX_ERROR_BYTES = 64 * 1024


def upstream_error(registry: str, status: int, problem: str) -> RegistryError:
    """The upstream could not be used: 502 when it failed, 504 when it was too slow."""
    # Logged once, with the request it failed, where the web layer renders it.
    return RegistryError(
        UNAVAILABLE,
        {"registry": registry, "problem": problem},
        status=status,
        message=f"the upstream registry failed: {problem}",
    )


async def failure_of(response: UpstreamResponse, name: str, not_found: ErrorCode) -> RegistryError:
    """The OCI error to give the client for an upstream answer that is not a success.

    ``not_found`` is the code for a 404 whose body names no better one.
    """
    upstream_code, upstream_message = None, None
    try:
        upstream_code, upstream_message = _first_error(await response.collect(_MAX_ERROR_BYTES))
    except Exception:  # an unreadable error body is no reason to fail worse
        pass
    detail = {
        "registry": response.registry,
        "name": name,
        "upstream_status": response.code,
        "upstream_message": upstream_message,
    }
    status = response.code
    if status == 404:
        code = CODES[upstream_code] if upstream_code in _NOT_FOUND_CODES else not_found
        return RegistryError(code, detail)
    if status in (401, 403):
        return RegistryError(DENIED, detail)
    if status == 429:
        retry = response.header("retry-after") or "60"
        return RegistryError(TOOMANYREQUESTS, detail, retry_after=retry)
    if 400 <= status < 500 and upstream_code in CODES:
        return RegistryError(CODES[upstream_code], detail, status=status)
    if status >= 500:
        return RegistryError(
            UNAVAILABLE, detail, status=502, message=f"the upstream registry answered {status}"
        )
    return RegistryError(
        UNKNOWN, detail, status=502, message=f"unexpected upstream answer {status}"
    )


def _first_error(body: bytes) -> tuple[str | None, str | None]:
    try:
        error = json.loads(body)["errors"][0]
        return str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
