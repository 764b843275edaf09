"""The usage page: its snippets for every client, the route table, live status, languages,
escaping and self-containment, rendered directly; then a few checks through the app.

The browser's view of the same page is in test_homepage_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dockermirror.config import MirrorConfig, build_config
from dockermirror.status import LiveStatus, QuotaReading, UpstreamState
from dockermirror.web.homepage import (
    CONTENT_SECURITY_POLICY,
    TEXTS,
    TRADITIONAL,
    choose_language,
    content_language,
    render_homepage,
)
from tests.fakes import FakeRegistry, Harness

HOST = "docker.example.com:5000"
ROUTES = {"routes": {"*": "docker.io", "ghcr.example.com": "ghcr.io"}}


class Parsed(HTMLParser):
    """The page as a browser would read it: snippets' text, elements, attributes."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.snippets: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: dict[str, list[str]] = {"style": [], "script": []}
        self.text: list[str] = []
        self._stack: list[str] = []
        self._snippet: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "br":
            self.text.append("\n")
            return
        if tag == "code" and self._stack[-2:] == ["div", "pre"]:
            self._snippet = []
        if tag in self.inline:
            self.inline[tag].append("")
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._snippet is not None:
            self.snippets.append("".join(self._snippet))
            self._snippet = None
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._snippet is not None:
            self._snippet.append(data)
        if self._stack and self._stack[-1] in self.inline:
            self.inline[self._stack[-1]][-1] += data
        else:
            self.text.append(data)

    def snippet(self, containing: str) -> str:
        found = [s for s in self.snippets if containing in s]
        assert len(found) == 1, (containing, self.snippets)
        return found[0]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def config_of(toml: dict[str, Any] | None = None) -> MirrorConfig:
    return build_config(toml if toml is not None else ROUTES)


def render(
    config: MirrorConfig | None = None,
    host: str = HOST,
    scheme: str = "http",
    language: str = "en",
    status: LiveStatus | None = None,
    registry: str | None = "*",
) -> str:
    """The page; ``registry`` is the route key whose registry the host reaches (None: none)."""
    config = config or config_of()
    chosen = None if registry is None else config.registries[config.routes[registry]]
    return render_homepage(config, chosen, host, scheme, language, status or LiveStatus()).decode()


# -- Docker ---------------------------------------------------------------------------------


def test_docker_snippets_for_the_visited_host_over_http() -> None:
    page = Parsed(render())
    assert page.snippet("docker pull") == (
        f"docker pull {HOST}/library/redis\ndocker tag {HOST}/library/redis redis"
    )
    # By hand, the keys to add: the mirror, and the host as insecure since this is http.
    assert json.loads(page.snippet('"registry-mirrors"')) == {
        "registry-mirrors": [f"http://{HOST}"],
        "insecure-registries": [HOST],
    }
    merge = page.snippet("sudo python3")
    assert merge.endswith("EOF\nsudo systemctl restart docker")
    # Never written over: the page has no tee (the old page's `sudo tee daemon.json`).
    assert not any("tee" in s for s in page.snippets)


def test_docker_snippets_over_https_have_no_insecure_settings() -> None:
    page = Parsed(render(scheme="https"))
    assert json.loads(page.snippet('"registry-mirrors"')) == {
        "registry-mirrors": [f"https://{HOST}"]
    }
    assert "insecure-registries" not in page.snippet("sudo python3")
    assert not any("insecure" in s or "tls-verify" in s for s in page.snippets)


def _merge_program(page: Parsed, etc: Path) -> str:
    script = page.snippet("sudo python3")
    program = script.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert program.count("/etc/docker") == 2
    return program.replace("/etc/docker", str(etc))


def _run(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-"], input=program, capture_output=True, text=True, timeout=60
    )


def test_the_daemon_json_merge_keeps_what_is_there(tmp_path: Path) -> None:
    """The page's own program, run on a daemon.json with settings of its own."""
    program = _merge_program(Parsed(render()), tmp_path / "docker")
    (tmp_path / "docker").mkdir()
    daemon = tmp_path / "docker" / "daemon.json"
    before = '{"log-driver": "journald", "registry-mirrors": ["https://other.example"]}\n'
    daemon.write_text(before)
    daemon.chmod(0o600)
    for _ in range(2):  # twice: the second run changes nothing
        assert _run(program).returncode == 0
        assert json.loads(daemon.read_text()) == {
            "log-driver": "journald",
            "registry-mirrors": [f"http://{HOST}", "https://other.example"],
            "insecure-registries": [HOST],
        }
    # The original stays in the backup, however often it runs; the file keeps its mode.
    assert (tmp_path / "docker" / "daemon.json.bak").read_text() == before
    assert daemon.stat().st_mode & 0o777 == 0o600


def test_the_daemon_json_merge_takes_null_lists(tmp_path: Path) -> None:
    program = _merge_program(Parsed(render()), tmp_path / "docker")
    (tmp_path / "docker").mkdir()
    daemon = tmp_path / "docker" / "daemon.json"
    daemon.write_text('{"registry-mirrors": null, "insecure-registries": null}')
    assert _run(program).returncode == 0
    assert json.loads(daemon.read_text()) == {
        "registry-mirrors": [f"http://{HOST}"],
        "insecure-registries": [HOST],
    }


def test_the_daemon_json_merge_creates_the_file_and_refuses_a_broken_one(
    tmp_path: Path,
) -> None:
    program = _merge_program(Parsed(render(scheme="https")), tmp_path / "docker")
    daemon = tmp_path / "docker" / "daemon.json"
    assert _run(program).returncode == 0
    assert json.loads(daemon.read_text()) == {"registry-mirrors": [f"https://{HOST}"]}
    daemon.write_text("")  # an empty file is an empty configuration
    assert _run(program).returncode == 0
    assert json.loads(daemon.read_text()) == {"registry-mirrors": [f"https://{HOST}"]}
    daemon.write_text('{"debug": true,')
    result = _run(program)
    assert result.returncode != 0 and "JSONDecodeError" in result.stderr
    assert daemon.read_text() == '{"debug": true,'


def test_a_host_for_another_registry_gets_no_docker_mirror_settings() -> None:
    page = Parsed(render(host="ghcr.example.com", registry="ghcr.example.com"))
    assert page.snippet("docker pull") == (
        "docker pull ghcr.example.com/NAMESPACE/IMAGE\n"
        "docker tag ghcr.example.com/NAMESPACE/IMAGE ghcr.io/NAMESPACE/IMAGE"
    )
    assert not any("registry-mirrors" in s or "python3" in s for s in page.snippets)
    assert "Docker's mirror setting covers Docker Hub images only" in page.all_text


def test_a_host_for_another_registry_names_the_docker_hub_host() -> None:
    config = config_of({"routes": {"hub.example.com": "docker.io", "*": "ghcr.io"}})
    page = Parsed(render(config, host="other.example.com:5000"))
    assert "Docker Hub is mirrored at hub.example.com:5000" in page.all_text


# -- containerd and Kubernetes --------------------------------------------------------------


def test_containerd_hosts_toml_for_the_host_registry_and_default() -> None:
    page = Parsed(render())
    assert page.snippet("server =") == (
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."http://{HOST}"]\n  capabilities = ["pull", "resolve"]'
    )
    assert "/etc/containerd/certs.d/docker.io/hosts.toml" in page.all_text
    default = [s for s in page.snippets if s.startswith("[host.")]
    assert default == [f'[host."http://{HOST}"]\n  capabilities = ["pull", "resolve"]']
    assert "/etc/containerd/certs.d/_default/hosts.toml" in page.all_text
    # skip_verify is for TLS: an http:// host needs none, over https neither (a real cert).
    for scheme in ("http", "https"):
        assert not any("skip_verify" in s for s in Parsed(render(scheme=scheme)).snippets)
    assert '[host."https://' in Parsed(render(scheme="https")).snippet("server =")


def test_kubernetes_nodes_get_both_containerd_config_keys() -> None:
    page = Parsed(render())
    assert page.snippet("grpc.v1.cri") == (
        '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"'
    )
    assert page.snippet("cri.v1.images") == (
        '[plugins."io.containerd.cri.v1.images".registry]\n'
        '  config_path = "/etc/containerd/certs.d"'
    )
    check = page.snippet("crictl")
    assert "sudo crictl pull docker.io/library/redis:latest" in check
    assert "ctr images pull --hosts-dir /etc/containerd/certs.d docker.io/library/redis" in check


def test_containerd_reaches_the_hosts_registry_even_when_it_is_not_by_prefix() -> None:
    """A registry with the operator's credentials is not by_prefix: ?ns= reaches it only
    through the Host that routes to it, which is the one the page is for."""
    config = config_of(
        {
            "registries": {"docker.io": {"username": "hub-account", "password": "s3cret"}},
            "well_known_registries": False,
            "routes": {"*": "docker.io", "ghcr.example.com": "ghcr.io"},
        }
    )
    page = Parsed(render(config))
    assert page.snippet('server = "https://registry-1.docker.io"')
    assert "the mirror serves ghcr.io;" in page.all_text
    assert "s3cret" not in render(config) and "hub-account" not in render(config)


# -- Podman and skopeo ----------------------------------------------------------------------


def test_podman_registries_conf_over_http_and_https() -> None:
    block = (
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
        f'[[registry.mirror]]\nlocation = "{HOST}"'
    )
    assert Parsed(render()).snippet('prefix = "docker.io"') == block + "\ninsecure = true"
    assert Parsed(render(scheme="https")).snippet('prefix = "docker.io"') == block


def test_podman_reaches_other_registries_by_path_prefix() -> None:
    more = Parsed(render()).snippet('prefix = "quay.io"')
    assert f'[[registry.mirror]]\nlocation = "{HOST}/quay.io"\ninsecure = true' in more
    assert f'location = "{HOST}/ghcr.io"' in more
    assert f'location = "{HOST}/docker.io"' not in more  # that one is the host's own


def test_skopeo_through_the_mirror() -> None:
    assert Parsed(render()).snippet("skopeo inspect --") == (
        f"skopeo inspect --tls-verify=false docker://{HOST}/library/redis:latest\n"
        f"skopeo copy --src-tls-verify=false docker://{HOST}/library/redis:latest "
        "oci-archive:redis.tar"
    )
    assert (
        Parsed(render(scheme="https"))
        .snippet("skopeo copy")
        .startswith(f"skopeo inspect docker://{HOST}/library/redis:latest\n")
    )


# -- routes ---------------------------------------------------------------------------------


def test_route_table_pulls_for_every_host_route_and_prefix() -> None:
    config = config_of(
        {
            "routes": {"*": "docker.io", "ghcr.example.com": "ghcr.io"},
            "registries": {
                "private.test": {"url": "https://private.test", "username": "u", "password": "p"}
            },
        }
    )
    page = render(config)
    text = Parsed(page).all_text
    assert "docker pull ghcr.example.com:5000/NAMESPACE/IMAGE" in text
    assert f"docker pull {HOST}/library/redis" in text
    assert f"docker pull {HOST}/quay.io/prometheus/prometheus" in text
    assert f"docker pull {HOST}/registry.k8s.io/pause:3.10" in text
    # Reached only by the routes that name it: no prefix row, no podman block.
    assert "private.test" not in page
    # The visited host falls under "*": that row is marked as this page.
    row = re.search(r"<tr><td>[^\n]*any other host name[^\n]*</tr>", page)
    assert row is not None and "(this page)" in row[0]


def test_a_host_with_no_route_gets_prefixes_only() -> None:
    config = config_of({"routes": {"hub.example.com": "docker.io"}})
    page = Parsed(render(config, host="unrouted.example.com", registry=None))
    assert "has no route of its own" in page.all_text
    assert not any("registry-mirrors" in s or s.startswith("server =") for s in page.snippets)
    pulls = page.snippet("docker pull unrouted.example.com/docker.elastic.co/")
    assert pulls.startswith("docker pull unrouted.example.com/docker.elastic.co/NAMESPACE/IMAGE")
    assert 'location = "unrouted.example.com/docker.io"' in page.snippet('prefix = "docker.io"')


def test_a_route_to_a_url_is_named_by_its_host() -> None:
    config = config_of({"routes": {"*": "https://registry.example.com:5443"}})
    page = Parsed(render(config))
    assert page.snippet('prefix = "registry.example.com:5443"').startswith(
        '[[registry]]\nprefix = "registry.example.com:5443"\n'
        'location = "registry.example.com:5443"\n\n'
        f'[[registry.mirror]]\nlocation = "{HOST}"'
    )
    assert "docker tag docker.example.com:5000/NAMESPACE/IMAGE registry.example.com:5443/" in (
        page.snippet("docker pull")
    )


# -- live status ----------------------------------------------------------------------------


def status_rows(page: str) -> dict[str, str]:
    """The status list, as text: its terms to their values."""
    section = page.split('<section id="status">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", section, re.DOTALL)
    return {term: " ".join(Parsed(value).all_text.split()) for term, value in rows}


def test_status_with_every_value() -> None:
    status = LiveStatus(
        cache_bytes=3 * 1024**3,
        cache_max_bytes=20 * 1024**3,
        cache_entries=1234,
        hit_rate=0.875,
        hub_quota=QuotaReading(
            limit=100, remaining=12, window=21600, floor=10, holding_until=1_700_000_000
        ),
        upstreams=(
            UpstreamState("docker.io", True, 1_700_000_000),
            UpstreamState("ghcr.io", False, 1_700_000_100, "timed out"),
            UpstreamState("quay.io"),
        ),
    )
    assert status_rows(render(status=status)) == {
        "Cache": "3.0 GiB of 20.0 GiB used (15%); 1,234 files",
        "Cache hits": "88% of answers",
        "Docker Hub quota": "12 of 100 pulls left per 6 h (revalidation stops at 10)"
        " Holding: cached tags are served without asking Docker Hub until 2023-11-14 22:13 UTC.",
        "Upstreams": "docker.io: answering (last answer 2023-11-14 22:13 UTC)"
        " ghcr.io: failing (timed out; last answer 2023-11-14 22:15 UTC)"
        " quay.io: not asked yet",
    }


def test_status_degrades_when_values_are_missing() -> None:
    # No hub_quota: no route reaches Docker Hub, so no row for it.
    assert status_rows(render(status=LiveStatus())) == {
        "Cache": "off: every pull goes to the upstream",
        "Cache hits": "no pulls yet",
        "Upstreams": "none asked yet",
    }
    partial = LiveStatus(cache_bytes=512, hub_quota=QuotaReading(), hit_rate=0.0)
    assert status_rows(render(status=partial)) == {
        "Cache": "512 B used",
        "Cache hits": "0% of answers",
        "Docker Hub quota": "not stated by Docker Hub (not asked yet, or no limit)",
        "Upstreams": "none asked yet",
    }
    unlimited = LiveStatus(cache_bytes=0, cache_max_bytes=0, cache_entries=0)
    assert status_rows(render(status=unlimited))["Cache"] == "0 B used; 0 files"


# -- escaping and self-containment ----------------------------------------------------------

HOSTILE = 'evil.example"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_every_inserted_value_is_escaped() -> None:
    """The Host header is the client's; upstream problems are the upstream's."""
    status = LiveStatus(upstreams=(UpstreamState("docker.io", False, None, "<b>bad</b>"),))
    for language in ("en", "zh", TRADITIONAL):
        page = render(host=HOSTILE, language=language, status=status)
        parsed = Parsed(page)
        assert [t for t, _ in parsed.tags].count("script") == 1  # the page's own
        assert not any(t in ("img", "b") for t, _ in parsed.tags)
        assert not any("onerror" in a or "src" in a for _, attrs in parsed.tags for a in attrs)
        # Shown as the text it is.
        assert f"docker pull {HOSTILE}/library/redis" in parsed.snippet("docker pull")
        assert "<b>bad</b>" in parsed.all_text


def test_the_page_is_self_contained() -> None:
    page = render()
    parsed = Parsed(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("link", "img", "iframe", "object", "embed", "base", "form"), tag
        assert "src" not in attrs and "style" not in attrs, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        href = attrs.get("href")
        assert href is None or href.startswith(("?lang=", "#")), href
    css = parsed.inline["style"][0]
    assert "url(" not in css and "@import" not in css and "@font-face" not in css


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_content_security_policy_allows_exactly_the_page_inline_parts() -> None:
    policy = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    for language in ("en", "zh", TRADITIONAL):
        parsed = Parsed(render(language=language, host=HOSTILE))
        assert [policy["style-src"]] == [_hash(s) for s in parsed.inline["style"]]
        assert [policy["script-src"]] == [_hash(s) for s in parsed.inline["script"]]


# -- languages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "requested", "language"),
    [
        (None, None, "en"),
        ("zh-CN", None, "zh"),
        ("zh", None, "zh"),
        ("en-US,en;q=0.9,zh;q=0.8", None, "en"),
        ("fr-FR,zh-CN;q=0.5,en;q=0.4", None, "zh"),
        ("de", None, "en"),
        ("*", None, "en"),
        ("zh;q=0,en", None, "en"),
        ("zh;q=bad, en;q=0.5", None, "en"),
        ("en;q=0.8, zh;q=0.8", None, "en"),  # a tie: the first listed
        ("zh-TW", None, TRADITIONAL),
        ("zh-HK,en;q=0.5", None, TRADITIONAL),
        ("zh-Hant-TW", None, TRADITIONAL),
        ("zh_TW", None, TRADITIONAL),
        ("zh-Hans-HK", None, "zh"),
        # ?lang= wins when it names one of ours; otherwise the header decides.
        ("zh-CN", "en", "en"),
        ("en", "zh", "zh"),
        ("zh-TW", "zh", "zh"),
        ("en", "zh-TW", TRADITIONAL),
        ("zh-CN", "fr", "zh"),
        ("zh-CN", "", "zh"),
    ],
)
def test_language_choice(header: str | None, requested: str | None, language: str) -> None:
    assert choose_language(header, requested) == language


def test_both_languages_say_the_same_things() -> None:
    """Every text in both languages, with the same values put into it."""

    def fields(text: str) -> list[str]:
        return sorted(name for _, name, _, _ in string.Formatter().parse(text) if name)

    assert TEXTS["en"].keys() == TEXTS["zh"].keys()
    for key, english in TEXTS["en"].items():
        assert fields(english) == fields(TEXTS["zh"][key]), key


def test_content_language_is_the_language_written() -> None:
    assert [content_language(x) for x in ("en", "zh", TRADITIONAL)] == ["en", "zh-CN", "zh-CN"]


def test_chinese_page() -> None:
    page = render(language="zh")
    assert '<html lang="zh-CN"' in page
    parsed = Parsed(page)
    assert "通过本站地址拉取" in parsed.all_text and "状态" in parsed.all_text
    assert parsed.snippet("docker pull").startswith(f"docker pull {HOST}/library/redis")
    assert '<body data-copy="复制"' in page
    assert "本頁" not in page  # no notice for Simplified readers


def test_traditional_chinese_readers_are_told_the_page_is_simplified() -> None:
    page = render(language=TRADITIONAL)
    assert '<html lang="zh-CN"' in page
    notice = re.search(r'<p class="notice" lang="zh-Hant">(.*?)</p>', page)
    assert notice is not None
    assert "本頁只提供簡體中文版" in notice[1]
    assert '<a href="?lang=en" hreflang="en" lang="en">English</a>' in notice[1]
    assert "通过本站地址拉取" in page  # the Simplified page itself follows
    for language in ("en", "zh"):
        assert 'class="notice"' not in render(language=language)


def test_the_language_switch_links_both_languages() -> None:
    for language, current in (("en", "English"), ("zh", "简体中文"), (TRADITIONAL, "简体中文")):
        links = re.findall(
            r'<a href="\?lang=(\w+)"[^>]*?( aria-current="true")?>([^<]+)</a>',
            render(language=language).split("<h1>")[0],
        )
        assert [(code, label) for code, _, label in links] == [
            ("en", "English"),
            ("zh", "简体中文"),
        ]
        assert [label for _, mark, label in links if mark] == [current]


# -- through the app ------------------------------------------------------------------------


@pytest.fixture
def harness() -> Harness:
    return Harness(FakeRegistry(), ROUTES)


def test_app_serves_the_page_with_its_policy(harness: Harness) -> None:
    response = harness.request("GET", f"http://{HOST}/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert response.headers.getRawHeaders("content-security-policy") == [CONTENT_SECURITY_POLICY]
    page = Parsed(harness.body(response).decode())
    assert page.snippet("docker pull").startswith(f"docker pull {HOST}/library/redis")


def test_app_picks_the_language_by_query_then_header(harness: Harness) -> None:
    def page(path: str, accept: str | None) -> str:
        headers = {"Accept-Language": accept} if accept else {}
        return harness.body(harness.request("GET", path, headers=headers)).decode()

    assert '<html lang="zh-CN"' in page("/?lang=zh", "en")
    assert '<html lang="en"' in page("/?lang=en", "zh-CN")
    assert '<html lang="zh-CN"' in page("/", "zh-CN,zh;q=0.9")
    assert 'class="notice" lang="zh-Hant"' in page("/", "zh-TW")
    # The Traditional readers' page is written in Simplified Chinese, and says so.
    response = harness.request("GET", "/", headers={"Accept-Language": "zh-TW"})
    assert response.headers.getRawHeaders("content-language") == ["zh-CN"]
