"""Starting the real upstream: the distribution registry with token auth, and its token server.

Used by the test fixtures and by the benchmarks alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs

from tests.support.images import Image, Pusher, build_images
from tests.support.processes import Peer, free_port
from tests.support.tokens import ISSUER, SERVICE, make_pki, sign_token

SUPPORT = Path(__file__).parent


@attrs.frozen
class Upstream:
    url: str
    storage: Path
    images: dict[str, Image]
    key: Path
    cert: Path
    token_log: Path
    peers: tuple[Peer, ...]

    def token(self, name: str, actions: tuple[str, ...] = ("pull",)) -> str:
        access = [{"type": "repository", "name": name, "actions": list(actions)}]
        return sign_token(self.key, self.cert, access)

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()


def start_upstream(root: Path, registry_bin: str, images_dir: Path, big_size: int) -> Upstream:
    """Start the token server and the registry under ``root``; push the test images."""
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
  accesslog:
    disabled: true
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
    registry = Peer(
        "registry",
        [registry_bin, "serve", str(config)],
        ("127.0.0.1", registry_port),
        root / "registry.log",
    )
    url = f"http://127.0.0.1:{registry_port}"
    images = build_images(images_dir, big_size)
    result = Upstream(url, storage, images, key, cert, token_log, (registry, tokens))
    pusher = Pusher(url, lambda name: result.token(name, ("pull", "push")))
    for image in images.values():
        pusher.push(image)
    return result
