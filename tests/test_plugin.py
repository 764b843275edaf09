"""Packaging and the twistd command line: plugin discovery, option checks, start-up failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject

from dockermirror import service as service_module
from dockermirror.service import CacheService
from dockermirror.storage.workers import InlineWorker
from dockermirror.tap import Options, StartupError, makeService
from dockermirror.upstream.pools import UpstreamPools
from tests.support.pki import make_pki
from tests.support.processes import free_port

ROOT = Path(__file__).parent.parent


def twistd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_plugin_is_discoverable() -> None:
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "dockermirror" in makers
    assert verifyObject(IServiceMaker, makers["dockermirror"])


def test_no_init_under_twisted() -> None:
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


def test_wheel_contains_the_plugin(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("dockermirror-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/dockermirror_plugin.py" in names
    assert "dockermirror/web/templates/index.html" in names
    # Every layer's package, from a clean tree: setup.cfg lists packages by hand.
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "dockermirror").rglob("*.py")}
    assert sources <= set(names), sources - set(names)
    assert not any(n.startswith("twisted/") and n.endswith("__init__.py") for n in names)


def test_options_defaults_and_repeats() -> None:
    options = Options()
    options.parseOptions([])
    assert options["mirror"].ports == ("tcp:5000",)
    assert options["mirror"].routes == {"*": "docker.io"}
    options = Options()
    options.parseOptions(
        [
            "--port",
            "tcp:5001",
            "-p",
            "unix:/tmp/dm.sock",
            "--route",
            "a.example.com=ghcr.io",
            "--route",
            "*=quay.io",
            "--registry",
            "docker.io=http://127.0.0.1:1",
        ]
    )
    config = options["mirror"]
    assert config.ports == ("tcp:5001", "unix:/tmp/dm.sock")
    assert config.routes == {"a.example.com": "ghcr.io", "*": "quay.io"}
    assert config.registries["docker.io"].url.to_text() == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--route", "nothing"], "--route 'nothing': expected KEY=VALUE"),
        (["--route", "*=elsewhere"], "routes.*: 'elsewhere' is neither"),
        (["--port", "bogus:1"], "port 'bogus:1'"),
        (["--config", "/nonexistent.toml"], "/nonexistent.toml: cannot read"),
    ],
)
def test_option_errors(argv: list[str], message: str) -> None:
    with pytest.raises(StartupError) as error:
        Options().parseOptions(argv)
    assert message in str(error.value)


def test_make_service_listens_on_every_port_and_closes_pools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A memory reactor runs no threads: the storage's work runs inline.
    monkeypatch.setattr(service_module, "ThreadWorker", lambda reactor, name: InlineWorker())
    options = Options()
    ports = ["--port", "tcp:0", "--port", "tcp:0:interface=127.0.0.1"]
    options.parseOptions([*ports, "--cache-dir", str(tmp_path / "cache")])
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)
    assert isinstance(service, MultiService)
    service.startService()
    assert len(reactor.tcpServers) == 2
    pools = [s for s in service if isinstance(s, UpstreamPools)]
    assert len(pools) == 1
    assert set(pools[0].pools) >= {"docker.io", "ghcr.io", "quay.io"}
    # The cache starts before the listeners, so its storage opens before the first request.
    kinds = [type(s) for s in service]
    assert kinds.index(CacheService) < len(kinds) - 2
    assert (tmp_path / "cache" / "index.sqlite").exists()
    service.stopService()


def test_no_cache_means_no_cache_service() -> None:
    options = Options()
    options.parseOptions(["--no-cache"])
    assert not options["mirror"].cache.enabled
    service = makeService(options, reactor=MemoryReactorClock())
    assert not [s for s in service if isinstance(s, CacheService)]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[routes]\n"*" = "nowhere.example"\n', "routes.*: 'nowhere.example' is neither"),
        ("[cache]\nsize = 1\n", "cache.size"),
        (
            '[registries."x.test"]\nurl = "http://x.test"\nusername = "u"\n'
            'password_file = "/nonexistent/secret"\n',
            "/nonexistent/secret",
        ),
    ],
)
def test_bad_config_exits_before_listening_with_one_line(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = twistd("dockermirror", "--config", str(config))
    assert result.returncode != 0
    # One line: no traceback, and not twistd's usage text before it.
    assert (result.stdout + result.stderr).strip().splitlines() == [
        (result.stdout + result.stderr).strip()
    ]
    assert message in result.stderr and result.stderr.startswith("dockermirror: ")


def test_port_in_use_is_a_startup_failure() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = twistd("dockermirror", "--port", f"tcp:{port}:interface=127.0.0.1")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        f"dockermirror: cannot listen on tcp:{port}:interface=127.0.0.1: Address already" in output
    )
    assert "Traceback" not in output


def test_a_systemd_port_without_systemd_is_a_startup_failure() -> None:
    """Run by hand, the unit's command line has no socket to adopt: one line, no traceback."""
    result = twistd("dockermirror", "--port", "systemd:domain=INET:index=0")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "dockermirror: cannot listen on systemd:domain=INET:index=0: systemd passed" in output
    assert "Traceback" not in output


@contextmanager
def running_twistd(*args: str, port: int, cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """twistd in the background, once it answers /v2/ on ``port``; stopped afterwards."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        # The default cache directory is the user's; keep the tests' out of it.
        env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cwd / ".cache")},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, f"twistd did not listen on port {port}"
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def test_twistd_serves_docker_hub_by_default(tmp_path: Path) -> None:
    """The README's first command: nothing but a port (5000 by default, see the options
    test; no test binds a fixed port) and the mirror serves Docker Hub."""
    port = free_port()
    with running_twistd(
        "dockermirror", "--port", f"tcp:{port}:interface=127.0.0.1", port=port, cwd=tmp_path
    ):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as response:
            assert (response.status, json.loads(response.read())) == (200, {})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            assert b"registry-1.docker.io" in response.read()


def test_json_logger_for_twistd() -> None:
    """`twistd --logger=dockermirror.logs.json_observer` writes one JSON event per line."""
    port = free_port()
    logger = "--logger=dockermirror.logs.json_observer"
    listen = ["--port", f"tcp:{port}:interface=127.0.0.1", "--no-cache"]
    with running_twistd(logger, "dockermirror", *listen, port=port) as process:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    # Each line JSON as it stands (no record separator), as log shippers read it.
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    access = [e for e in events if e.get("log_namespace") == "dockermirror.access"]
    assert access and access[0]["path"] == "/v2/" and access[0]["status"] == 200
    # The fields README.rst documents for the access log, each one an event key.
    documented = {
        "log_time",
        "client",
        "user",
        "method",
        "path",
        "route",
        "status",
        "bytes",
        "pid",
    }
    assert documented | {"duration", "cache", "outcome"} <= set(access[0])


def test_workers_refuse_a_tls_port(tmp_path: Path) -> None:
    """Other workers could not serve it: one line at start, not a mirror that serves plaintext."""
    pki = make_pki(tmp_path, ["127.0.0.1"])
    endpoint = f"ssl:0:privateKey={pki.key}:certKey={pki.cert}"
    result = twistd("dockermirror", "--workers", "2", "--port", endpoint)
    assert result.returncode != 0
    assert "cannot be shared between processes (TLS" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
