"""Repository name patterns: globs, in order, the last that matches decides; ``!`` negates.

``["library/*", "bitnami/*", "!*/miner*"]`` matches every official and Bitnami
image except those whose name starts with "miner".  ``*`` matches any run of
characters, slashes included (``*/miner*`` catches ``a/b/miner``), ``?`` one
character, ``[...]`` a set, as in :mod:`fnmatch`, always case-sensitive as
repository names are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate

import attrs


@attrs.frozen
class Patterns:
    rules: tuple[tuple[bool, re.Pattern[str]], ...]
    source: tuple[str, ...]

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> Patterns:
        texts = tuple(patterns)
        rules = []
        for text in texts:
            negated = text.startswith("!")
            glob = text[1:] if negated else text
            if not glob:
                raise ValueError(f"{text!r} is not a pattern")
            rules.append((not negated, re.compile(translate(glob))))
        return cls(tuple(rules), texts)

    def matches(self, name: str) -> bool:
        verdict = False
        for positive, pattern in self.rules:
            if pattern.match(name):
                verdict = positive
        return verdict


EVERYTHING = Patterns.parse(["*"])
