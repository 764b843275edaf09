"""The real Docker engine as a test peer, in a network namespace of its own.

Docker falls back to the real Docker Hub when a mirror fails, so ``dockerd`` runs where
nothing but loopback exists: a private network namespace (``unshare(CLONE_NEWNET)``,
``ip link set lo up``).  The upstream registry with its token server, the mirror and
containerd run in the same namespace, since a new namespace has a loopback of its own
and cannot reach the host's 127.0.0.1.

The namespace belongs to one worker thread of the test process (a network namespace
is per thread): every peer is started from that thread and inherits the namespace, and
the suite's usual helpers (``start_upstream``, ``start_mirror``, ``Peer``'s readiness
check, ``fetch``) work unchanged when called through ``Namespace.run``.  The docker
CLI reaches the daemon over a unix socket, and runs in the namespace too.

dockerd and containerd each run in a private mount namespace as well (``unshare
--mount --propagation private``): dockerd bind-mounts its data-root onto itself, and
whatever they mount vanishes with them.  dockerd sees a private ``/etc/docker`` (no
``key.json`` written to the machine, none of its ``certs.d``), and containerd is our
own (private root, state and sockets), never a system containerd that may be running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

import attrs

from tests.support.clients import require
from tests.support.images import Image
from tests.support.peers import Mirror, Upstream, assert_clean_log, start_mirror, start_upstream
from tests.support.processes import Peer

P = ParamSpec("P")
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
# The mirror's endpoint by default: plain HTTP on loopback (start_mirror's default).
MIRROR_ENDPOINT = "tcp:{port}:interface=127.0.0.1"
# No proxy may take Docker's requests (or the registry's pushes) off loopback.
NO_PROXY = {
    name: ""
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
}


class Namespace:
    """A private network namespace with only loopback, held by one worker thread.

    ``run`` calls a function on that thread: sockets it opens and processes it starts
    live in the namespace.
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="netns")
        self.net = ""
        try:
            self.net = self.run(self._enter)
        except BaseException:
            self._thread.shutdown()
            raise

    @staticmethod
    def _enter() -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"unshare(CLONE_NEWNET): {os.strerror(error)}")
        subprocess.run([require("ip"), "link", "set", "lo", "up"], check=True, timeout=30)
        net = os.readlink(f"/proc/self/task/{threading.get_native_id()}/ns/net")
        if os.readlink("/proc/self/ns/net") == net:
            raise RuntimeError("the worker thread did not leave the host's network namespace")
        return net

    def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._thread.submit(function, *args, **kwargs).result()

    def interfaces(self) -> list[str]:
        return self.run(lambda: [name for _, name in socket.if_nameindex()])

    def processes(self) -> list[int]:
        """Every process whose network namespace is this one."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == self.net:
                    found.append(int(entry.name))
        return found

    def close(self) -> list[int]:
        """Kill whatever still runs in the namespace, then let the thread go; returns the pids."""
        killed = self.processes()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._thread.shutdown()
        return killed


def docker_env(config: Path) -> dict[str, str]:
    """The docker CLI's environment: its own config directory, no context, no proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    return {**env, **NO_PROXY, "DOCKER_CONFIG": str(config), "DOCKER_CLI_HINTS": "false"}


def private_mounts(*command: str, binds: dict[str, Path] | None = None) -> list[str]:
    """``command`` in a private mount namespace, with ``binds`` (target: source) mounted."""
    prefix = [require("unshare"), "--mount", "--propagation", "private"]
    if not binds:
        return [*prefix, *command]
    script = (
        'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; '
        'shift; exec "$@"'
    )
    pairs = [str(x) for target, source in binds.items() for x in (source, target)]
    return [*prefix, "sh", "-c", script, "sh", *pairs, "--", *command]


def start_containerd(root: Path) -> tuple[Peer, str]:
    """A private containerd (CRI off) under ``root``; returns it and its socket."""
    socket_path = str(root / "c.sock")
    config = root / "containerd.toml"
    config.write_text(
        f"""version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket_path}"

[ttrpc]
  address = "{socket_path}.ttrpc"

[debug]
  address = "{root}/d.sock"
"""
    )
    command = private_mounts(require("containerd"), "--config", str(config))
    peer = Peer("containerd", command, socket_path, root / "containerd.log", env=NO_PROXY)
    return peer, socket_path


def daemon_json(mirror: Mirror) -> dict[str, list[str]]:
    """What the README tells Docker users to put in /etc/docker/daemon.json."""
    return {
        "registry-mirrors": [f"http://{mirror.address}"],
        "insecure-registries": [mirror.address],
    }


def start_dockerd(root: Path, containerd: str, daemon: dict[str, list[str]]) -> Peer:
    """Debian's dockerd with everything under ``root``; ready once its API answers."""
    (root / "etc").mkdir()
    config = root / "daemon.json"
    config.write_text(json.dumps(daemon, indent=2) + "\n")
    socket_path = root / "docker.sock"
    command = [
        require("dockerd"),
        "--config-file",
        str(config),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "--host",
        f"unix://{socket_path}",
        "--containerd",
        containerd,
        "--storage-driver",
        "vfs",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
    ]
    # dockerd's own /etc/docker, and a resolver on loopback: the fallback to Docker Hub
    # looks its name up on 127.0.0.1:53, where nothing answers.
    if not Path("/etc/docker").is_dir():
        raise RuntimeError("/etc/docker is missing: is Debian's docker.io installed?")
    binds = {"/etc/docker": root / "etc"}
    (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    if Path("/etc/resolv.conf").exists():
        binds["/etc/resolv.conf"] = root / "resolv.conf"
    peer = Peer(
        "dockerd",
        private_mounts(*command, binds=binds),
        str(socket_path),
        root / "dockerd.log",
        env=NO_PROXY,
        timeout=60,
    )
    # The socket accepts before the daemon answers: wait for the API itself.
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(
            [require("docker"), "--host", f"unix://{socket_path}", "version"],
            capture_output=True,
            text=True,
            timeout=60,
            env=docker_env(root / "cli"),
        )
        if result.returncode == 0:
            return peer
        if peer.process.poll() is not None or time.monotonic() > deadline:
            peer.stop()
            raise RuntimeError(f"dockerd never answered: {result.stderr}\n{peer.output()[-4000:]}")
        time.sleep(0.1)


def mirror_config(upstream: Upstream, secret: Path) -> str:
    """Docker Hub is the upstream registry (anonymous); private.test is it with credentials."""
    secret.write_text("s3cret\n")
    return f"""[routes]
"*" = "docker.io"

[registries."docker.io"]
url = "{upstream.url}"

[registries."private.test"]
url = "{upstream.url}"
username = "mirror"
password_file = "{secret}"
by_prefix = true
"""


def host_mounts_under(root: Path) -> list[str]:
    """Mount points in the test process's own mount namespace at or below ``root``."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(root) or point.startswith(f"{root}/"):
            found.append(point)
    return found


@attrs.define
class Docker:
    """dockerd, its containerd, the mirror and the token-auth upstream, in one namespace."""

    root: Path
    namespace: Namespace
    upstream: Upstream
    mirror: Mirror
    containerd: Peer
    dockerd: Peer

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def certs_d(self) -> Path:
        """What dockerd sees as ``/etc/docker/certs.d`` (its private ``/etc/docker``).

        dockerd reads ``certs.d/HOST:PORT/*.crt`` at each pull: a CA written here (or
        removed) counts from the next pull on, with no restart.
        """
        return self.root / "etc" / "certs.d"

    def command(self, *args: str) -> list[str]:
        return [require("docker"), "--host", self.host, *args]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI (in the namespace); a failure shows dockerd's log.

        ``input``: the CLI's standard input (``docker login --password-stdin``).
        """
        result = self.namespace.run(
            subprocess.run,
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=docker_env(self.root / "cli"),
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n"
                f"dockerd log:\n{self.dockerd.output()[-3000:]}\n"
                f"mirror log:\n{self.mirror.peer.output()[-3000:]}"
            )
        return result

    def inspect(self, reference: str) -> dict[str, object]:
        document = json.loads(self("image", "inspect", reference).stdout)
        assert isinstance(document, list) and len(document) == 1
        result: dict[str, object] = document[0]
        return result

    @contextlib.contextmanager
    def save(self, reference: str) -> Iterator[IO[bytes]]:
        """``docker save``'s tar stream, read as it is written."""
        process = self.namespace.run(
            subprocess.Popen,
            self.command("save", reference),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=docker_env(self.root / "cli"),
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            yield process.stdout
            process.stdout.read()
            assert process.wait(60) == 0, process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
            process.stderr.close()

    def remove_all_images(self) -> None:
        ids = self("images", "--all", "--quiet").stdout.split()
        if ids:
            self("rmi", "--force", *sorted(set(ids)))

    def stop(self) -> None:
        """Stop every peer: nothing of them is left running or mounted."""
        try:
            for peer in (self.dockerd, self.containerd, self.mirror.peer):
                peer.stop()
            self.upstream.stop()
        finally:
            self.namespace.close()
            for point in reversed(host_mounts_under(self.root)):
                # Never expected: the peers' mounts live in their private mount namespaces.
                subprocess.run(["umount", "--lazy", point], check=False, timeout=60)

    def remove(self) -> None:
        """Delete everything on disk (images, caches, logs); after ``stop``."""
        shutil.rmtree(self.root, ignore_errors=True)


def start_docker(
    images: dict[str, Image],
    config: Callable[[Upstream, Path], str] | None = None,
    *,
    endpoint: str = MIRROR_ENDPOINT,
    daemon: Callable[[Mirror], dict[str, list[str]]] = daemon_json,
    setup: Callable[[], None] | None = None,
) -> Docker:
    """Start the namespace and its peers; the upstream is seeded with ``images``.

    ``config``: the mirror's configuration, made from the upstream and the mirror's own
    directory (where it may write files such as an htpasswd); by default ``mirror_config``.
    ``endpoint``: where the mirror listens (``start_mirror``'s, with ``{port}``), e.g. an
    ``ssl:`` endpoint; it must accept on 127.0.0.1, where readiness is checked.
    ``daemon``: dockerd's daemon.json, made from the mirror; by default ``daemon_json``.
    ``setup``: called in the namespace before any peer starts (e.g. to add an address).
    """
    # A missing peer fails the test (never skips it), before anything starts.
    names = ("docker-registry", "twistd", "containerd", "dockerd", "docker", "ip", "unshare")
    tools = {name: require(name) for name in names}
    # Unix socket paths are limited to 108 bytes: keep the root short.
    root = Path(tempfile.mkdtemp(prefix="dk"))
    try:
        namespace = Namespace()
    except BaseException:
        root.rmdir()
        raise
    started: list[Callable[[], None]] = []
    try:
        if namespace.interfaces() != ["lo"]:
            raise RuntimeError(f"the namespace has more than loopback: {namespace.interfaces()}")
        if setup is not None:
            namespace.run(setup)
        upstream = namespace.run(
            start_upstream, root / "upstream", tools["docker-registry"], images
        )
        started.append(upstream.stop)
        (root / "mirror").mkdir()
        if config is None:
            text = mirror_config(upstream, root / "mirror" / "password")
        else:
            text = config(upstream, root / "mirror")
        mirror = namespace.run(
            start_mirror, root / "mirror", tools["twistd"], text, endpoint=endpoint
        )
        started.append(mirror.stop)
        (root / "containerd").mkdir()
        containerd, address = namespace.run(start_containerd, root / "containerd")
        started.append(containerd.stop)
        dockerd = namespace.run(start_dockerd, root, address, daemon(mirror))
    except BaseException:
        for stop in reversed(started):
            stop()
        namespace.close()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Docker(root, namespace, upstream, mirror, containerd, dockerd)


def running_docker(
    images: dict[str, Image],
    config: Callable[[Upstream, Path], str] | None = None,
    *,
    endpoint: str = MIRROR_ENDPOINT,
    daemon: Callable[[Mirror], dict[str, list[str]]] = daemon_json,
    setup: Callable[[], None] | None = None,
) -> Iterator[Docker]:
    """A module fixture's body: start the namespace, yield it, stop it, check the mirror's log.

    ``endpoint``, ``daemon``, ``setup``: as ``start_docker``'s.
    """
    result = start_docker(images, config, endpoint=endpoint, daemon=daemon, setup=setup)
    try:
        yield result
    finally:
        result.stop()
        try:
            assert_clean_log(result.mirror)
        finally:
            result.remove()
