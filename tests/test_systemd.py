"""contrib/systemd: the units pass systemd's own checks, and the service runs as written.

No systemd runs here (CI is a container), so the checks use systemd's tools that
need none: ``systemd-analyze verify --root`` and ``systemctl --root enable`` on a
directory tree holding the units unchanged, and ``systemd-socket-activate``,
which does what the socket unit does for the service, running the ExecStart
command line read from the unit (only the install path of twistd and the
configuration file are pointed at the test's).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from dockermirror.config import ServerSettings
from dockermirror.storage.layout import blob_path
from dockermirror.web.descriptors import connections_that_fit
from tests.support.clients import fetch, require
from tests.support.peers import Mirror, Upstream, assert_clean_log
from tests.support.processes import Peer, free_port, wait_for
from tests.support.systemd import (
    ROOT,
    SERVICE,
    SOCKET,
    Unit,
    directories,
    exec_start,
    install_tree,
    listening_ports,
    read_unit,
    systemctl,
    verify,
)

NAMES = [SOCKET.name, SERVICE.name]


@pytest.fixture
def service() -> Unit:
    return read_unit(SERVICE)


@pytest.fixture
def socket_unit() -> Unit:
    return read_unit(SOCKET)


# systemd's own checks ---------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(service: Unit, tmp_path: Path) -> None:
    """The units, byte for byte, in a root where the install path exists.

    ``--root`` rather than rewriting ExecStart: verify checks that the program is
    executable, and with a root it looks for it there (a stub at
    /opt/dockermirror/bin/twistd), so the files checked are the files shipped.
    An unknown or misspelt directive is only a warning to verify (exit 0), so any
    output at all fails the test.
    """
    install_tree(tmp_path, [SOCKET, SERVICE], exec_start(service)[0])
    result = verify(tmp_path, NAMES)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_enable_socket_and_service(service: Unit, tmp_path: Path) -> None:
    """``systemctl enable dockermirror.socket`` hooks the socket into boot; enabling the
    service also enables the socket (``Also=``), so the mirror starts at boot too."""
    install_tree(tmp_path, [SOCKET, SERVICE], exec_start(service)[0])
    etc = tmp_path / "etc" / "systemd" / "system"
    result = systemctl(tmp_path, "enable", SOCKET.name)
    assert result.returncode == 0, result.stderr
    assert (etc / "sockets.target.wants" / SOCKET.name).is_symlink()
    assert not (etc / "multi-user.target.wants").exists()
    result = systemctl(tmp_path, "disable", SOCKET.name)
    assert result.returncode == 0, result.stderr
    assert not (etc / "sockets.target.wants" / SOCKET.name).exists()
    result = systemctl(tmp_path, "enable", SERVICE.name)
    assert result.returncode == 0, result.stderr
    assert (etc / "sockets.target.wants" / SOCKET.name).is_symlink()
    assert (etc / "multi-user.target.wants" / SERVICE.name).is_symlink()


# What the units promise, read from them -------------------------------------------------


def test_exec_start_runs_the_readme_install(service: Unit) -> None:
    readme = (ROOT / "README.rst").read_text()
    venvs = set(re.findall(r"python3 -m venv (/\S+)", readme))
    assert len(venvs) == 1, venvs
    (venv,) = venvs
    assert f"{venv}/bin/twistd -n dockermirror" in readme
    argv = exec_start(service)
    assert argv[0] == f"{venv}/bin/twistd"
    # Foreground and no pid file (the working directory is read-only): the rest is
    # shown to work by the activation tests below.
    assert argv[1:4] == ["--nodaemon", "--pidfile=", "dockermirror"]
    configuration = Path("/etc") / service.value("Service", "ConfigurationDirectory")
    assert _config_path(service).parent == configuration


def _family(listen: str) -> str:
    """The address family of a ListenStream= value, as systemd.socket(5) reads it."""
    if listen.startswith(("/", "@")):
        return "UNIX"
    if re.fullmatch(r"\d+", listen) or listen.startswith("["):
        # A bare port is [::]:PORT, an IPv6 socket (that may take IPv4 clients too).
        return "INET6"
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", listen), listen
    return "INET"


def test_each_socket_is_taken_with_its_address_family(service: Unit, socket_unit: Unit) -> None:
    """``--port systemd:domain=...:index=N`` matches the Nth ListenStream= of the socket.

    Twisted takes the domain on trust: an IPv6 socket adopted as INET accepts
    connections, but every client address comes out as garbage (measured:
    ``::58cb:55e4:357f:0%3827068846`` for 127.0.0.1), which access lists, rate
    limits and the logs depend on.
    """
    argv = exec_start(service)
    ports = [argv[i + 1] for i, word in enumerate(argv) if word == "--port"]
    listens = socket_unit.values("Socket", "ListenStream")
    assert listens and len(ports) == len(listens), (ports, listens)
    for index, (port, listen) in enumerate(zip(ports, listens, strict=True)):
        fields = dict(field.split("=", 1) for field in port.removeprefix("systemd:").split(":"))
        assert port.startswith("systemd:") and fields["index"] == str(index), port
        assert fields["domain"] == _family(listen), (port, listen)
    assert socket_unit.value("Socket", "FileDescriptorName")
    # The socket starts this service (Service= unset: the unit of the same name).
    assert socket_unit.get("Socket", "Service") in (None, SERVICE.name)
    assert SOCKET.stem == SERVICE.stem
    assert socket_unit.value("Install", "WantedBy") == "sockets.target"


def _nofile(service: Unit) -> int:
    """The hard open-file limit LimitNOFILE= sets (``SOFT:HARD`` or one value for both)."""
    return int(service.value("Service", "LimitNOFILE").rpartition(":")[2])


def test_open_file_limit_fits_the_default_connection_cap(service: Unit) -> None:
    """The mirror raises its soft limit to the hard one and fits its connections under it."""
    configured = ServerSettings().max_connections
    assert connections_that_fit(configured, _nofile(service)) == configured


SANDBOX = {
    "DynamicUser": "yes",
    "PrivateUsers": "yes",
    "StateDirectory": "dockermirror",
    "CacheDirectory": "dockermirror",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "Restart": "on-failure",
}


def test_service_is_sandboxed(service: Unit) -> None:
    settings = {key: service.get("Service", key) for key in SANDBOX}
    assert settings == SANDBOX
    filters = service.values("Service", "SystemCallFilter")
    assert filters[0] == "@system-service"
    # What the mirror calls must stay allowed: setrlimit (@resources) raises its file limit.
    assert not any("@resources" in f for f in filters[1:]), filters


# A TLS connection to a registry, as the mirror's Agent makes one, then the other
# libraries the mirror needs native code from; with ``mdwe`` under the kernel's
# MemoryDenyWriteExecute (prctl PR_SET_MDWE, Linux 6.3+), which refuses writable and
# executable memory as systemd's seccomp filter for the setting does.
_MDWE_PROBE = """
import ctypes, json, sys
if sys.argv[1] == "mdwe":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE): Linux 6.3 or later needed")
results = {}
def attempt(name, action):
    try:
        action()
        results[name] = "ok"
    except Exception as e:
        results[name] = f"{type(e).__name__}: {e}"
def tls():
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.web.client import BrowserLikePolicyForHTTPS
    creator = BrowserLikePolicyForHTTPS().creatorForNetloc(b"registry-1.docker.io", 443)
    factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert protocol.transport.value(), "no ClientHello"
def bcrypt_check():
    import bcrypt
    assert bcrypt.checkpw(b"pw", bcrypt.hashpw(b"pw", bcrypt.gensalt(4)))
def cryptography_sign():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
attempt("tls", tls)
attempt("bcrypt", bcrypt_check)
attempt("cryptography", cryptography_sign)
print(json.dumps(results))
"""


def _probe(mode: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_memory_deny_write_execute_is_what_the_mirror_can_bear(service: Unit) -> None:
    """MemoryDenyWriteExecute= is on exactly when the mirror's libraries work under it.

    Checked once under systemd itself too: with it on, every pull from an https
    registry failed with cffi's "Cannot allocate write+execute memory" (pyOpenSSL's
    ALPN and verify callbacks), while bcrypt and cryptography were fine.
    """
    assert set(_probe("plain").values()) == {"ok"}
    under_mdwe = _probe("mdwe")
    works = set(under_mdwe.values()) == {"ok"}
    wanted = "yes" if works else "no"
    assert service.value("Service", "MemoryDenyWriteExecute") == wanted, (
        f"under MemoryDenyWriteExecute: {under_mdwe}; set it to {wanted}"
    )


# The service, socket-activated --------------------------------------------------------


@attrs.frozen
class Activated:
    peer: Peer
    port: int
    # Stands for the host's /: the service's directories and configuration are under it.
    root: Path
    workdir: Path
    # Where the mirror would write if systemd had set no directory for it.
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _config_path(service: Unit) -> Path:
    argv = exec_start(service)
    assert "--config" in argv, "the service must name its configuration file"
    return Path(argv[argv.index("--config") + 1])


def _command_line(service: Unit, config: Path) -> list[str]:
    """The unit's ExecStart, with the install's twistd and configuration made the test's."""
    argv = exec_start(service)
    argv[0] = require("twistd")
    argv[argv.index("--config") + 1] = str(config)
    return argv


def _activate(
    service: Unit, socket_unit: Unit, tmp_path: Path, config_text: str
) -> Iterator[Activated]:
    root = tmp_path / "root"
    env = {name: str(path) for name, path in directories(service, root).items()}
    config = root / _config_path(service).relative_to("/")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text)
    port = free_port()
    # The unit listens on an IPv4 address (see the family test): so does the test, on loopback.
    (listen,) = socket_unit.values("Socket", "ListenStream")
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", listen), listen
    workdir = tmp_path / "workdir"  # systemd starts services in /, which is read-only here
    workdir.mkdir()
    home = tmp_path / "home"
    env |= {
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_STATE_HOME": str(home / "state"),
        # The checkout's code, as the suite's other mirrors run it.
        "PYTHONPATH": str(ROOT),
    }
    command = [
        require("systemd-socket-activate"),
        f"--fdname={socket_unit.value('Socket', 'FileDescriptorName')}",
        "--listen",
        f"127.0.0.1:{port}",
        *(f"--setenv={name}={value}" for name, value in env.items()),
        # Same process all the way (env execs), so $LISTEN_PID stays right.
        require("env"),
        "--chdir",
        str(workdir),
        *_command_line(service, config),
    ]
    # The socket listens at once; the first connection (Peer's check) starts the mirror,
    # and connections wait in the socket's queue meanwhile, as under systemd.
    peer = Peer("activated mirror", command, ("127.0.0.1", port), tmp_path / "mirror.log")
    try:
        # Started: it says where it listens (or it died, and the log says why).
        wait_for(lambda: "listening on" in peer.output() or peer.process.poll() is not None, 30)
        assert peer.process.poll() is None, peer.output()
        yield Activated(peer, port, root, workdir, home)
    finally:
        peer.stop()
    assert_clean_log(Mirror(port, peer, root))


@pytest.fixture
def routed(
    service: Unit, socket_unit: Unit, tmp_path: Path, upstream: Upstream
) -> Iterator[Activated]:
    config = f'[routes]\n"*" = "docker.io"\n\n[registries."docker.io"]\nurl = "{upstream.url}"\n'
    yield from _activate(service, socket_unit, tmp_path, config)


def test_pull_through_the_activated_socket(routed: Activated, upstream: Upstream) -> None:
    # It serves on the socket it was handed and binds none of its own.
    log = routed.peer.output()
    assert re.findall(r"listening on (\S+)", log) == ["systemd:domain=INET:index=0"]
    assert listening_ports(routed.peer.process.pid) == {routed.port}
    # Its directories are systemd's: nothing went to a home directory.
    assert not routed.home.exists()

    image = upstream.images["schema2"]
    manifest = image.tags["latest"]
    status, headers, body = fetch(
        f"{routed.url}/v2/library/alpine/manifests/latest",
        headers={"Accept": manifest.media_type},
    )
    assert (status, headers["docker-content-digest"]) == (200, manifest.digest)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == manifest.digest
    for blob in image.blobs:
        status, _, body = fetch(f"{routed.url}/v2/library/alpine/blobs/{blob.digest}")
        assert status == 200
        assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest

    # The cache in /var/cache/dockermirror, the token key in /var/lib/dockermirror, as
    # $CACHE_DIRECTORY and $STATE_DIRECTORY name them.
    cache = routed.root / "var" / "cache" / "dockermirror"
    stored = [blob_path(cache, blob.digest) for blob in image.blobs]
    wait_for(lambda: all(path.is_file() for path in stored), 30)
    key = routed.root / "var" / "lib" / "dockermirror" / "token.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # --pidfile=: no twistd.pid in the working directory, which is read-only under systemd.
    assert list(routed.workdir.iterdir()) == []


@pytest.fixture
def empty_config(service: Unit, socket_unit: Unit, tmp_path: Path) -> Iterator[Activated]:
    yield from _activate(service, socket_unit, tmp_path, "")


def test_an_empty_configuration_file_is_the_default(empty_config: Activated) -> None:
    status, _, body = fetch(f"{empty_config.url}/v2/")
    assert (status, body) == (200, b"{}")
    assert "routes * -> docker.io" in empty_config.peer.output()


def test_a_missing_configuration_file_stops_start_up_with_one_line(
    service: Unit, tmp_path: Path
) -> None:
    """No silent defaults: the service fails, and its journal names the file.

    (The file is read before any socket is touched, so no activation is needed.)
    """
    missing = tmp_path / "etc" / "dockermirror.toml"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(tmp_path / "state")}
    result = subprocess.run(
        _command_line(service, missing),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == (
        "",
        f"dockermirror: {missing}: cannot read: No such file or directory\n",
    )
