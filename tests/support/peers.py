"""Starting the real peers: the distribution registry with token auth and its token server,
the CDN-style front, and the mirror itself under twistd.

Used by the test fixtures and by the benchmarks alike.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import attrs

from tests.support.images import Image, Pusher
from tests.support.processes import Peer, free_port
from tests.support.tokens import ISSUER, SERVICE, make_pki, sign_token

SUPPORT = Path(__file__).parent
ROOT = SUPPORT.parent.parent
CDN_HOST = "127.0.0.2"
# The registry's access log: combined log format, one line per request.
_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d+) .* "([^"]*)"$')


@attrs.frozen
class Upstream:
    url: str
    storage: Path
    images: dict[str, Image]
    key: Path
    cert: Path
    token_log: Path
    registry: Peer
    tokens: Peer

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def token(self, name: str, actions: tuple[str, ...] = ("pull",)) -> str:
        access = [{"type": "repository", "name": name, "actions": list(actions)}]
        return sign_token(self.key, self.cert, access)

    def log_mark(self) -> int:
        return len(self.registry.output())

    def requests(self, since: int = 0, agent: str = "dockermirror/") -> list[tuple[str, str, int]]:
        """(method, path, status) of what the registry logged since a mark, from one user agent."""
        found = []
        for line in self.registry.output()[since:].splitlines():
            match = _ACCESS.search(line)
            if match and match[4].startswith(agent):
                found.append((match[1], match[2], int(match[3])))
        return found

    def stop(self) -> None:
        self.registry.stop()
        self.tokens.stop()


def start_upstream(root: Path, registry_bin: str, images: dict[str, Image]) -> Upstream:
    """Start the token server and the registry under ``root``; push ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    key, cert = make_pki(root)
    token_port, registry_port = free_port(), free_port()
    token_log = root / "tokens.jsonl"
    token_log.touch()
    tokens = Peer(
        "token server",
        [
            sys.executable,
            str(SUPPORT / "tokenserver.py"),
            str(token_port),
            str(key),
            str(cert),
            str(token_log),
        ],
        ("127.0.0.1", token_port),
        root / "tokenserver.log",
    )
    storage = root / "storage"
    config = root / "registry.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{registry_port}
  secret: dockermirror-tests
auth:
  token:
    realm: http://127.0.0.1:{token_port}/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {cert}
"""
    )
    try:
        registry = Peer(
            "registry",
            [registry_bin, "serve", str(config)],
            ("127.0.0.1", registry_port),
            root / "registry.log",
        )
    except BaseException:
        tokens.stop()
        raise
    url = f"http://127.0.0.1:{registry_port}"
    upstream = Upstream(url, storage, images, key, cert, token_log, registry, tokens)
    pusher = Pusher(url, lambda name: upstream.token(name, ("pull", "push")))
    try:
        for image in images.values():
            pusher.push(image)
    except BaseException:
        upstream.stop()
        raise
    return upstream


@attrs.frozen
class Front:
    url: str
    peer: Peer


def start_front(root: Path, upstream: Upstream, mode: str = "normal") -> Front:
    """A front that answers blob GETs with 307 to a CDN on 127.0.0.2.

    ``mode`` is "normal", "corrupt" (the CDN flips a byte) or "slow" (64 MB/s).
    """
    port, cdn_port = free_port(), free_port(CDN_HOST)
    registry_port = upstream.url.rpartition(":")[2]
    args = [str(port), CDN_HOST, str(cdn_port), registry_port, str(upstream.storage), mode]
    peer = Peer(
        f"{mode} front",
        [sys.executable, str(SUPPORT / "fronts.py"), *args],
        ("127.0.0.1", port),
        root / f"front-{mode}.log",
    )
    return Front(f"http://127.0.0.1:{port}", peer)


@attrs.frozen
class Mirror:
    port: int
    peer: Peer
    cache: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        self.peer.stop()


def assert_clean_log(mirror: Mirror) -> None:
    """No traceback in the mirror's log; a failure shows the first one."""
    log = mirror.peer.output()
    where = log.find("Traceback")
    assert where < 0, log[log.rfind("\n", 0, max(0, where - 200)) + 1 :][:4000]


def registry_config(name: str, url: str, extra: str = "", *, via_cdn: bool = False) -> str:
    """A mirror configuration defining one registry, then ``extra`` TOML.

    ``via_cdn``: the registry is a front whose blobs come from the CDN host, a
    private address that only a trusted network makes reachable.
    """
    trusted = f'trusted_networks = ["{CDN_HOST}/32"]\n' if via_cdn else ""
    return f'[registries."{name}"]\nurl = "{url}"\n{trusted}\n{extra}'


def start_mirror(
    root: Path,
    twistd: str,
    config: str,
    cache: Path | None = None,
    server: str = "",
    endpoint: str = "tcp:{port}:interface=127.0.0.1",
) -> Mirror:
    """``twistd -n dockermirror`` with ``config`` (TOML without [server] and [cache] dir).

    ``server``: more ``[server]`` keys, as TOML lines; ``endpoint``: where it listens, with
    ``{port}`` for a free loopback port.
    """
    port = free_port()
    cache = cache or root / "cache"
    path = root / f"dockermirror-{port}.toml"
    listen = endpoint.format(port=port)
    path.write_text(f'[server]\nports = ["{listen}"]\n{server}\n\n{config}\n')
    peer = Peer(
        "mirror",
        [
            twistd,
            "-n",
            "--pidfile=",
            "dockermirror",
            "--config",
            str(path),
            "--cache-dir",
            str(cache),
        ],
        ("127.0.0.1", port),
        root / f"mirror-{port}.log",
        # Its token key goes to the test's directory, not the machine's ~/.local/state.
        env={"PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(root / f"state-{port}")},
    )
    return Mirror(port, peer, cache)
