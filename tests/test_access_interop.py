"""Client authentication with real clients against a real mirror process.

The mirror turns client authentication on with an htpasswd file of bcrypt entries
(``$2y$``, as ``htpasswd -B`` writes them): anonymous clients may pull
``docker.io/library/*`` only, alice may pull everything, bob only ``docker.io/bitnami/*``,
and ``*/blocked*`` is blocked for everyone with the operator's message.  skopeo, podman,
containerd (``ctr``, whose credentials go to ``/v2/auth`` as an OAuth2 password grant) and
the Docker engine log in and pull through it; the in-memory matrix is ``test_access.py``.

Every client keeps its credentials in the test's own directories (``--authfile``,
``REGISTRY_AUTH_FILE``, ``DOCKER_CONFIG``, a private ``HOME``), never the machine's.
None of these tests is skipped; a missing peer fails them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.support.clients import ctr_pull, fetch, mirror_registries_conf, require, skopeo
from tests.support.docker import Docker, running_docker
from tests.support.images import Image, Pusher, single_image
from tests.support.peers import Mirror, Upstream, assert_clean_log, start_mirror

PASSWORDS = {"alice": "wonderland", "bob": "builder"}
# Alice may pull anything (auth.user_pull's default); bob only docker.io/bitnami/*.
LOGIN_ONLY = "acme/app"
BOBS = "bitnami/app"
# Anonymous pulls are allowed for docker.io/library/*, and this one is there upstream: only
# the registry's repository policy keeps it out.
BLOCKED = "library/blockedminer"
BLOCKED_MESSAGE = "this mirror does not serve crypto miners"
ALPINE = "library/alpine"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt entry as ``htpasswd -B`` writes it (``$2y$``), cheap rounds."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert hashed.startswith("$2b$")
    return f"{user}:$2y${hashed[4:]}\n"


def access_config(upstream: Upstream, directory: Path) -> str:
    """The mirror's configuration, with its htpasswd (and later its token key) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    htpasswd = directory / "htpasswd"
    htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in PASSWORDS.items()))
    return f"""[routes]
"*" = "docker.io"

[registries."docker.io"]
url = "{upstream.url}"
repositories = ["*", "!*/blocked*"]
blocked_message = "{BLOCKED_MESSAGE}"

# The same upstream under another name, which containerd reaches with ?ns=other.test.
[registries."other.test"]
url = "{upstream.url}"

[auth]
htpasswd = "{htpasswd}"
token_key_file = "{directory / "token.key"}"
anonymous_pull = ["docker.io/library/*"]

[users.bob]
pull = ["docker.io/bitnami/*"]
"""


def small_image(directory: Path, name: str) -> Image:
    """An image of its own under ``name``: nothing of it can come from another repository."""
    label = name.replace("/", "-")
    blobs, manifest = single_image(
        directory, label, {"bin/hello": f"#!/bin/sh\necho {label}\n".encode()}
    )
    return Image(name, blobs, [manifest], {"latest": manifest})


@pytest.fixture(scope="module")
def access_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    directory = tmp_path_factory.mktemp("access-images")
    return {name: small_image(directory, name) for name in (LOGIN_ONLY, BOBS, BLOCKED)}


@pytest.fixture(scope="module")
def seeded(upstream: Upstream, access_images: dict[str, Image]) -> Upstream:
    """The session's upstream, with this module's repositories pushed to it."""
    pusher = Pusher(upstream.url, lambda name: upstream.token(name, ("pull", "push")))
    for image in access_images.values():
        pusher.push(image)
    return upstream


@pytest.fixture(scope="module")
def mirror(seeded: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """One mirror with client authentication on, shared by the module's tests.

    It stands in for the session's ``mirror`` (which has no client authentication) here.
    """
    root = tmp_path_factory.mktemp("access-mirror")
    result = start_mirror(root, require("twistd"), access_config(seeded, root / "auth"))
    yield result
    result.stop()
    assert_clean_log(result)


@pytest.fixture
def env(containers_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """skopeo's and podman's environment: no credentials but the test's own.

    ``REGISTRY_AUTH_FILE`` is an auth file with no entries (podman refuses a missing one);
    ``HOME`` and ``DOCKER_CONFIG`` keep the machine's ``~/.docker/config.json`` and
    containers auth files out of reach.
    """
    home = tmp_path / "home"
    home.mkdir()
    anonymous = tmp_path / "anonymous.json"
    anonymous.write_text('{"auths": {}}\n')
    return {
        **containers_env,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "DOCKER_CONFIG": str(home / ".docker"),
        "REGISTRY_AUTH_FILE": str(anonymous),
    }


def mirror_log(mirror: Mirror, since: int) -> str:
    return mirror.peer.output()[since:]


def inspect_raw(
    env: dict[str, str], mirror: Mirror, name: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return skopeo(
        env,
        "inspect",
        "--tls-verify=false",
        "--raw",
        *extra,
        f"docker://{mirror.address}/{name}:latest",
        check=False,
    )


def skopeo_login(
    env: dict[str, str], mirror: Mirror, authfile: Path, user: str, password: str
) -> subprocess.CompletedProcess[str]:
    return skopeo(
        env,
        "login",
        "--tls-verify=false",
        "--authfile",
        str(authfile),
        "--username",
        user,
        "--password",
        password,
        mirror.address,
        check=False,
    )


def saved_auths(authfile: Path) -> dict[str, object]:
    if not authfile.exists():
        return {}
    auths: dict[str, object] = json.loads(authfile.read_text()).get("auths", {})
    return auths


# 1. skopeo ---------------------------------------------------------------------------------


def test_skopeo_login_checks_the_password(
    mirror: Mirror, env: dict[str, str], tmp_path: Path
) -> None:
    authfile = tmp_path / "auth.json"
    mark = len(mirror.peer.output())
    wrong = skopeo_login(env, mirror, authfile, "alice", "not-her-password")
    assert wrong.returncode != 0, wrong.stdout
    # containers/image's words for the token endpoint's 401.
    assert "invalid username/password" in wrong.stderr, wrong.stderr
    assert mirror.address not in saved_auths(authfile)
    assert "GET /v2/auth -> 401" in mirror_log(mirror, mark)

    right = skopeo_login(env, mirror, authfile, "alice", PASSWORDS["alice"])
    assert right.returncode == 0, right.stderr
    assert "Login Succeeded" in right.stdout
    entry = saved_auths(authfile)[mirror.address]
    assert isinstance(entry, dict)
    assert base64.b64decode(entry["auth"]).decode() == f"alice:{PASSWORDS['alice']}"
    log = mirror_log(mirror, mark)
    assert "GET /v2/ -> 200" in log and "user=alice" in log, log


def test_skopeo_pulls_a_login_only_repository_after_login_only(
    mirror: Mirror,
    seeded: Upstream,
    access_images: dict[str, Image],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    image = access_images[LOGIN_ONLY]
    manifest = image.tags["latest"]
    mark = len(mirror.peer.output())
    anonymous = inspect_raw(env, mirror, LOGIN_ONLY)
    assert anonymous.returncode != 0, anonymous.stdout
    # The mirror's 401: log in (not a 403, and not the upstream's answer).
    assert "unauthorized: log in to pull this repository" in anonymous.stderr, anonymous.stderr
    assert f"GET /v2/{LOGIN_ONLY}/manifests/latest -> 401" in mirror_log(mirror, mark)

    authfile = tmp_path / "auth.json"
    assert skopeo_login(env, mirror, authfile, "alice", PASSWORDS["alice"]).returncode == 0
    destination = tmp_path / "copied"
    skopeo(
        env,
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        "--authfile",
        str(authfile),
        f"docker://{mirror.address}/{LOGIN_ONLY}:latest",
        f"dir:{destination}",
    )
    assert (destination / "manifest.json").read_bytes() == manifest.body
    for blob in image.blobs:
        copied = destination / blob.digest.removeprefix("sha256:")
        assert copied.read_bytes() == blob.path.read_bytes()
    log = mirror_log(mirror, mark)
    assert f"GET /v2/{LOGIN_ONLY}/manifests/latest -> 200" in log, log
    for blob in image.blobs:
        line = next(x for x in log.splitlines() if f"/v2/{LOGIN_ONLY}/blobs/{blob.digest}" in x)
        assert "-> 200" in line and "user=alice" in line, line


def test_skopeo_a_user_without_the_repository_is_denied(
    mirror: Mirror, access_images: dict[str, Image], env: dict[str, str], tmp_path: Path
) -> None:
    """bob logs in fine and pulls his own repository; his token lacks alice's: 403 DENIED."""
    authfile = tmp_path / "auth.json"
    assert skopeo_login(env, mirror, authfile, "bob", PASSWORDS["bob"]).returncode == 0
    own = inspect_raw(env, mirror, BOBS, "--authfile", str(authfile))
    assert own.returncode == 0, own.stderr
    assert own.stdout.encode() == access_images[BOBS].tags["latest"].body

    mark = len(mirror.peer.output())
    result = inspect_raw(env, mirror, LOGIN_ONLY, "--authfile", str(authfile))
    assert result.returncode != 0, result.stdout
    assert "denied: user 'bob' may not pull this repository" in result.stderr, result.stderr
    log = mirror_log(mirror, mark)
    line = next(x for x in log.splitlines() if f"/v2/{LOGIN_ONLY}/manifests/latest" in x)
    assert "-> 403" in line and "user=bob" in line, line


# 5. anonymous pulls and a blocked repository, with skopeo ----------------------------------


def test_skopeo_anonymous_pull_of_an_allowed_library_image(
    mirror: Mirror, seeded: Upstream, env: dict[str, str], tmp_path: Path
) -> None:
    image = seeded.images["schema2"]
    destination = tmp_path / "alpine"
    mark = len(mirror.peer.output())
    skopeo(
        env,
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        f"docker://{mirror.address}/{ALPINE}:latest",
        f"dir:{destination}",
    )
    assert (destination / "manifest.json").read_bytes() == image.tags["latest"].body
    log = mirror_log(mirror, mark)
    assert f"GET /v2/{ALPINE}/manifests/latest -> 200" in log, log
    assert "user=alice" not in log and "user=bob" not in log, log


def test_skopeo_a_blocked_repository_shows_the_operator_s_message(
    mirror: Mirror, seeded: Upstream, env: dict[str, str], tmp_path: Path
) -> None:
    """Blocked for everyone, logged in or not, before the cache or the upstream is asked."""
    authfile = tmp_path / "auth.json"
    assert skopeo_login(env, mirror, authfile, "alice", PASSWORDS["alice"]).returncode == 0
    mark, upstream_mark = len(mirror.peer.output()), seeded.log_mark()
    for extra in ((), ("--authfile", str(authfile))):
        result = inspect_raw(env, mirror, BLOCKED, *extra)
        assert result.returncode != 0, result.stdout
        assert f"denied: {BLOCKED_MESSAGE}" in result.stderr, result.stderr
    assert mirror_log(mirror, mark).count(f"GET /v2/{BLOCKED}/manifests/latest -> 403") == 2
    assert [r for r in seeded.requests(upstream_mark) if BLOCKED in r[1]] == []
    # The repository is there: the upstream serves it to anyone who asks it directly.
    direct = skopeo(
        env,
        "inspect",
        "--tls-verify=false",
        "--raw",
        f"docker://{seeded.address}/{BLOCKED}:latest",
    )
    assert json.loads(direct.stdout)["schemaVersion"] == 2


# 2. podman ---------------------------------------------------------------------------------


class Podman:
    """podman with its own storage under a test's directory, and one runroot for all its runs."""

    def __init__(self, env: dict[str, str], storage: Path) -> None:
        self.env = {**os.environ, **env, "TMPDIR": str(storage)}
        self.storage = storage
        # podman refuses a runroot longer than 50 characters; pytest's tmp_path is longer.
        self.run = Path(tempfile.mkdtemp(prefix="podrun"))

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [
            require("podman"),
            "--root",
            str(self.storage / "root"),
            "--runroot",
            str(self.run),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            *args,
        ]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=300, input=input, env=self.env
        )


@pytest.fixture
def podman(env: dict[str, str], tmp_path: Path) -> Iterator[Podman]:
    result = Podman(env, tmp_path)
    yield result
    shutil.rmtree(result.run, ignore_errors=True)


def config_id(image: Image) -> str:
    digest: str = json.loads(image.tags["latest"].body)["config"]["digest"]
    return digest.removeprefix("sha256:")


def test_podman_login_then_pull_and_anonymous_library_pull(
    mirror: Mirror,
    seeded: Upstream,
    access_images: dict[str, Image],
    env: dict[str, str],
    podman: Podman,
    tmp_path: Path,
) -> None:
    pull = ("pull", "--tls-verify=false", "--signature-policy", env["POLICY"])
    login_only = f"{mirror.address}/{LOGIN_ONLY}:latest"
    mark = len(mirror.peer.output())

    # Anonymous: the library image is allowed, the login-only one is not.
    library = podman(*pull, f"{mirror.address}/{ALPINE}:latest")
    assert library.returncode == 0, library.stderr
    assert library.stdout.strip() == config_id(seeded.images["schema2"])
    refused = podman(*pull, login_only)
    assert refused.returncode != 0, refused.stdout
    assert "unauthorized" in refused.stderr.lower(), refused.stderr

    authfile = tmp_path / "podman-auth.json"
    login = podman_login(podman, authfile, mirror)
    assert login.returncode == 0, login.stderr
    assert mirror.address in saved_auths(authfile)
    pulled = podman(*pull, "--authfile", str(authfile), login_only)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == config_id(access_images[LOGIN_ONLY])
    log = mirror_log(mirror, mark)
    assert f"GET /v2/{ALPINE}/manifests/latest -> 200" in log, log
    assert f"GET /v2/{LOGIN_ONLY}/manifests/latest -> 401" in log, log
    line = next(
        x for x in log.splitlines() if f"GET /v2/{LOGIN_ONLY}/manifests/latest -> 200" in x
    )
    assert "user=alice" in line, line


def test_podman_uses_its_login_for_the_registry_mirror_of_docker_io(
    mirror: Mirror,
    access_images: dict[str, Image],
    env: dict[str, str],
    tmp_path: Path,
    closed_port: int,
) -> None:
    """The README's registries.conf (the mirror as docker.io's registry.mirror): a login to
    the mirror's address is what podman sends to it for ``docker.io/acme/app``."""
    conf = tmp_path / "registries.conf"
    conf.write_text(mirror_registries_conf(mirror.address, closed_port))
    authfile = tmp_path / "podman-auth.json"
    podman = Podman({**env, "CONTAINERS_REGISTRIES_CONF": str(conf)}, tmp_path)
    try:
        login = podman_login(podman, authfile, mirror)
        assert login.returncode == 0, login.stderr
        mark = len(mirror.peer.output())
        pull = ("pull", "--signature-policy", env["POLICY"], "--authfile", str(authfile))
        pulled = podman(*pull, f"docker.io/{LOGIN_ONLY}:latest")
    finally:
        shutil.rmtree(podman.run, ignore_errors=True)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == config_id(access_images[LOGIN_ONLY])
    log = mirror_log(mirror, mark)
    line = next(
        x for x in log.splitlines() if f"GET /v2/{LOGIN_ONLY}/manifests/latest -> 200" in x
    )
    assert "user=alice" in line, line


def podman_login(podman: Podman, authfile: Path, mirror: Mirror) -> Any:
    """``podman login`` to the mirror as alice, the password on standard input."""
    return podman(
        "login",
        "--tls-verify=false",
        "--authfile",
        str(authfile),
        "--username",
        "alice",
        "--password-stdin",
        mirror.address,
        input=PASSWORDS["alice"] + "\n",
    )


# 4. containerd -----------------------------------------------------------------------------


def hosts_dir(root: Path, registry: str, mirror: Mirror, closed_port: int) -> Path:
    """A containerd hosts directory that sends ``registry`` to the mirror, as the README says."""
    hosts = root / "certs.d"
    (hosts / registry).mkdir(parents=True)
    # The server is a dead loopback port, so a fallback can never leave the machine.
    (hosts / registry / "hosts.toml").write_text(
        f"""server = "http://127.0.0.1:{closed_port}"

[host."http://{mirror.address}"]
  capabilities = ["pull", "resolve"]
"""
    )
    return hosts


def ctr_images(containerd: str) -> str:
    return subprocess.run(
        [require("ctr"), "--address", containerd, "images", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_containerd_logs_in_with_the_oauth_password_grant(
    mirror: Mirror,
    access_images: dict[str, Image],
    containerd: str,
    tmp_path: Path,
    closed_port: int,
) -> None:
    """ctr --user through a hosts.toml mirror: containerd POSTs its password grant to /v2/auth."""
    hosts = hosts_dir(tmp_path, "docker.io", mirror, closed_port)
    reference = f"docker.io/{LOGIN_ONLY}:latest"
    mark = len(mirror.peer.output())
    anonymous = ctr_pull(containerd, hosts, reference)
    assert anonymous.returncode != 0, anonymous.stdout
    wrong = ctr_pull(containerd, hosts, reference, "--user", "alice:not-her-password")
    assert wrong.returncode != 0, wrong.stdout
    log = mirror_log(mirror, mark)
    assert "POST /v2/auth -> 401" in log, log
    assert f"HEAD /v2/{LOGIN_ONLY}/manifests/latest -> 200" not in log, log

    mark = len(mirror.peer.output())
    result = ctr_pull(containerd, hosts, reference, "--user", f"alice:{PASSWORDS['alice']}")
    assert result.returncode == 0, result.stdout + result.stderr
    listing = ctr_images(containerd)
    assert f"docker.io/{LOGIN_ONLY}:latest" in listing, listing
    assert access_images[LOGIN_ONLY].tags["latest"].digest in listing
    log = mirror_log(mirror, mark)
    grant = next(x for x in log.splitlines() if "POST /v2/auth -> 200" in x)
    assert "user=alice" in grant, grant
    assert "GET /v2/auth" not in log, log  # the password grant, not the GET fallback
    line = next(
        x for x in log.splitlines() if f"HEAD /v2/{LOGIN_ONLY}/manifests/latest -> 200" in x
    )
    assert "user=alice" in line, line


def test_containerd_logs_in_for_a_registry_it_reaches_by_ns(
    mirror: Mirror,
    access_images: dict[str, Image],
    containerd: str,
    tmp_path: Path,
    closed_port: int,
) -> None:
    """hosts.toml for other.test: containerd sends ?ns=other.test on every registry request,
    never on its token request (it asks the challenge's realm, which names no ns).  Alice may
    pull everything, so her pull must work as it does for docker.io.

    Fails today: /v2/auth routes the scope ``repository:acme/app:pull`` by the Host (the
    ``*`` route, docker.io), so the token grants ``docker.io/acme/app``, and the HEAD with
    ``?ns=other.test`` (``other.test/acme/app``) is 403 DENIED "user 'alice' may not pull
    this repository".  An anonymous client gets 401 again and again the same way.
    """
    hosts = hosts_dir(tmp_path, "other.test", mirror, closed_port)
    reference = f"other.test/{LOGIN_ONLY}:latest"
    mark = len(mirror.peer.output())
    result = ctr_pull(containerd, hosts, reference, "--user", f"alice:{PASSWORDS['alice']}")
    log = mirror_log(mirror, mark)
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert reference in ctr_images(containerd)
    line = next(
        x for x in log.splitlines() if f"HEAD /v2/{LOGIN_ONLY}/manifests/latest -> 200" in x
    )
    assert f"route=other.test/{LOGIN_ONLY}" in line and "user=alice" in line, line


# 6. a token from before a restart ----------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_from_before_a_restart_works_after_it(
    seeded: Upstream, access_images: dict[str, Image], tmp_path: Path, env: dict[str, str]
) -> None:
    manifest = access_images[LOGIN_ONLY].tags["latest"]
    accept = {"Accept": manifest.media_type}
    config = access_config(seeded, tmp_path / "auth")
    key = tmp_path / "auth" / "token.key"
    first = start_mirror(tmp_path, require("twistd"), config)
    try:
        credentials = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
        status, _, body = fetch(
            f"{first.url}/v2/auth?service=dockermirror&scope=repository:{LOGIN_ONLY}:pull",
            headers={"Authorization": f"Basic {credentials}"},
        )
        assert status == 200, body
        token = json.loads(body)["token"]
        status, _, _ = fetch(
            f"{first.url}/v2/{LOGIN_ONLY}/manifests/latest", headers={**accept, **bearer(token)}
        )
        assert status == 200
    finally:
        first.stop()
    assert_clean_log(first)
    # The first mirror made the key, for its owner's eyes only.
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    second = start_mirror(tmp_path, require("twistd"), config)
    try:
        url = f"{second.url}/v2/{LOGIN_ONLY}/manifests/latest"
        status, _, body = fetch(url, headers={**accept, **bearer(token)})
        assert (status, body) == (200, manifest.body)
        # Tokens are checked all the same: none, or a tampered one, is 401.
        assert fetch(url, headers=accept)[0] == 401
        head, payload, signature = token.split(".")
        tampered = (
            f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
        )
        assert fetch(url, headers={**accept, **bearer(tampered)})[0] == 401
        # A real client with the old token: skopeo's --registry-token.
        result = inspect_raw(env, second, LOGIN_ONLY, "--registry-token", token)
        assert result.returncode == 0, result.stderr
        assert result.stdout.encode() == manifest.body
    finally:
        second.stop()
    assert_clean_log(second)


# 3. the Docker engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker(images: dict[str, Image], access_images: dict[str, Image]) -> Iterator[Docker]:
    """dockerd with the README's daemon.json, and an auth-on mirror, in their own namespace."""
    seed = {"schema2": images["schema2"], **access_images}
    yield from running_docker(seed, access_config)


def test_docker_login_and_pull(docker: Docker, access_images: dict[str, Image]) -> None:
    docker.remove_all_images()
    address = docker.mirror.address
    repository = f"{address}/{LOGIN_ONLY}"
    config = docker.root / "cli" / "config.json"
    mark = len(docker.mirror.peer.output())

    # Anonymous: the library image through registry-mirrors is allowed, the other is not.
    docker("pull", "alpine:latest")
    before = docker("pull", f"{repository}:latest", check=False)
    assert before.returncode != 0, before.stdout
    assert "log in to pull this repository" in before.stderr, before.stderr

    wrong = docker(
        "login", address, "-u", "alice", "--password-stdin", check=False, input="nope\n"
    )
    assert wrong.returncode != 0, wrong.stdout
    assert "unauthorized" in wrong.stderr.lower(), wrong.stderr
    assert address not in saved_auths(config)

    docker("login", address, "-u", "bob", "--password-stdin", input=PASSWORDS["bob"] + "\n")
    as_bob = docker("pull", f"{repository}:latest", check=False)
    assert as_bob.returncode != 0, as_bob.stdout
    assert "user 'bob' may not pull this repository" in as_bob.stderr, as_bob.stderr
    docker("logout", address)

    login = docker(
        "login", address, "-u", "alice", "--password-stdin", input=PASSWORDS["alice"] + "\n"
    )
    assert "Login Succeeded" in login.stdout, login.stdout
    # The credentials are in the test's DOCKER_CONFIG, nowhere else.
    entry = saved_auths(config)[address]
    assert isinstance(entry, dict)
    assert base64.b64decode(entry["auth"]).decode() == f"alice:{PASSWORDS['alice']}"
    docker("pull", f"{repository}:latest")
    details = docker.inspect(f"{repository}:latest")
    image = access_images[LOGIN_ONLY]
    assert details["Id"] == "sha256:" + config_id(image)
    assert details["RepoDigests"] == [f"{repository}@{image.tags['latest'].digest}"]

    log = mirror_log_of(docker, mark)
    assert "GET /v2/library/alpine/manifests/" in log, log
    statuses = [
        (x.split(" -> ")[1].split()[0], x.split("user=")[1].split()[0])
        for x in log.splitlines()
        if f"/v2/{LOGIN_ONLY}/manifests/latest -> " in x
    ]
    assert ("401", "-") in statuses and ("403", "bob") in statuses, statuses
    assert ("200", "alice") in statuses, statuses
    docker.remove_all_images()


def mirror_log_of(docker: Docker, since: int) -> str:
    return docker.mirror.peer.output()[since:]
