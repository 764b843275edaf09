"""The token signing key: made once with mode 0600, then read; a loose or short key is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockermirror.auth.keys import TokenKeyError, load_or_create_key


def test_a_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token.key"
    key = load_or_create_key(path)
    assert len(key) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key


def test_an_operator_key_is_used_as_written(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    path.write_text("k" * 40 + "\n")
    path.chmod(0o600)
    assert load_or_create_key(path) == b"k" * 40


@pytest.mark.parametrize(
    ("text", "mode", "problem"),
    [("k" * 40, 0o644, "owner only"), ("short", 0o600, "at least 32")],
)
def test_a_key_others_can_read_or_a_short_one_is_refused(
    tmp_path: Path, text: str, mode: int, problem: str
) -> None:
    path = tmp_path / "token.key"
    path.write_text(text)
    path.chmod(mode)
    with pytest.raises(TokenKeyError, match=problem):
        load_or_create_key(path)
