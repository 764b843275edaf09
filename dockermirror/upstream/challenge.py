"""Parsing of ``WWW-Authenticate`` challenges (RFC 7235), as registries send them.

Parameters come in any order and quoted values may hold commas and escaped
quotes, so a real tokenizer is needed rather than a positional regex.
"""

from __future__ import annotations

import re

import attrs

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@attrs.frozen
class Challenge:
    scheme: str  # lowercased: "bearer" or "basic"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """All challenges in one header value; malformed trailing text is ignored."""
    challenges: list[Challenge] = []
    pos = 0
    while True:
        pos = _skip(header, pos, " \t,")
        scheme = _TOKEN.match(header, pos)
        if scheme is None:
            return challenges
        pos = scheme.end()
        params: dict[str, str] = {}
        while True:
            start = _skip(header, pos, " \t,")
            key = _TOKEN.match(header, start)
            if key is None:
                break
            equals = _skip(header, key.end(), " \t")
            if not header.startswith("=", equals):
                break  # a token without "=" is the next challenge's scheme
            value, pos = _value(header, _skip(header, equals + 1, " \t"))
            params[key.group().lower()] = value
        challenges.append(Challenge(scheme.group().lower(), params))


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _value(text: str, pos: int) -> tuple[str, int]:
    if not text.startswith('"', pos):
        # Lenient: some servers send unquoted URLs, which are no RFC token.
        end = text.find(",", pos)
        end = len(text) if end < 0 else end
        return text[pos:end].strip(), end
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    return "".join(out), pos
