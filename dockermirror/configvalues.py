"""Validating the values of a parsed TOML configuration, with the key at fault named.

Shared by :mod:`dockermirror.config` and the access policy's settings.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

from dockermirror.policy.patterns import Patterns


class ConfigError(Exception):
    """A configuration problem, worded as one line naming the key."""


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_size(value: object, key: str) -> int:
    """A byte count: an integer, or a string like "50GiB" or "500 MB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{key}: {value!r} is not a size (e.g. 50GiB, 500MB or a byte count)")
    return int(float(match[1]) * _UNITS[(match[2] or "").lower()])


def network(value: object, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(string(value, key), strict=False)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not a network (e.g. 10.0.0.0/8)") from None


def check_keys(table: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key (expected one of {sorted(allowed)})")


def subtable(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table")
    return value


def string_list(data: Mapping[str, Any], key: str, prefix: str) -> list[str]:
    """``data[key]``, a list of non-empty strings (empty when absent)."""
    return [string(v, prefix + key) for v in any_list(data, key, prefix + key)]


def any_list(data: Mapping[str, Any], key: str, name: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be a list")
    return value


def is_number(value: object) -> bool:
    """An int or float that is finite (TOML allows nan and inf; no setting means them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string")
    return value


def boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false")
    return value


def patterns(value: object, key: str) -> Patterns:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{key}: must be a list of patterns such as "library/*"')
    try:
        return Patterns.parse(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
