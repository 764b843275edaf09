"""Parsing a client's ``Range`` header (RFC 9110) into the range the domain resolves."""

from __future__ import annotations

import re

from dockermirror.registry.model import RangeRequest

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")
# Past any blob's size; longer numbers are read as this (int() refuses over 4300 digits).
_BEYOND = 10**18


def parse_range(value: str | None) -> RangeRequest | None:
    """One byte range, or None for the whole blob.

    Several ranges, or a header this does not understand, give the whole blob,
    as RFC 9110 allows.
    """
    if value is None:
        return None
    match = _RANGE.match(value.strip())
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:
        return RangeRequest(suffix=_number(match[2]))
    return RangeRequest(first=_number(match[1]), last=_number(match[2]) if match[2] else None)


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _BEYOND
