"""``dockermirror check-config``, and :mod:`dockermirror.validation` under it.

A valid file gets one line, ``FILE: ok``; a file with problems gets one line
for each independent problem (the values, the endpoints, the files named, the
prefetch images), and exit 1.  Nothing is written: not even the token key the
mirror would make.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dockermirror import cli
from dockermirror.cli.htpasswd import hash_password
from dockermirror.validation import Overrides, check_file, validate
from tests.support.clients import require
from tests.support.pki import make_pki


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """An htpasswd file and a token key the mirror accepts."""
    (tmp_path / "htpasswd").write_text(f"alice:{hash_password('secret', 4)}\n")
    key = tmp_path / "token.key"
    key.write_text("k" * 64 + "\n")
    key.chmod(0o600)
    return tmp_path


def valid(files: Path) -> str:
    return f"""
[server]
ports = ["tcp:0:interface=127.0.0.1", "unix:{files}/mirror.sock"]
metrics_ports = ["tcp:0:interface=127.0.0.1"]

[registries."registry.internal.example"]
url = "https://registry.internal.example"

[routes]
"mirror.example" = "docker.io"
"internal.example" = "registry.internal.example"

[cache]
max_size = "10GiB"

[auth]
htpasswd = "{files}/htpasswd"
token_key_file = "{files}/token.key"

[[prefetch]]
images = ["redis:7", "registry.internal.example/team/app:1"]
"""


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = cli.main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_valid_file_is_ok(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text(valid(files))
    assert check(capsys, config) == (0, f"{config}: ok\n", "")


def test_the_console_script(files: Path, tmp_path: Path) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text(valid(files) + "\n[upstream]\nconnect_timeout = -1\n")
    result = subprocess.run(
        [require("dockermirror"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout == f"{config}: upstream.connect_timeout: must be a positive number\n"


def test_every_independent_problem_is_named(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (files / "htpasswd").write_text("alice:$apr1$abc$def\n")
    (files / "token.key").chmod(0o644)
    config = tmp_path / "mirror.toml"
    config.write_text(
        f"""
colour = "blue"

[server]
ports = ["tcp:notaport", "tcp:0", "ssl:0:privateKey={files}/missing.pem"]
metrics_ports = ["frob:1"]

[cache]
max_size = "lots"

[upstream]
idle_timeout = 0

[auth]
htpasswd = "{files}/htpasswd"
token_key_file = "{files}/token.key"

[[prefetch]]
images = ["redis:7", "quay.example/o/i", "Not An Image"]

[[prefetch]]
images = ["alpine"]
interval = 5
"""
    )
    code, out, err = check(capsys, config)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{config}: colour: unknown key (expected one of [")
    assert lines[1:] == [
        f"{config}: cache.max_size: 'lots' is not a size (e.g. 50GiB, 500MB or a byte count)",
        f"{config}: upstream.idle_timeout: must be a positive number",
        f"{config}: prefetch[0].images: 'quay.example/o/i' names registry 'quay.example',"
        " which is not configured",
        f"{config}: prefetch[0].images: 'Not An Image' is not an image reference (invalid"
        " repository name)",
        f"{config}: prefetch[1].interval: must be a number of seconds, 60 or more",
        f"{config}: port 'tcp:notaport': invalid literal for int() with base 10: 'notaport'",
        f"{config}: port 'ssl:0:privateKey={files}/missing.pem': [Errno 2] No such file or"
        f" directory: '{files}/missing.pem'",
        f"{config}: metrics port 'frob:1': Unknown endpoint type: 'frob'",
        f"{config}: auth.htpasswd: {files}/htpasswd:1: user 'alice' has no bcrypt hash (write it"
        " with htpasswd -B)",
        f"{config}: auth.token_key_file: {files}/token.key: the token key must be readable by its"
        " owner only (chmod 600)",
    ]


def test_a_problem_with_the_registries_hides_only_the_prefetch_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text(
        """
[routes]
"a.example" = "nowhere"

[cache]
enabled = "yes"

[[prefetch]]
images = ["Not An Image"]
"""
    )
    code, out, _ = check(capsys, config)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{config}: routes.a.example: 'nowhere' is neither a registry")
    assert lines[1] == f"{config}: cache.enabled: must be true or false"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[cache\n", "invalid TOML: "),
        (None, "cannot read: No such file or directory"),
    ],
)
def test_a_file_that_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, problem: str
) -> None:
    config = tmp_path / "mirror.toml"
    if text is not None:
        config.write_text(text)
    code, out, err = check(capsys, config)
    assert (code, err) == (1, "")
    assert out.startswith(f"{config}: {problem}")
    assert out.count("\n") == 1


def test_a_token_key_the_mirror_would_make_is_ok_and_not_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    key = tmp_path / "state" / "keys" / "token.key"
    config.write_text(f'[auth]\ntoken_key_file = "{key}"\n')
    assert check(capsys, config)[0] == 0
    assert not (tmp_path / "state").exists()
    # Where no directory can be made (a file is in the way), it is a problem.
    (tmp_path / "state").write_text("a file")
    code, out, _ = check(capsys, config)
    assert code == 1
    assert out == (
        f"{config}: auth.token_key_file: {key}: cannot create the token key: {tmp_path}/state"
        " is not a writable directory\n"
    )


def test_a_systemd_endpoint_is_not_checked_outside_systemd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    config = tmp_path / "mirror.toml"
    config.write_text('[server]\nports = ["systemd:domain=INET:index=0"]\n')
    assert check(capsys, config)[0] == 0
    monkeypatch.setenv("LISTEN_FDS", "0")
    code, out, _ = check(capsys, config)
    assert code == 1
    assert "port 'systemd:domain=INET:index=0': no such socket was passed" in out


def test_validate_takes_the_command_lines_overrides(tmp_path: Path) -> None:
    """What twistd's options set is checked with the file, as tap.py builds it."""
    validated = validate(
        {"cache": {"max_size": "1GiB"}},
        Overrides(
            ports=("tcp:x",),
            routes=(("a.example", "nowhere"),),
            cache={"max_size": "lots"},
            metrics_ports=("tcp:0",),
        ),
    )
    assert validated.config is None
    assert validated.problems[0].startswith("routes.a.example: 'nowhere' is neither")
    assert validated.problems[1:] == (
        "cache.max_size: 'lots' is not a size (e.g. 50GiB, 500MB or a byte count)",
        "port 'tcp:x': invalid literal for int() with base 10: 'x'",
    )
    good = validate({}, Overrides(ports=("tcp:0",), metrics_ports=("tcp:0",)))
    assert good.problems == ()
    assert good.config is not None
    assert good.config.ports == ("tcp:0",)
    assert good.config.metrics_ports == ("tcp:0",)


def test_check_file_reads_nothing_it_should_not_write(files: Path, tmp_path: Path) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text(valid(files))
    before = sorted(os.listdir(files))
    assert check_file(str(config)) == []
    assert sorted(os.listdir(files)) == before


def test_what_would_stop_the_mirror_with_a_traceback_is_one_line(tmp_path: Path) -> None:
    """A TLS key of another certificate, a port past 65535, a port twice, nan, not UTF-8."""
    first, second = make_pki(tmp_path / "a", ["127.0.0.1"]), make_pki(tmp_path / "b", ["::1"])
    mismatched = f"ssl:0:privateKey={second.key}:certKey={first.cert}"
    problems = validate(
        {
            "server": {"ports": [mismatched, "tcp:99999", "tcp:5000", "tcp:5000"]},
            "upstream": {"idle_timeout": float("nan")},
            "cache": {"tag_ttl": float("inf")},
        }
    ).problems
    assert any(p.startswith(f"port {mismatched!r}: ") for p in problems), problems
    assert "port 'tcp:99999': 99999 is not a port (0 to 65535)" in problems
    assert "port 'tcp:5000': listed twice" in problems
    assert "upstream.idle_timeout: must be a positive number" in problems
    assert "cache.tag_ttl: must be a number of seconds, 0 or more" in problems
    garbage = tmp_path / "latin1.toml"
    garbage.write_bytes(b"# caf\xe9\n")
    assert check_file(str(garbage)) == [f"{garbage}: invalid TOML: the file is not UTF-8"]


def test_prefetch_without_a_cache_is_a_problem() -> None:
    problems = validate({"cache": {"enabled": False}, "prefetch": [{"images": ["redis"]}]})
    assert problems.problems == (
        "prefetch: the cache is off (cache.enabled = false): nothing to keep warm",
    )
