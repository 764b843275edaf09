"""Driving the real clients of the interop tests: skopeo, and plain HTTP."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        # A missing peer is a failure, never a skip: .ci/run installs them all.
        pytest.fail(f"{tool} is not installed; run .ci/run, which installs the test peers")
    return path


POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}'


def client_env(root: Path) -> dict[str, str]:
    """Environment that isolates skopeo and podman from the machine's /etc/containers."""
    (root / "policy.json").write_text(POLICY)
    (root / "registries.conf").write_text("")
    return {
        "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
        "POLICY": str(root / "policy.json"),
    }


def skopeo(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [require("skopeo"), "--policy", env["POLICY"], *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stderr}")
    return result


def copy(env: dict[str, str], source: str, destination: Path, *extra: str) -> None:
    skopeo(
        env,
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        *extra,
        source,
        f"dir:{destination}",
    )


def same_tree(a: Path, b: Path) -> None:
    names_a, names_b = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    assert names_a == names_b
    mismatch = filecmp.cmpfiles(a, b, names_a, shallow=False)[1:]
    assert mismatch == ([], []), mismatch


IMAGES = {
    "schema2": ("library/alpine:latest", ()),
    "manifest-list": ("library/multiarch:latest", ("--all",)),
    "oci-index": ("library/ociimage:latest", ("--all",)),
    "big": ("library/big:latest", ()),
}


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def mirror_registries_conf(mirror: str, closed_port: int) -> str:
    """The README's registries.conf: the mirror as docker.io's ``registry.mirror``."""
    return f"""[[registry]]
prefix = "docker.io"
# A dead loopback port: if the mirror fails, podman's fallback can never leave the machine.
location = "127.0.0.1:{closed_port}"
insecure = true

[[registry.mirror]]
location = "{mirror}"
insecure = true
"""


def ctr_pull(
    containerd: str, hosts: Path, reference: str, *user: str
) -> subprocess.CompletedProcess[str]:
    """``ctr images pull`` through the ``hosts.toml`` files under ``hosts`` (``--user U:P``)."""
    command = [
        require("ctr"),
        "--address",
        containerd,
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        str(hosts),
        *user,
        reference,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)
