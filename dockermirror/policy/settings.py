"""The access policy's configuration: ``[auth]``, ``[users.NAME]``, ``[access]`` and ``[limits]``.

Frozen values, validated here with the key at fault named in a ConfigError, as
:mod:`dockermirror.config` does for the rest of the file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs

from dockermirror.configvalues import (
    ConfigError,
    check_keys,
    is_number,
    network,
    parse_size,
    patterns,
    string_list,
    subtable,
)
from dockermirror.policy.patterns import EVERYTHING, Patterns

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class Limits:
    """What one client (a user, or an address when anonymous) may use; None: no limit."""

    requests_per_second: float | None = None
    request_burst: float = 50.0
    bytes_per_second: float | None = None
    concurrent_blobs: int | None = None

    @property
    def unlimited(self) -> bool:
        return (self.requests_per_second, self.bytes_per_second, self.concurrent_blobs) == (
            None,
            None,
            None,
        )


@attrs.frozen
class User:
    # What the user may pull (``REGISTRY/REPOSITORY`` patterns); None: ``auth.user_pull``.
    pull: Patterns | None = None
    # The user's own limits; None: ``[limits]``.
    limits: Limits | None = None


@attrs.frozen
class AuthSettings:
    # An htpasswd file of bcrypt entries: client authentication is on when it is set.
    htpasswd: str | None = None
    # The key that signs tokens; None: made once in the state directory.
    token_key_file: str | None = None
    token_lifetime: int = 300
    # May a client without credentials pull at all, and what.
    anonymous: bool = True
    anonymous_pull: Patterns = EVERYTHING
    # What a user with no ``pull`` of their own may pull.
    user_pull: Patterns = EVERYTHING

    @property
    def enabled(self) -> bool:
        return self.htpasswd is not None


@attrs.frozen
class AccessSettings:
    # Client networks let in (empty: all) and kept out (checked first).
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    # Proxies whose X-Forwarded-For, X-Forwarded-Proto and Forwarded headers are believed.
    trusted_proxies: tuple[Network, ...] = ()


@attrs.frozen
class PolicySettings:
    auth: AuthSettings = AuthSettings()
    access: AccessSettings = AccessSettings()
    limits: Limits = Limits()
    users: Mapping[str, User] = attrs.field(factory=dict)


POLICY_TABLES = ("auth", "access", "limits", "users")


def build_policy(data: Mapping[str, Any]) -> PolicySettings:
    """The policy tables of a parsed configuration file."""
    return PolicySettings(
        auth=_auth(subtable(data, "auth")),
        access=_access(subtable(data, "access")),
        limits=_limits(subtable(data, "limits"), "limits."),
        users={name: _user(name, value) for name, value in subtable(data, "users").items()},
    )


def _auth(values: Mapping[str, Any]) -> AuthSettings:
    check_keys(values, "auth.", {f.name for f in attrs.fields(AuthSettings)})
    result: dict[str, Any] = {}
    for name, value in values.items():
        key = f"auth.{name}"
        if name in ("htpasswd", "token_key_file"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key}: must be a file name")
        elif name == "anonymous":
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: must be true or false")
        elif name == "token_lifetime":
            if isinstance(value, bool) or not isinstance(value, int) or not 30 <= value <= 86400:
                raise ConfigError(f"{key}: must be a whole number of seconds, 30 to 86400")
        else:
            value = patterns(value, key)
        result[name] = value
    return AuthSettings(**result)


def _access(values: Mapping[str, Any]) -> AccessSettings:
    check_keys(values, "access.", {f.name for f in attrs.fields(AccessSettings)})
    return AccessSettings(
        **{
            name: tuple(network(v, f"access.{name}") for v in string_list(values, name, "access."))
            for name in values
        }
    )


def _limits(values: Mapping[str, Any], prefix: str) -> Limits:
    check_keys(values, prefix, {f.name for f in attrs.fields(Limits)})
    result: dict[str, Any] = {}
    for name, value in values.items():
        key = prefix + name
        if name == "bytes_per_second":
            value = float(parse_size(value, key))
        elif not is_number(value) or value <= 0:
            raise ConfigError(f"{key}: must be a positive number")
        elif name == "concurrent_blobs" and not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number")
        result[name] = value if name == "concurrent_blobs" else float(value)
    return Limits(**result)


def _user(name: str, values: object) -> User:
    prefix = f"users.{name}."
    if not isinstance(values, Mapping):
        raise ConfigError(f"users.{name}: must be a table")
    check_keys(values, prefix, {"pull", "unlimited", *(f.name for f in attrs.fields(Limits))})
    pull = patterns(values["pull"], prefix + "pull") if "pull" in values else None
    limit_values = {k: v for k, v in values.items() if k not in ("pull", "unlimited")}
    unlimited = values.get("unlimited", False)
    if not isinstance(unlimited, bool):
        raise ConfigError(f"{prefix}unlimited: must be true or false")
    if unlimited and limit_values:
        raise ConfigError(f"users.{name}: unlimited and limits exclude each other")
    limits = Limits() if unlimited else (_limits(limit_values, prefix) if limit_values else None)
    return User(pull=pull, limits=limits)
