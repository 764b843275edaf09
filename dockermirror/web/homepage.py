"""The usage page at ``/``: what to paste, for the host name the visitor used.

For that host (and scheme): Docker's daemon.json (merged into the file, never
written over it), containerd's hosts.toml for the host's registry and a
``_default`` one for every registry the mirror serves by ``?ns=``, the CRI
plugin's ``config_path`` for Kubernetes nodes (containerd 1.x and 2.x), Podman's
registries.conf, skopeo, ``docker pull`` for every route; then the route table
and the mirror's live status.

Self-contained: no external fonts, scripts, images or stylesheets (they are
often blocked exactly where a mirror is needed).  Its one inline style and one
inline script are fixed text in the template, allowed by hash in
:data:`CONTENT_SECURITY_POLICY`; the script only adds copy buttons, so without
it the snippets are plain selectable text.  English or Simplified Chinese, by
``?lang=`` or Accept-Language; Traditional Chinese readers are told, in their
script, that the page is in Simplified Chinese.

Every value put into the page is HTML-escaped here, the Host header included
(:func:`dockermirror.web.requests.valid_host` only vets it upstream of us).
Snippets are built as plain text and escaped once, when they become HTML.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import re
import time
from collections.abc import Iterable, Mapping
from html import escape
from string import Template

import attrs

from dockermirror import __version__
from dockermirror.config import DEFAULT_ROUTE, WELL_KNOWN, MirrorConfig, Registry, strip_port
from dockermirror.status import LiveStatus, QuotaReading, UpstreamState

ENGLISH = "en"
CHINESE = "zh"
# Simplified Chinese, with a notice in Traditional Chinese that it is.
TRADITIONAL = "zh-Hant"
LANGUAGES = (ENGLISH, CHINESE, TRADITIONAL)

# Where containerd looks for hosts.toml files (its documented default directory).
CERTS_D = "/etc/containerd/certs.d"

# Images that exist, for the registries where one comes to mind; others get a placeholder.
_EXAMPLES: Mapping[str, str] = {
    "registry.k8s.io": "pause:3.10",
    "k8s.gcr.io": "pause:3.10",
    "quay.io": "prometheus/prometheus",
    "gcr.io": "distroless/static",
    "mcr.microsoft.com": "dotnet/runtime",
}
_PLACEHOLDER = "NAMESPACE/IMAGE"

TEXTS: Mapping[str, Mapping[str, str]] = {
    ENGLISH: {
        "title": "Registry mirror",
        "intro": "A pull-through mirror of <code>{registry}</code> at <code>{host}</code>. "
        "Pull through it by name, or let Docker, containerd, Kubernetes and Podman use it "
        "on their own.",
        "intro_none": "A pull-through mirror of container registries. The host name "
        "<code>{host}</code> has no route of its own: pull by path prefix below, or use a "
        "host name from the route table.",
        "languages": "Language",
        "nav_pull": "Pull",
        "nav_docker": "Docker",
        "nav_containerd": "containerd and Kubernetes",
        "nav_podman": "Podman",
        "nav_skopeo": "skopeo",
        "nav_routes": "Routes",
        "nav_status": "Status",
        "login_title": "Log in first",
        "login_text": "This mirror asks for an account (anonymous pulls are refused). Log in "
        "once per machine; containerd and Kubernetes take the credentials as image pull "
        "secrets.",
        "login_optional": "This mirror has accounts; anonymous pulls are allowed, and an "
        "account may be allowed more:",
        "passthrough": "<code>{registry}</code> is pulled with your own account there: log "
        "in to the mirror with it.",
        "pull_title": "Pull through the mirror by name",
        "pull_text": "Put <code>{host}</code> in front of the image name, then give the "
        "image its usual name:",
        "pull_library": "Official images need no <code>library/</code>: "
        "<code>docker pull {host}/redis</code> works too.",
        "pull_insecure": "Over plain http Docker pulls from <code>{host}</code> only once it "
        "is listed in <code>insecure-registries</code> (the daemon.json change below does "
        "that; loopback addresses need no entry).",
        "pull_routes": "Every registry this mirror serves, and how to reach it, is in the "
        '<a href="#routes">route table</a>.',
        "docker_title": "Docker",
        "docker_text": "Docker uses a registry mirror for Docker Hub images only. This "
        "merges the mirror into <code>/etc/docker/daemon.json</code>, keeping the settings "
        "already there (the old file stays as <code>daemon.json.bak</code>; a file that is "
        "not valid JSON is left untouched), then restarts Docker:",
        "docker_hand": "Without python3, add these keys to the file by hand, keeping the "
        "rest of it (Docker Desktop: Settings, Docker Engine):",
        "docker_after": "<code>docker pull redis</code> then goes through the mirror, and "
        "straight to Docker Hub while the mirror is unreachable.",
        "docker_not_hub": "Docker's mirror setting covers Docker Hub images only, and "
        "<code>{host}</code> serves <code>{registry}</code>: pull by name as above.",
        "docker_hub_elsewhere": "Docker Hub is mirrored at {hosts}: open this page there "
        "for its daemon.json settings.",
        "containerd_title": "containerd and Kubernetes nodes",
        "containerd_text": "containerd reads one <code>hosts.toml</code> per registry from "
        "<code>{certs}</code>, and picks changes up without a restart. For "
        "<code>{registry}</code>, save this as <code>{path}</code>:",
        "containerd_default": "For every other registry, one <code>_default</code> file, "
        "saved as <code>{path}</code>. containerd then asks the mirror first for any "
        "registry, naming it in <code>?ns=</code>, and the mirror serves {registries}; for "
        "others containerd falls back to the registry itself.",
        "containerd_default_none": "This mirror serves no registry by name "
        "(<code>?ns=</code>), so a <code>_default</code> file would not help.",
        "containerd_http": "Plain http needs no <code>skip_verify</code>: the "
        "<code>http://</code> in the host's name says it.",
        "containerd_https": "If the mirror's certificate comes from a private CA, add "
        '<code>ca = "/etc/containerd/certs.d/ca.crt"</code> under the host.',
        "k8s_title": "Kubernetes nodes",
        "k8s_text": "The kubelet pulls through containerd's CRI plugin, which reads those "
        "files once its <code>config_path</code> points at the directory. On every node, "
        "set it in <code>/etc/containerd/config.toml</code> (remove any "
        "<code>registry.mirrors</code> tables there: containerd refuses both) and restart "
        "containerd. Pick the lines for the node's containerd version:",
        "k8s_v1": "containerd 1.x (<code>version = 2</code> at the top of the file):",
        "k8s_v2": "containerd 2.x (<code>version = 3</code> at the top of the file):",
        "k8s_check": "Restart and check on a node (ctr and nerdctl read the same directory):",
        "podman_title": "Podman, Buildah and CRI-O",
        "podman_text": "They read <code>registries.conf</code>. Save this as "
        "<code>{path}</code> (or in <code>~/.config/containers/registries.conf.d/</code> "
        "for rootless Podman); <code>{registry}</code> images then come through the mirror, "
        "and from the registry itself when the mirror fails:",
        "podman_insecure": "<code>insecure = true</code> lets them use plain http for the mirror.",
        "podman_more": "More registries through the mirror's path prefixes (append to the "
        "same file)",
        "podman_none": "The mirror serves no registry for this host name; use the path prefixes:",
        "skopeo_title": "skopeo",
        "skopeo_text": "Name the mirror in the image reference:",
        "skopeo_conf": "skopeo also reads the registries.conf above, so with it in place "
        "the usual names go through the mirror:",
        "routes_title": "Routes",
        "routes_text": "How this mirror chooses a registry: a path prefix first, then "
        "containerd's <code>?ns=</code>, then the host name the client used.",
        "routes_hosts": "By host name",
        "routes_prefixes": "By path prefix (and <code>?ns=</code>)",
        "routes_prefixes_none": "None: this mirror serves registries by host name only.",
        "routes_route": "Route",
        "routes_registry": "Registry",
        "routes_pull": "Pull",
        "routes_default": "any other host name",
        "routes_here": "(this page)",
        "routes_port": "Host names are shown with this page's port.",
        "status_title": "Status",
        "status_cache": "Cache",
        "status_cache_off": "off: every pull goes to the upstream",
        "status_cache_used": "{used} of {max} used ({percent})",
        "status_cache_bytes": "{used} used",
        "status_cache_entries": "{count} files",
        "status_hit_rate": "Cache hits",
        "status_hit_rate_value": "{percent} of answers",
        "status_hit_rate_none": "no pulls yet",
        "status_quota": "Docker Hub quota",
        "status_quota_value": "{remaining} of {limit} pulls left",
        "status_quota_window": " per {window}",
        "status_quota_unstated": "not stated by Docker Hub (not asked yet, or no limit)",
        "status_quota_floor": "revalidation stops at {floor}",
        "status_quota_holding": "Holding: cached tags are served without asking Docker Hub "
        "until {until}.",
        "status_upstreams": "Upstreams",
        "status_upstreams_none": "none asked yet",
        "status_up_ok": "answering",
        "status_up_failing": "failing",
        "status_up_unknown": "not asked yet",
        "status_up_checked": "last answer {time}",
        "copy": "Copy",
        "copied": "Copied",
        "copy_failed": "Selected: press Ctrl+C",
        "and": ", ",
        "hours": "{count} h",
        "seconds": "{count} s",
    },
    CHINESE: {
        "title": "镜像仓库代理",
        "intro": "<code>{host}</code> 是 <code>{registry}</code> 的拉取代理。可以在镜像名前加上本站地址拉取，"
        "也可以让 Docker、containerd、Kubernetes 和 Podman 自动经由本站拉取。",
        "intro_none": "容器镜像仓库的拉取代理。主机名 <code>{host}</code> 没有对应的路由："
        "请用下面的路径前缀拉取，或改用路由表中的主机名。",
        "languages": "语言",
        "nav_pull": "拉取",
        "nav_docker": "Docker",
        "nav_containerd": "containerd 与 Kubernetes",
        "nav_podman": "Podman",
        "nav_skopeo": "skopeo",
        "nav_routes": "路由",
        "nav_status": "状态",
        "login_title": "先登录",
        "login_text": "本站需要账号（不接受匿名拉取）。每台机器登录一次；containerd 和 Kubernetes "
        "请把账号配置为镜像拉取凭据（image pull secret）。",
        "login_optional": "本站设有账号；匿名也可以拉取，登录后可能可以拉取更多：",
        "passthrough": "<code>{registry}</code> 使用你自己在该仓库的账号拉取：请用这个账号登录本站。",
        "pull_title": "通过本站地址拉取",
        "pull_text": "在镜像名前加上 <code>{host}</code> 拉取，再改回原来的名字：",
        "pull_library": "官方镜像可以省略 <code>library/</code>：<code>docker pull {host}/redis</code> 也可以。",
        "pull_insecure": "通过 http 访问时，Docker 只有在 <code>insecure-registries</code> 中列出 "
        "<code>{host}</code> 后才能从它拉取（下面对 daemon.json 的修改会加上；回环地址不需要）。",
        "pull_routes": '本站代理的每个仓库及其访问方式见<a href="#routes">路由表</a>。',
        "docker_title": "Docker",
        "docker_text": "Docker 的镜像加速器只对 Docker Hub 的镜像生效。下面的命令把本站合并进 "
        "<code>/etc/docker/daemon.json</code>，保留文件中已有的设置（原文件另存为 "
        "<code>daemon.json.bak</code>；文件不是有效的 JSON 时不做任何修改），然后重启 Docker：",
        "docker_hand": "没有 python3 时，请手动把这些键加入该文件，并保留其余内容"
        "（Docker Desktop：设置中的 Docker Engine）：",
        "docker_after": "之后 <code>docker pull redis</code> 即经由本站；本站无法访问时直接从 Docker Hub 拉取。",
        "docker_not_hub": "Docker 的镜像加速设置只对 Docker Hub 的镜像生效，而 <code>{host}</code> "
        "代理的是 <code>{registry}</code>：请按上面的方法带地址拉取。",
        "docker_hub_elsewhere": "Docker Hub 的代理地址是 {hosts}：在那里打开本页可看到 daemon.json 的设置。",
        "containerd_title": "containerd 与 Kubernetes 节点",
        "containerd_text": "containerd 从 <code>{certs}</code> 为每个仓库读取一个 <code>hosts.toml</code>，"
        "修改后无需重启。为 <code>{registry}</code> 把下面的内容保存为 <code>{path}</code>：",
        "containerd_default": "其他所有仓库共用一个 <code>_default</code> 文件，保存为 <code>{path}</code>。"
        "之后 containerd 拉取任何仓库都会先询问本站，并在 <code>?ns=</code> 中指明仓库；本站代理 "
        "{registries}，其他仓库 containerd 会回退到仓库本身。",
        "containerd_default_none": "本站不按名称（<code>?ns=</code>）代理任何仓库，"
        "因此 <code>_default</code> 文件没有作用。",
        "containerd_http": "http 不需要 <code>skip_verify</code>：主机名中的 <code>http://</code> 已经说明。",
        "containerd_https": "如果本站的证书由私有 CA 签发，请在该主机下加上 "
        '<code>ca = "/etc/containerd/certs.d/ca.crt"</code>。',
        "k8s_title": "Kubernetes 节点",
        "k8s_text": "kubelet 通过 containerd 的 CRI 插件拉取镜像；CRI 插件的 <code>config_path</code> "
        "指向该目录后才会读取上述文件。在每个节点的 <code>/etc/containerd/config.toml</code> 中设置"
        "（并删除其中的 <code>registry.mirrors</code> 配置：两者同时存在时 containerd 会报错），"
        "然后重启 containerd。请按节点上 containerd 的版本选择：",
        "k8s_v1": "containerd 1.x（文件开头为 <code>version = 2</code>）：",
        "k8s_v2": "containerd 2.x（文件开头为 <code>version = 3</code>）：",
        "k8s_check": "重启后在节点上检查（ctr 和 nerdctl 也读取同一目录）：",
        "podman_title": "Podman、Buildah 与 CRI-O",
        "podman_text": "它们读取 <code>registries.conf</code>。把下面的内容保存为 <code>{path}</code>"
        "（rootless Podman 可放在 <code>~/.config/containers/registries.conf.d/</code>）；"
        "之后 <code>{registry}</code> 的镜像经由本站拉取，本站出错时回退到仓库本身：",
        "podman_insecure": "<code>insecure = true</code> 允许它们以 http 访问本站。",
        "podman_more": "通过本站的路径前缀代理更多仓库（追加到同一文件）",
        "podman_none": "本站没有为这个主机名代理仓库；请使用路径前缀：",
        "skopeo_title": "skopeo",
        "skopeo_text": "在镜像引用中写上本站地址：",
        "skopeo_conf": "skopeo 也读取上面的 registries.conf，配置好后原来的镜像名即经由本站：",
        "routes_title": "路由",
        "routes_text": "本站选择仓库的顺序：先看路径前缀，再看 containerd 的 <code>?ns=</code>，"
        "最后看客户端使用的主机名。",
        "routes_hosts": "按主机名",
        "routes_prefixes": "按路径前缀（及 <code>?ns=</code>）",
        "routes_prefixes_none": "无：本站只按主机名代理仓库。",
        "routes_route": "路由",
        "routes_registry": "仓库",
        "routes_pull": "拉取",
        "routes_default": "其他任何主机名",
        "routes_here": "（本页）",
        "routes_port": "主机名后附的是本页的端口。",
        "status_title": "状态",
        "status_cache": "缓存",
        "status_cache_off": "未启用：每次拉取都访问上游",
        "status_cache_used": "已用 {used}，共 {max}（{percent}）",
        "status_cache_bytes": "已用 {used}",
        "status_cache_entries": "{count} 个文件",
        "status_hit_rate": "缓存命中",
        "status_hit_rate_value": "{percent} 的响应",
        "status_hit_rate_none": "尚无拉取",
        "status_quota": "Docker Hub 配额",
        "status_quota_value": "剩余 {remaining} 次，共 {limit} 次",
        "status_quota_window": "（每 {window}）",
        "status_quota_unstated": "Docker Hub 未告知（尚未访问，或没有限制）",
        "status_quota_floor": "剩余 {floor} 次时停止重新验证",
        "status_quota_holding": "暂停中：在 {until} 之前，缓存中的标签不经 Docker Hub 验证直接提供。",
        "status_upstreams": "上游仓库",
        "status_upstreams_none": "尚未访问任何上游",
        "status_up_ok": "正常",
        "status_up_failing": "出错",
        "status_up_unknown": "尚未访问",
        "status_up_checked": "最近响应于 {time}",
        "copy": "复制",
        "copied": "已复制",
        "copy_failed": "已选中，请按 Ctrl+C",
        "and": "、",
        "hours": "{count} 小时",
        "seconds": "{count} 秒",
    },
}

# For readers of Traditional Chinese, in their script, above the Simplified page.
TRADITIONAL_NOTICE = (
    '<p class="notice" lang="zh-Hant">本頁只提供簡體中文版；'
    '也可閱讀 <a href="?lang=en" hreflang="en" lang="en">English</a> 版本。</p>'
)


def choose_language(accept_language: str | None, requested: str | None = None) -> str:
    """``requested`` (``?lang=``) when it names one of ours; else the best by Accept-Language.

    One of :data:`LANGUAGES`; English by default.  Traditional Chinese tags
    (zh-TW, zh-HK, zh-MO, zh-Hant) give :data:`TRADITIONAL`.
    """
    if requested:
        language = _language_of(requested)
        if language is not None:
            return language
    best, best_q = ENGLISH, 0.0
    for part in (accept_language or "").split(","):
        tag, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = -1.0
        language = _language_of(tag)
        # Strictly greater: of equal q-values the first listed wins, as the header means.
        if language is not None and 0 < q <= 1 and q > best_q:
            best, best_q = language, q
    return best


def content_language(language: str) -> str:
    """The language the page for ``language`` is written in: its Content-Language."""
    return "en" if language == ENGLISH else "zh-CN"


def _language_of(tag: str) -> str | None:
    parts = tag.strip().lower().replace("_", "-").split("-")
    if parts[0] == "en":
        return ENGLISH
    if parts[0] != "zh":
        return None
    rest = set(parts[1:])
    if "hant" in rest or (rest & {"tw", "hk", "mo"} and "hans" not in rest):
        return TRADITIONAL
    return CHINESE


@functools.cache
def _template() -> str:
    return (importlib.resources.files("dockermirror.web") / "templates" / "index.html").read_text(
        encoding="utf-8"
    )


def _inline(tag: str) -> str:
    """The text of the template's one ``<tag>`` element: fixed, so a hash can allow it."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", _template(), re.DOTALL)
    if len(found) != 1 or "$" in found[0]:
        raise RuntimeError(f"the usage page needs one fixed <{tag}> element, without $")
    return str(found[0])


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


# Nothing from anywhere, not even the mirror itself: only the page's own style and script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src {_csp_hash(_inline('style'))}; "
    f"script-src {_csp_hash(_inline('script'))}; "
    "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@attrs.frozen
class _Page:
    """What one rendering needs: the visitor's view of the mirror, and the words to use."""

    config: MirrorConfig
    registry: Registry | None
    host: str
    scheme: str
    texts: Mapping[str, str]

    @property
    def http(self) -> bool:
        return self.scheme != "https"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def t(self, key: str, **values: str) -> str:
        """Our own HTML text, with ``values`` escaped into it."""
        return self.texts[key].format(**{k: escape(v) for k, v in values.items()})

    def t_html(self, key: str, **values: str) -> str:
        """As :meth:`t`, for values that are already HTML built by this module."""
        return self.texts[key].format(**values)


def render_homepage(
    config: MirrorConfig,
    registry: Registry | None,
    host: str,
    scheme: str,
    language: str,
    status: LiveStatus,
) -> bytes:
    """The page for a visitor who reached the mirror as ``scheme://host``.

    ``registry``: the one the host routes to, None when it has no route.
    """
    texts = TEXTS[CHINESE if language == TRADITIONAL else language]
    page = _Page(config, registry, host, "https" if scheme == "https" else "http", texts)
    if registry is None:
        intro = page.t("intro_none", host=host)
    else:
        intro = page.t("intro", host=host, registry=_client_name(registry))
    sections = [
        TRADITIONAL_NOTICE if language == TRADITIONAL else "",
        _login_section(page),
        _pull_section(page),
        _docker_section(page),
        _containerd_section(page),
        _podman_section(page),
        _skopeo_section(page),
        _routes_section(page),
        _status_section(page, status),
    ]
    values = {
        "lang": content_language(language),
        "title": page.t("title"),
        "copy": escape(texts["copy"]),
        "copied": escape(texts["copied"]),
        "copy_failed": escape(texts["copy_failed"]),
        "languages": _language_links(page, language),
        "intro": intro,
        "nav": _nav(page),
        "body": "\n".join(s for s in sections if s),
        "footer": f"dockermirror {escape(__version__)}",
    }
    return Template(_template()).substitute(values).encode("utf-8")


# -- pieces of HTML ------------------------------------------------------------------------


def _snippet(text: str) -> str:
    """A block to paste: escaped here, once; the script gives it a copy button."""
    return f'<div class="snippet"><pre><code>{escape(text, quote=False)}</code></pre></div>'


def _section(anchor: str, title: str, *parts: str) -> str:
    body = "\n".join(p for p in parts if p)
    return f'<section id="{anchor}">\n<h2>{title}</h2>\n{body}\n</section>'


def _p(html: str, note: bool = False) -> str:
    return f'<p class="note">{html}</p>' if note else f"<p>{html}</p>"


def _code(value: str) -> str:
    return f"<code>{escape(value)}</code>"


def _language_links(page: _Page, language: str) -> str:
    links = []
    for code, label, lang in ((ENGLISH, "English", "en"), (CHINESE, "简体中文", "zh-CN")):
        current = ' aria-current="true"' if language.startswith(code) else ""
        links.append(
            f'<a href="?lang={code}" hreflang="{lang}" lang="{lang}"{current}>{label}</a>'
        )
    return f'<div class="languages" title="{escape(page.texts["languages"])}">' + (
        " · ".join(links) + "</div>"
    )


def _nav(page: _Page) -> str:
    anchors = ("pull", "docker", "containerd", "podman", "skopeo", "routes", "status")
    links = (f'<a href="#{a}">{page.t("nav_" + a)}</a>' for a in anchors)
    return "<nav>" + "\n".join(links) + "</nav>"


# -- what the snippets are about -----------------------------------------------------------


def _client_name(registry: Registry) -> str:
    """The registry as clients name it in image references (``ghcr.io``).

    A route straight to a URL names the registry by that URL; clients know it by its host.
    """
    if "://" in registry.name:
        url = registry.url
        default_port = {"http": 80, "https": 443}.get(url.scheme)
        return url.host if url.port in (None, default_port) else f"{url.host}:{url.port}"
    return registry.name


def _server(registry: Registry) -> str:
    """The registry's own address, as a client outside the mirror reaches it."""
    return WELL_KNOWN.get(registry.name) or str(registry.url.to_text())


def _example(registry: Registry) -> str:
    if registry.docker_hub:
        return "library/redis"
    return _EXAMPLES.get(registry.name, _PLACEHOLDER)


def _with_tag(image: str) -> str:
    last = image.rpartition("/")[2]
    return image if ":" in last else image + ":latest"


def _short(registry: Registry, image: str) -> str:
    """The name the image goes by without the mirror."""
    if registry.docker_hub:
        return image.removeprefix("library/")
    return f"{_client_name(registry)}/{image}"


def _by_ns(config: MirrorConfig) -> list[Registry]:
    """Registries a client may name by path prefix or ``?ns=`` (routing's rule)."""
    return sorted(
        (r for n, r in config.registries.items() if r.by_prefix and "://" not in n),
        key=lambda r: r.name,
    )


def _docker_hub_registry(page: _Page) -> bool:
    return page.registry is not None and page.registry.docker_hub


def _json(value: str) -> str:
    """A JSON, TOML and Python string literal."""
    return json.dumps(value)


def _port_of(host: str) -> str:
    if host.startswith("["):
        _, _, after = host.partition("]")
        return after[1:] if after.startswith(":") else ""
    return host.rpartition(":")[2] if host.count(":") == 1 else ""


def _joined(page: _Page, items: Iterable[str]) -> str:
    return page.texts["and"].join(items)


# -- sections ------------------------------------------------------------------------------


def _login_section(page: _Page) -> str:
    auth = page.config.policy.auth
    passthrough = page.registry is not None and page.registry.passthrough
    if not auth.enabled and not passthrough:
        return ""
    login = _snippet(f"docker login {page.host}\npodman login {page.host}")
    parts = []
    if auth.enabled:
        parts.append(_p(page.t("login_text" if not auth.anonymous else "login_optional")))
    if passthrough and page.registry is not None:
        parts.append(_p(page.t("passthrough", registry=_client_name(page.registry))))
    return _section("login", page.t("login_title"), *parts, login)


def _pull_section(page: _Page) -> str:
    parts = []
    registry = page.registry
    if registry is not None:
        image = _example(registry)
        mirrored = f"{page.host}/{image}"
        parts.append(_p(page.t("pull_text", host=page.host)))
        parts.append(
            _snippet(f"docker pull {mirrored}\ndocker tag {mirrored} {_short(registry, image)}")
        )
        if registry.docker_hub:
            parts.append(_p(page.t("pull_library", host=page.host), note=True))
    else:
        prefixed = _by_ns(page.config)
        if prefixed:
            lines = [f"docker pull {page.host}/{r.name}/{_example(r)}" for r in prefixed[:3]]
            parts.append(_snippet("\n".join(lines)))
    if page.http:
        parts.append(_p(page.t("pull_insecure", host=page.host), note=True))
    parts.append(_p(page.texts["pull_routes"]))
    return _section("pull", page.t("pull_title"), *parts)


def docker_merge_script(base: str, host: str, http: bool) -> str:
    """A python3 program that adds the mirror to daemon.json, keeping everything else.

    Run again, it changes nothing; the first original stays in ``daemon.json.bak``, and
    the file keeps its mode.
    """
    insecure = (
        "\ninsecure = config.get('insecure-registries') or []\n"
        "config['insecure-registries'] = insecure\n"
        f"if {_json(host)} not in insecure:\n"
        f"    insecure.append({_json(host)})"
        if http
        else ""
    )
    return f"""sudo python3 - <<'EOF'
import json, os, shutil
path = '/etc/docker/daemon.json'
config = {{}}
if os.path.exists(path):
    with open(path) as f:
        config = json.loads(f.read().strip() or '{{}}')
    if not os.path.exists(path + '.bak'):
        shutil.copy2(path, path + '.bak')
mirrors = config.get('registry-mirrors') or []
config['registry-mirrors'] = mirrors
if {_json(base)} not in mirrors:
    mirrors.insert(0, {_json(base)}){insecure}
os.makedirs('/etc/docker', exist_ok=True)
with open(path + '.new', 'w') as f:
    json.dump(config, f, indent=2)
    f.write('\\n')
if os.path.exists(path):
    shutil.copymode(path, path + '.new')
os.replace(path + '.new', path)
print(json.dumps(config, indent=2))
EOF
sudo systemctl restart docker"""


def _docker_section(page: _Page) -> str:
    if not _docker_hub_registry(page):
        hub_hosts = sorted(
            h
            for h, name in page.config.routes.items()
            if h != DEFAULT_ROUTE and page.config.registries[name].docker_hub
        )
        registry = page.registry
        parts = []
        if registry is not None:
            parts.append(
                _p(page.t("docker_not_hub", host=page.host, registry=_client_name(registry)))
            )
        if hub_hosts:
            port = _port_of(page.host)
            hosts = (_code(f"{h}:{port}" if port else h) for h in hub_hosts)
            parts.append(_p(page.t_html("docker_hub_elsewhere", hosts=_joined(page, hosts))))
        return _section("docker", page.t("docker_title"), *parts)
    keys = [f'  "registry-mirrors": [{_json(page.base)}]']
    if page.http:
        keys.append(f'  "insecure-registries": [{_json(page.host)}]')
    by_hand = "{\n" + ",\n".join(keys) + "\n}"
    return _section(
        "docker",
        page.t("docker_title"),
        _p(page.texts["docker_text"]),
        _snippet(docker_merge_script(page.base, page.host, page.http)),
        _p(page.texts["docker_after"]),
        _p(page.texts["docker_hand"], note=True),
        _snippet(by_hand),
    )


def containerd_hosts_toml(base: str, server: str | None) -> str:
    """A hosts.toml sending pulls to the mirror first; ``server``: the fallback."""
    head = f"server = {_json(server)}\n\n" if server else ""
    return f'{head}[host.{_json(base)}]\n  capabilities = ["pull", "resolve"]'


def _containerd_section(page: _Page) -> str:
    parts = []
    registry = page.registry
    by_ns = _by_ns(page.config)
    if registry is not None:
        name = _client_name(registry)
        path = f"{CERTS_D}/{name}/hosts.toml"
        # containerd's ?ns= names this registry, and the mirror serves the Host's registry so.
        parts.append(_p(page.t("containerd_text", certs=CERTS_D, registry=name, path=path)))
        parts.append(_snippet(containerd_hosts_toml(page.base, _server(registry))))
    if by_ns:
        names = _joined(page, (_code(r.name) for r in by_ns))
        path = f"{CERTS_D}/_default/hosts.toml"
        parts.append(_p(page.t_html("containerd_default", path=escape(path), registries=names)))
        parts.append(_snippet(containerd_hosts_toml(page.base, None)))
    else:
        parts.append(_p(page.texts["containerd_default_none"]))
    parts.append(_p(page.texts["containerd_http" if page.http else "containerd_https"], True))
    hub = next((r for r in by_ns if r.docker_hub), None)
    check_image = "docker.io/library/redis:latest"
    if registry is not None:
        check_image = f"{_client_name(registry)}/{_with_tag(_example(registry))}"
    elif hub is None and by_ns:
        check_image = f"{by_ns[0].name}/{_with_tag(_example(by_ns[0]))}"
    k8s = [
        f"<h3>{page.t('k8s_title')}</h3>",
        _p(page.texts["k8s_text"]),
        _p(page.texts["k8s_v1"]),
        _snippet(f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{CERTS_D}"'),
        _p(page.texts["k8s_v2"]),
        _snippet(f'[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "{CERTS_D}"'),
        _p(page.texts["k8s_check"]),
        _snippet(
            "sudo systemctl restart containerd\n"
            f"sudo crictl pull {check_image}\n"
            f"sudo ctr images pull --hosts-dir {CERTS_D} {check_image}"
        ),
    ]
    return _section("containerd", page.t("containerd_title"), *parts, *k8s)


def podman_registry(prefix: str, mirror: str, http: bool) -> str:
    """One ``[[registry]]`` of registries.conf, with the mirror in front of it."""
    insecure = "\ninsecure = true" if http else ""
    return (
        f"[[registry]]\nprefix = {_json(prefix)}\nlocation = {_json(prefix)}\n\n"
        f"[[registry.mirror]]\nlocation = {_json(mirror)}{insecure}"
    )


def _podman_section(page: _Page) -> str:
    path = "/etc/containers/registries.conf.d/dockermirror.conf"
    registry = page.registry
    parts = []
    own = None
    if registry is not None:
        own = _client_name(registry)
        parts.append(_p(page.t("podman_text", path=path, registry=own)))
        parts.append(_snippet(podman_registry(own, page.host, page.http)))
    else:
        parts.append(_p(page.texts["podman_none"]))
    others = [r for r in _by_ns(page.config) if r.name != own]
    if others:
        blocks = "\n\n".join(
            podman_registry(r.name, f"{page.host}/{r.name}", page.http) for r in others
        )
        if registry is None:
            parts.append(_snippet(blocks))
        else:
            parts.append(
                f"<details><summary>{page.t('podman_more')}</summary>\n"
                f"{_snippet(blocks)}\n</details>"
            )
    if page.http:
        parts.append(_p(page.texts["podman_insecure"], note=True))
    return _section("podman", page.t("podman_title"), *parts)


def _skopeo_section(page: _Page) -> str:
    registry = page.registry
    if registry is not None:
        image = _with_tag(_example(registry))
        direct = f"{page.host}/{image}"
        usual = f"{_client_name(registry)}/{image}"
    else:
        by_ns = _by_ns(page.config)
        if not by_ns:
            return ""
        image = _with_tag(_example(by_ns[0]))
        direct = f"{page.host}/{by_ns[0].name}/{image}"
        usual = f"{by_ns[0].name}/{image}"
    tls = " --tls-verify=false" if page.http else ""
    src_tls = " --src-tls-verify=false" if page.http else ""
    archive = image.rpartition("/")[2].partition(":")[0] + ".tar"
    return _section(
        "skopeo",
        page.t("skopeo_title"),
        _p(page.texts["skopeo_text"]),
        _snippet(
            f"skopeo inspect{tls} docker://{direct}\n"
            f"skopeo copy{src_tls} docker://{direct} oci-archive:{archive}"
        ),
        _p(page.texts["skopeo_conf"]),
        _snippet(f"skopeo inspect docker://{usual}"),
    )


def _routes_section(page: _Page) -> str:
    config = page.config
    visited = strip_port(page.host.lower())
    port = _port_of(page.host)
    here = f' <span class="muted">{page.t("routes_here")}</span>'
    rows = []
    # The default route last: it is what every other host name gets.
    hosts = sorted(config.routes, key=lambda h: (h == DEFAULT_ROUTE, h))
    for route in hosts:
        registry = config.registries[config.routes[route]]
        image = _example(registry)
        if route == DEFAULT_ROUTE:
            label = f'<span class="muted">{page.t("routes_default")}</span>'
            pull_host = page.host if visited not in config.routes else None
            mark = here if pull_host is not None else ""
        else:
            label = _code(route)
            pull_host = page.host if route == visited else (f"{route}:{port}" if port else route)
            mark = here if route == visited else ""
        pull = _code(f"docker pull {pull_host}/{image}") if pull_host else ""
        rows.append(
            f"<tr><td>{label}{mark}</td><td>{_code(_client_name(registry))}</td>"
            f"<td>{pull}</td></tr>"
        )
    head = (
        f"<tr><th>{page.t('routes_route')}</th><th>{page.t('routes_registry')}</th>"
        f"<th>{page.t('routes_pull')}</th></tr>"
    )
    by_host = _table(head, rows)
    by_ns = _by_ns(config)
    if by_ns:
        prefix_head = (
            f"<tr><th>{page.t('routes_registry')}</th><th>{page.t('routes_pull')}</th></tr>"
        )
        prefix_rows = [
            f"<tr><td>{_code(r.name)}</td>"
            f"<td>{_code(f'docker pull {page.host}/{r.name}/{_example(r)}')}</td></tr>"
            for r in by_ns
        ]
        by_prefix = _table(prefix_head, prefix_rows)
    else:
        by_prefix = _p(page.texts["routes_prefixes_none"])
    port_note = _p(page.texts["routes_port"], note=True) if port and len(hosts) > 1 else ""
    return _section(
        "routes",
        page.t("routes_title"),
        _p(page.texts["routes_text"]),
        f"<h3>{page.texts['routes_hosts']}</h3>",
        by_host,
        port_note,
        f"<h3>{page.texts['routes_prefixes']}</h3>",
        by_prefix,
    )


def _table(head: str, rows: list[str]) -> str:
    """A table that scrolls sideways on a narrow screen rather than breaking commands."""
    return f'<div class="wide"><table>\n{head}\n' + "\n".join(rows) + "\n</table></div>"


# -- live status ---------------------------------------------------------------------------


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def _time(seconds: float) -> str:
    stamp = time.gmtime(seconds)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)
    return f'<time datetime="{iso}">{time.strftime("%Y-%m-%d %H:%M UTC", stamp)}</time>'


def _window(page: _Page, seconds: int) -> str:
    if seconds % 3600 == 0:
        return page.texts["hours"].format(count=seconds // 3600)
    return page.texts["seconds"].format(count=seconds)


def _cache_status(page: _Page, status: LiveStatus) -> str:
    if status.cache_bytes is None:
        return f'<span class="muted">{page.t("status_cache_off")}</span>'
    used = _size(status.cache_bytes)
    if status.cache_max_bytes:
        text = page.t(
            "status_cache_used",
            used=used,
            max=_size(status.cache_max_bytes),
            percent=_percent(status.cache_bytes / status.cache_max_bytes),
        )
    else:
        text = page.t("status_cache_bytes", used=used)
    if status.cache_entries is not None:
        text += "; " + page.t("status_cache_entries", count=f"{status.cache_entries:,}")
    return text


def _hit_rate(page: _Page, status: LiveStatus) -> str:
    if status.hit_rate is None:
        return f'<span class="muted">{page.t("status_hit_rate_none")}</span>'
    return page.t("status_hit_rate_value", percent=_percent(status.hit_rate))


def _quota(page: _Page, quota: QuotaReading) -> str:
    if quota.limit is None or quota.remaining is None:
        text = f'<span class="muted">{page.t("status_quota_unstated")}</span>'
    else:
        text = page.t("status_quota_value", remaining=str(quota.remaining), limit=str(quota.limit))
        if quota.window:
            text += page.t("status_quota_window", window=_window(page, quota.window))
    if quota.floor:
        text += (
            f' <span class="muted">({page.t("status_quota_floor", floor=str(quota.floor))})</span>'
        )
    if quota.holding_until is not None:
        held = page.t_html("status_quota_holding", until=_time(quota.holding_until))
        text += f'<br><span class="bad">{held}</span>'
    return text


def _upstream(page: _Page, state: UpstreamState) -> str:
    if state.ok is None:
        verdict = f'<span class="unknown">{page.t("status_up_unknown")}</span>'
    elif state.ok:
        verdict = f'<span class="ok">{page.t("status_up_ok")}</span>'
    else:
        verdict = f'<span class="bad">{page.t("status_up_failing")}</span>'
    details = []
    if state.problem:
        details.append(escape(state.problem))
    if state.checked is not None:
        details.append(page.t_html("status_up_checked", time=_time(state.checked)))
    more = f' <span class="muted">({"; ".join(details)})</span>' if details else ""
    return f"<li>{_code(state.name)}: {verdict}{more}</li>"


def _status_section(page: _Page, status: LiveStatus) -> str:
    rows = [
        (page.t("status_cache"), _cache_status(page, status)),
        (page.t("status_hit_rate"), _hit_rate(page, status)),
    ]
    if status.hub_quota is not None:
        rows.append((page.t("status_quota"), _quota(page, status.hub_quota)))
    if status.upstreams:
        upstreams = "\n".join(_upstream(page, u) for u in status.upstreams)
        rows.append((page.t("status_upstreams"), f'<ul class="upstreams">{upstreams}</ul>'))
    else:
        none = f'<span class="muted">{page.t("status_upstreams_none")}</span>'
        rows.append((page.t("status_upstreams"), none))
    items = "\n".join(f"<dt>{term}</dt><dd>{value}</dd>" for term, value in rows)
    return _section("status", page.t("status_title"), f"<dl>\n{items}\n</dl>")
