"""The mirror's own token endpoint (``/v2/auth``): signed, short-lived pull tokens.

The mirror asks no credentials yet, so every caller gets an anonymous token
granting ``pull`` on the repositories it asked for.  Tokens are HS256 JWTs
signed with a key that lives as long as the process.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import jwt
from twisted.internet.interfaces import IReactorTime

SERVICE = "dockermirror"
ISSUER = "dockermirror"


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:library/redis:pull,push`` -> (type, name, actions)."""
    kind, _, rest = scope.partition(":")
    name, sep, actions = rest.rpartition(":")
    if not kind or not sep or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


class TokenIssuer:
    def __init__(self, clock: IReactorTime, lifetime: int = 300, key: bytes | None = None) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._key = key or secrets.token_bytes(32)

    def issue(self, scopes: Iterable[str], complete: Callable[[str], str]) -> dict[str, Any]:
        """A token response for ``scopes``; ``complete`` maps a client's name to the upstream's."""
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            _, name, actions = parsed
            # A mirror is read-only: pull is all it can grant.
            granted = [a for a in actions if a == "pull"]
            access.append({"type": "repository", "name": complete(name), "actions": granted})
        now = int(self._clock.seconds())
        claims = {
            "iss": ISSUER,
            "aud": SERVICE,
            "sub": "",
            "iat": now,
            "nbf": now,
            "exp": now + self._lifetime,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self._lifetime,
            "issued_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        }

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this mirror issued and that is still valid, else None."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=SERVICE,
                issuer=ISSUER,
                # Expiry is checked against the injected clock below, not PyJWT's wall clock.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError:
            return None
        now = self._clock.seconds()
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            return None
        return claims
