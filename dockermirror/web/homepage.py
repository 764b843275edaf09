"""The usage page at ``/``: what to paste, for the host name the visitor used.

Self-contained (no external fonts, scripts or stylesheets: they are often
blocked exactly where a mirror is needed), in English or Chinese by
Accept-Language.  Every inserted value is HTML-escaped.
"""

from __future__ import annotations

import functools
import importlib.resources
from html import escape
from string import Template

from dockermirror import __version__
from dockermirror.config import DEFAULT_ROUTE, DOCKER_HUB, WELL_KNOWN, MirrorConfig, Registry

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Registry mirror",
        "intro": "A pull-through mirror of {registry}. Pull through it, or make your "
        "container runtime use it automatically.",
        "pull_title": "Pull an image",
        "pull_text": "Put this host in front of the image name, then tag it with its usual name:",
        "prefix_text": "Other registries by path prefix:",
        "docker_title": "Docker: use as a registry mirror",
        "docker_text": "Docker uses registry mirrors for Docker Hub images only. "
        "Add the mirror to <code>/etc/docker/daemon.json</code> and restart Docker; "
        "<code>docker pull redis</code> then goes through the mirror.",
        "containerd_title": "containerd and Kubernetes nodes",
        "containerd_text": "Create this file; containerd then resolves and pulls "
        "<code>{registry}</code> images through the mirror.",
        "k8s_text": "On Kubernetes nodes, point the CRI plugin at that directory once "
        "(containerd 1.x shown), on every node, then restart containerd:",
        "podman_title": "Podman, Buildah, CRI-O and skopeo",
        "podman_text": "These read <code>registries.conf</code>; add the mirror for "
        "<code>{registry}</code>:",
        "routes_title": "Routes on this mirror",
        "routes_host": "Host name",
        "routes_upstream": "Upstream registry",
        "routes_default": "(any other host)",
    },
    "zh": {
        "title": "镜像仓库代理",
        "intro": "{registry} 的拉取代理。可直接通过它拉取镜像，也可让容器运行时自动使用它。",
        "pull_title": "拉取镜像",
        "pull_text": "在镜像名前加上本站地址拉取，再改回原来的名字：",
        "prefix_text": "其他仓库可用路径前缀：",
        "docker_title": "Docker：设置为镜像加速器",
        "docker_text": "Docker 的 registry-mirrors 只对 Docker Hub 镜像生效。"
        "写入 <code>/etc/docker/daemon.json</code> 并重启 Docker 后，"
        "<code>docker pull redis</code> 即经由本代理。",
        "containerd_title": "containerd 与 Kubernetes 节点",
        "containerd_text": "创建此文件后，containerd 会通过本代理解析并拉取 "
        "<code>{registry}</code> 的镜像。",
        "k8s_text": "在 Kubernetes 各节点上，让 CRI 插件读取该目录（以 containerd 1.x 为例），"
        "然后重启 containerd：",
        "podman_title": "Podman、Buildah、CRI-O 与 skopeo",
        "podman_text": "它们读取 <code>registries.conf</code>；为 <code>{registry}</code> 添加镜像：",
        "routes_title": "本代理的路由",
        "routes_host": "主机名",
        "routes_upstream": "上游仓库",
        "routes_default": "（其他任何主机）",
    },
}

_DOCKER_BLOCK = """<section>
<h2>$docker_title</h2>
<p>$docker_text</p>
<pre><code>sudo mkdir -p /etc/docker
sudo tee /etc/docker/daemon.json &lt;&lt;'EOF'
{
  "registry-mirrors": ["$scheme://$host"]$docker_insecure
}
EOF
sudo systemctl restart docker
docker pull redis</code></pre>
</section>"""


def choose_language(accept_language: str | None) -> str:
    """The best of our languages by the header's q-values; English by default."""
    best, best_q = "en", -1.0
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        language = tag.strip().lower().split("-")[0]
        # Earlier entries win ties: the header lists preferences in order.
        if language in TEXTS and q > best_q and q > 0:
            best, best_q = language, q - position * 1e-6
    return best


def render_homepage(
    config: MirrorConfig, registry: Registry | None, host: str, scheme: str, language: str
) -> bytes:
    texts = TEXTS[language]
    registry = registry or config.registries[DOCKER_HUB]
    registry_name = registry.name
    docker_hub = registry.docker_hub
    example = "library/redis" if docker_hub else "NAMESPACE/IMAGE"
    # TEXTS are our own HTML; only the values put into them need escaping.
    values = {key: text.format(registry=escape(registry_name)) for key, text in texts.items()}
    prefixed = sorted(
        n for n in config.registries if "." in n and "://" not in n and n != registry_name
    )
    values.update(
        lang="zh-CN" if language == "zh" else "en",
        host=escape(host),
        scheme=escape(scheme),
        registry=escape(registry_name),
        # containerd's fallback runs on the client: the registry's public address.
        upstream=escape(WELL_KNOWN.get(registry_name) or str(registry.url.to_text())),
        example=escape(example),
        short="redis" if docker_hub else escape(f"{registry_name}/{example}"),
        version=escape(__version__),
        podman_insecure="\ninsecure = true" if scheme == "http" else "",
        docker_insecure=(
            f',\n  "insecure-registries": ["{escape(host)}"]' if scheme == "http" else ""
        ),
        prefix_block=_prefix_block(values["prefix_text"], host, prefixed),
        routes="\n".join(
            f"<tr><td>{escape(h if h != DEFAULT_ROUTE else values['routes_default'])}</td>"
            f"<td>{escape(r)}</td></tr>"
            for h, r in sorted(config.routes.items())
        ),
    )
    values["docker_block"] = Template(_DOCKER_BLOCK).substitute(values) if docker_hub else ""
    return Template(_template()).substitute(values).encode()


def _prefix_block(intro: str, host: str, registries: list[str]) -> str:
    if not registries:
        return ""
    example = "ghcr.io" if "ghcr.io" in registries else registries[0]
    names = ", ".join(f"<code>{escape(r)}</code>" for r in registries)
    return (
        f"<p>{intro} {names}</p>\n"
        f"<pre><code>docker pull {escape(host)}/{escape(example)}/NAMESPACE/IMAGE</code></pre>"
    )


@functools.cache
def _template() -> str:
    return (importlib.resources.files("dockermirror.web") / "templates" / "index.html").read_text()
