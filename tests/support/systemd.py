"""The systemd units in contrib/systemd, read and run as systemd would, with no systemd running.

The suite runs in containers where systemd is not PID 1, so nothing here talks to
a service manager: ``systemd-analyze verify --root`` and ``systemctl --root``
work on a directory tree, and ``systemd-socket-activate`` does what a socket unit
does for its service (binds the port, passes it as fd 3 with ``$LISTEN_FDS``,
``$LISTEN_PID`` and ``$LISTEN_FDNAMES``, execs the command on the first
connection).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs

from tests.support.clients import require

ROOT = Path(__file__).parent.parent.parent
UNITS = ROOT / "contrib" / "systemd"
SERVICE = UNITS / "dockermirror.service"
SOCKET = UNITS / "dockermirror.socket"
# systemd's own units (the targets ours name), as Debian installs them.
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

# What systemd makes for these directives, and the variable that names it.
DIRECTORIES = {
    "ConfigurationDirectory": ("CONFIGURATION_DIRECTORY", "/etc"),
    "StateDirectory": ("STATE_DIRECTORY", "/var/lib"),
    "CacheDirectory": ("CACHE_DIRECTORY", "/var/cache"),
    "LogsDirectory": ("LOGS_DIRECTORY", "/var/log"),
    "RuntimeDirectory": ("RUNTIME_DIRECTORY", "/run"),
}


@attrs.frozen
class Unit:
    path: Path
    # Every assignment in file order, as (section, key, value).
    assignments: tuple[tuple[str, str, str], ...]

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.assignments if (s, k) == (section, key)]

    def value(self, section: str, key: str) -> str:
        """The setting systemd uses: the last assignment; a test fails when there is none."""
        found = self.values(section, key)
        assert found, f"{self.path.name}: no {key}= in [{section}]"
        return found[-1]

    def get(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None


def read_unit(path: Path) -> Unit:
    """Parse a unit file as systemd.syntax(7) says: sections, comments, continued lines."""
    assignments: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not an assignment: {line!r}"
        assignments.append((section, key.strip(), value.strip()))
    return Unit(path, tuple(assignments))


def exec_start(service: Unit) -> list[str]:
    """The service's one command line, split into words.

    Specifiers (``%S``), variables (``$X``) and prefixes (``-``, ``+``, ...) have
    meanings this emulation does not give them: the test fails on them instead.
    """
    (line,) = service.values("Service", "ExecStart")
    assert not re.search(r"[%$]", line), f"ExecStart has specifiers or variables: {line}"
    argv = shlex.split(line)
    assert argv[0].startswith("/"), f"ExecStart must name its program by absolute path: {line}"
    return argv


def directories(service: Unit, root: Path) -> dict[str, Path]:
    """What systemd sets for the service's ``*Directory=`` settings, made under ``root``.

    ``$STATE_DIRECTORY`` and the others name one directory per name given; each is
    made here at ``root`` + the path systemd would use (``/var/lib/NAME``).
    """
    env: dict[str, Path] = {}
    for directive, (variable, base) in DIRECTORIES.items():
        for value in service.values("Service", directive):
            names = value.split()
            assert len(names) == 1, f"{directive}={value}: one directory is all the mirror reads"
            path = root / base.lstrip("/") / names[0]
            path.mkdir(parents=True, exist_ok=True)
            env[variable] = path
    return env


def install_tree(root: Path, units: Sequence[Path], program: str) -> None:
    """A filesystem root holding systemd's units, ours, and an executable at ``program``."""
    require("systemd-analyze")  # systemd's units come with it, in Debian's systemd package
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    target = root / "etc" / "systemd" / "system"
    target.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, target / unit.name)
    stub = root / program.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)


def verify(root: Path, names: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of units installed under ``root``, as a manager loads them."""
    return subprocess.run(
        [require("systemd-analyze"), "verify", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=120,
    )


def systemctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``systemctl --root``: enabling and disabling by symlinks, no manager needed."""
    return subprocess.run(
        [require("systemctl"), f"--root={root}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def listening_ports(pid: int) -> set[int]:
    """The TCP ports the process holds listening sockets on (any address, v4 or v6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except FileNotFoundError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", str(target))
        if match:
            inodes.add(match[1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            # local address, ..., state (0A: LISTEN), ..., inode
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports
