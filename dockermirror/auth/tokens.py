"""The mirror's own tokens (``/v2/auth``): signed, short-lived, naming a user and what it may pull.

Tokens are HS256 JWTs.  The key comes from the operator's file or is made
once and kept (see :mod:`dockermirror.auth.keys`), so tokens outlive a restart
and work on every node that shares the key.  The policy decides what a token
grants; this module only signs and checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs
import jwt
from cryptography.fernet import Fernet, InvalidToken
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


@attrs.frozen
class Grant:
    """What a verified token says: who, and which repositories (``docker.io/library/redis``)."""

    user: str | None
    repositories: frozenset[str]
    # A client's own upstream account, carried encrypted (see TokenIssuer.issue).
    upstream: tuple[str, str] | None = attrs.field(default=None, repr=False)


class TokenIssuer:
    def __init__(self, clock: IReactorTime, key: bytes, lifetime: int = 300) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._key = key
        # A token is signed, not secret: an account it carries is encrypted with a key of
        # its own, derived from the signing key (so every node that checks tokens can read it).
        self._sealer = Fernet(
            base64.urlsafe_b64encode(hashlib.sha256(b"upstream\0" + key).digest())
        )

    def issue(
        self,
        user: str | None,
        access: Iterable[tuple[str, bool]],
        upstream: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """A token response for ``user``: ``access`` pairs a repository with whether it is granted.

        A repository asked for and not granted is listed with no actions, as
        registries do, so that a client sees what it asked for.
        """
        now = int(self._clock.seconds())
        claims = {
            "iss": ISSUER,
            "aud": SERVICE,
            "sub": user or "",
            "iat": now,
            "nbf": now,
            "exp": now + self._lifetime,
            "jti": secrets.token_hex(8),
            "access": [
                {"type": "repository", "name": name, "actions": ["pull"] if granted else []}
                for name, granted in access
            ],
        }
        if upstream is not None:
            claims["upstream"] = self._sealer.encrypt(json.dumps(upstream).encode()).decode()
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self._lifetime,
            "issued_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        }

    def verify(self, token: str) -> Grant | None:
        """What a token this mirror issued and that is still valid grants, else None."""
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
        try:
            granted = frozenset(
                str(entry["name"])
                for entry in claims.get("access") or ()
                if entry.get("type") == "repository" and "pull" in (entry.get("actions") or ())
            )
        except (TypeError, AttributeError, KeyError):
            return None
        upstream = self._unseal(claims.get("upstream"))
        return Grant(str(claims.get("sub") or "") or None, granted, upstream)

    def _unseal(self, sealed: object) -> tuple[str, str] | None:
        if not isinstance(sealed, str):
            return None
        try:
            user, password = json.loads(self._sealer.decrypt(sealed.encode()))
        except (InvalidToken, ValueError, TypeError):
            return None
        return str(user), str(password)
