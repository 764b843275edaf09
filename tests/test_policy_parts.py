"""The small parts of the access policy: repository patterns and token buckets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from dockermirror.policy.buckets import TokenBucket
from dockermirror.policy.patterns import Patterns

LIST = ["library/*", "bitnami/*", "!*/miner*"]


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("library/redis", True),
        ("bitnami/postgresql", True),
        ("library/miner", False),
        ("bitnami/minerd", False),
        ("someone/redis", False),
        ("library/a/b", True),
        ("library/a/miner-x", False),
        ("Library/redis", False),
    ],
)
def test_patterns_last_match_decides(name: str, matches: bool) -> None:
    assert Patterns.parse(LIST).matches(name) is matches


def test_empty_patterns_match_nothing_and_a_bare_bang_is_refused() -> None:
    assert not Patterns.parse([]).matches("library/redis")
    assert Patterns.parse(["*"]).matches("a/b/c")
    with pytest.raises(ValueError):
        Patterns.parse(["!"])


@given(st.text(max_size=40))
def test_a_negated_pattern_after_its_positive_always_wins(name: str) -> None:
    assert not Patterns.parse(["*", "!*"]).matches(name)
    assert Patterns.parse(["!*", "*"]).matches(name)


def test_bucket_rate_and_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=2, burst=4)
    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(100)
    assert bucket.full


def test_an_amount_over_the_burst_passes_once_the_bucket_is_full() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=10, burst=100)
    assert bucket.take(1000) == 0.0  # a big blob is not refused for ever
    assert bucket.take(1) == pytest.approx(90.1)  # ...but what comes after waits for it
    clock.advance(90.1)
    assert bucket.take(1) == 0.0


def test_spending_into_debt() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=1, burst=1)
    bucket.spend(5)
    assert bucket.wait() == pytest.approx(5)
    clock.advance(5)
    assert bucket.wait() == 0.0
