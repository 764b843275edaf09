"""Configuration: TOML and command-line values, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockermirror.config import (
    ConfigError,
    build_config,
    load_toml,
    parse_assignment,
    parse_size,
    strip_port,
)
from dockermirror.policy.settings import Limits


def test_defaults_mirror_docker_hub_on_port_5000() -> None:
    config = build_config({})
    assert config.ports == ("tcp:5000",)
    assert config.routes == {"*": "docker.io"}
    hub = config.registries["docker.io"]
    assert hub.url.to_text() == "https://registry-1.docker.io"
    assert hub.docker_hub
    assert not config.registries["ghcr.io"].docker_hub
    assert config.registries["k8s.gcr.io"].url.to_text() == "https://registry.k8s.io"
    # A hung upstream costs Docker seconds before it falls back, not a minute.
    assert (config.upstream.connect_timeout, config.upstream.response_timeout) == (5.0, 10.0)


def readme_toml(tmp_path: Path, heading: str, secrets: dict[str, str]) -> Path:
    """The first TOML block below ``heading`` in the README, with its secret files made."""
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    section = readme[readme.index(heading + "\n") :]
    block = section[section.index(".. code-block:: toml") :].split("\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    text = "\n".join(lines)
    for name, content in secrets.items():
        secret = tmp_path / Path(name).name
        secret.write_text(content)
        text = text.replace(name, str(secret))
    path = tmp_path / "example.toml"
    path.write_text(text)
    return path


def test_readme_example_config_loads(tmp_path: Path) -> None:
    path = readme_toml(tmp_path, "Configuration file", {"/etc/dockermirror/ghcr-token": "token\n"})
    config = build_config(load_toml(str(path)))
    assert config.routes["docker.example.com"] == "docker.io"
    assert config.routes["ghcr.example.com"] == "ghcr.io"
    assert config.routes["quay.example.com"] == "quay.io"
    assert config.registries["ghcr.io"].credentials == ("someone", "token")


def test_readme_public_mirror_config_loads(tmp_path: Path) -> None:
    path = readme_toml(
        tmp_path, "Running a public mirror safely", {"/etc/dockermirror/hub-token": "t\n"}
    )
    config = build_config(load_toml(str(path)))
    assert config.ports[0].startswith("ssl:443:")
    assert config.routes == {"mirror.example.com": "docker.io"}
    assert set(config.registries) == {"docker.io"}  # nothing by prefix but what is named
    hub = config.registries["docker.io"]
    assert hub.credentials == ("example", "t") and not hub.by_prefix
    assert not hub.repositories.matches("someone/xmrig-miner")
    assert hub.repositories.matches("library/redis")
    policy = config.policy
    assert policy.auth.enabled
    assert policy.auth.anonymous_pull.matches("docker.io/library/redis")
    assert not policy.auth.anonymous_pull.matches("docker.io/someone/app")
    assert policy.users["ci"].limits == Limits()
    assert policy.limits == Limits(20.0, 200.0, 50e6, 8)


def test_command_line_overrides_toml() -> None:
    config = build_config(
        {"server": {"ports": ["tcp:1"]}, "routes": {"*": "quay.io"}},
        ports=["tcp:2"],
        routes=[("*", "ghcr.io"), ("Docker.Example.com:443", "docker.io")],
        registries=[("docker.io", "http://127.0.0.1:5001")],
    )
    assert config.ports == ("tcp:2",)
    assert config.routes == {"*": "ghcr.io", "docker.example.com": "docker.io"}
    # An overridden docker.io keeps Docker Hub's rules.
    assert config.registries["docker.io"].docker_hub
    assert config.registries["docker.io"].url.to_text() == "http://127.0.0.1:5001"


def test_route_to_a_url_defines_an_anonymous_registry() -> None:
    config = build_config({}, routes=[("*", "https://registry.example.com/")])
    registry = config.registries["https://registry.example.com/"]
    assert registry.url.to_text() == "https://registry.example.com"
    assert registry.credentials is None


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    table = {"url": "https://example.com", "username": "u", "password_file": str(secret)}
    config = build_config({"registries": {"example.com": table}})
    assert config.registries["example.com"].credentials == ("u", "hunter2")
    assert "hunter2" not in repr(config.registries["example.com"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rutes": {}}, "rutes: unknown key"),
        ({"routes": {"*": "nowhere"}}, "routes.*: 'nowhere' is neither a registry name"),
        ({"routes": {"a/b": "docker.io"}}, "routes.a/b: 'a/b' is not a host name"),
        ({"routes": {"*": 5}}, "routes.*: must be a non-empty string"),
        ({"registries": {"x.io": {}}}, "registries.x.io.url: required"),
        (
            {"registries": {"x.io": {"url": "ftp://x"}}},
            "registries.x.io.url: 'ftp://x' must be an http",
        ),
        (
            {"registries": {"x.io": {"url": "https://x", "username": "u"}}},
            "username and password go together",
        ),
        (
            {"registries": {"x.io": {"url": "https://x", "pasword": "p"}}},
            "registries.x.io.pasword: unknown key",
        ),
        (
            {
                "registries": {
                    "x.io": {"url": "https://x", "username": "u", "password_file": "/nonexistent"}
                }
            },
            "registries.x.io.password_file: cannot read /nonexistent",
        ),
        ({"upstream": {"idle_timeout": -1}}, "upstream.idle_timeout: must be a positive number"),
        (
            {"upstream": {"max_connections_per_host": 1.5}},
            "upstream.max_connections_per_host: must be a whole",
        ),
        ({"server": {"ports": "tcp:1"}}, "server.ports: must be a list"),
        ({"auth": {"anonymous": "yes"}}, "auth.anonymous: must be true or false"),
        ({"auth": {"anonymous_pull": "library/*"}}, "auth.anonymous_pull: must be a list"),
        ({"auth": {"user_pull": ["!"]}}, "auth.user_pull: '!' is not a pattern"),
        ({"auth": {"token_lifetime": 5}}, "auth.token_lifetime: must be a whole number"),
        ({"auth": {"realm": "x"}}, "auth.realm: unknown key"),
        ({"access": {"deny": ["10.0.0.0/40"]}}, "access.deny: '10.0.0.0/40' is not a network"),
        ({"access": {"allow": "10.0.0.0/8"}}, "access.allow: must be a list"),
        ({"limits": {"requests_per_second": 0}}, "limits.requests_per_second: must be a positive"),
        (
            {"limits": {"bytes_per_second": "fast"}},
            "limits.bytes_per_second: 'fast' is not a size",
        ),
        ({"users": {"bob": {"unlimited": True, "concurrent_blobs": 2}}}, "users.bob: unlimited"),
        ({"users": {"bob": {"pulls": []}}}, "users.bob.pulls: unknown key"),
        ({"well_known_registries": "no"}, "well_known_registries: must be true or false"),
        (
            {"registries": {"x.io": {"url": "https://x", "credentials": "mine"}}},
            'registries.x.io.credentials: the only value is "passthrough"',
        ),
        (
            {
                "registries": {
                    "x.io": {
                        "url": "https://x",
                        "credentials": "passthrough",
                        "username": "u",
                        "password": "p",
                    }
                }
            },
            "registries.x.io: credentials are passed through or configured, not both",
        ),
        (
            {"registries": {"x.io": {"url": "https://x", "repositories": "library/*"}}},
            "registries.x.io.repositories: must be a list",
        ),
        (
            {"registries": {"x.io": {"url": "https://x", "trusted_networks": ["10.0.0.0/33"]}}},
            "registries.x.io.trusted_networks: '10.0.0.0/33' is not a network",
        ),
        ({"server": {"header_timeout": 0}}, "server.header_timeout: must be a positive number"),
        ({"server": {"max_connections": 2.5}}, "server.max_connections: must be a whole"),
        ({"cache": {"scrub_rate": "fast"}}, "cache.scrub_rate: 'fast' is not a size"),
        ({"cache": {"max_size": "lots"}}, "cache.max_size: 'lots' is not a size"),
        ({"cache": {"enabled": "yes"}}, "cache.enabled: must be true or false"),
        ({"cache": {"tag_ttl": -1}}, "cache.tag_ttl: must be a number of seconds"),
        ({"cache": {"ttl": 1}}, "cache.ttl: unknown key"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config(data)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "data",
    [
        {"registries": {"x.io": {"url": "https://user:s3cret@x.io"}}},
        {"routes": {"*": "https://user:s3cret@x.io"}},
    ],
)
def test_credentials_in_a_url_are_refused_without_echoing_them(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="must not hold credentials") as error:
        build_config(data)
    assert "s3cret" not in str(error.value)


def test_policy_settings() -> None:
    config = build_config(
        {
            "auth": {"htpasswd": "/etc/users", "anonymous_pull": ["docker.io/library/*"]},
            "access": {"trusted_proxies": ["10.0.0.1"]},
            "limits": {"requests_per_second": 5, "bytes_per_second": "10MB"},
            "users": {"ci": {"unlimited": True}, "bob": {"pull": ["*"], "concurrent_blobs": 2}},
            "registries": {"private.io": {"url": "https://p", "username": "u", "password": "p"}},
        }
    )
    policy = config.policy
    assert policy.auth.enabled and policy.auth.anonymous
    assert policy.auth.anonymous_pull.matches("docker.io/library/redis")
    assert not policy.auth.anonymous_pull.matches("ghcr.io/a/b")
    assert str(policy.access.trusted_proxies[0]) == "10.0.0.1/32"
    assert (policy.limits.requests_per_second, policy.limits.bytes_per_second) == (5.0, 1e7)
    assert policy.users["ci"].limits is not None and policy.users["ci"].limits.unlimited
    assert policy.users["bob"].limits == Limits(concurrent_blobs=2)
    # The operator's account is reached by its Host routes only, unless said otherwise.
    assert not config.registries["private.io"].by_prefix
    assert config.registries["docker.io"].by_prefix


def test_server_limits() -> None:
    config = build_config({"server": {"header_timeout": 5, "max_connections_per_client": 3}})
    assert config.server.header_timeout == 5.0
    assert config.server.max_connections_per_client == 3
    assert build_config({"cache": {"scrub_rate": 0}}).cache.scrub_rate == 0


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[routes\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(str(bad))


def test_assignments_and_ports() -> None:
    assert parse_assignment(" a = b ", "route") == ("a", "b")
    with pytest.raises(ConfigError, match="--route 'ab': expected KEY=VALUE"):
        parse_assignment("ab", "route")
    assert strip_port("example.com:5000") == "example.com"
    assert strip_port("[::1]:5000") == "::1"
    assert strip_port("::1") == "::1"


def test_cache_settings_and_sizes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = build_config({}).cache
    assert (cache.enabled, cache.dir, cache.max_size) == (
        True,
        str(tmp_path / "dockermirror"),
        20 * 2**30,
    )
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/dockermirror")
    assert build_config({}).cache.dir == "/var/cache/dockermirror"
    cache = build_config(
        {"cache": {"max_size": "1.5 GB", "tag_ttl": 10, "max_stale": 3600, "min_free": 4096}},
        cache={"enabled": False},
    ).cache
    assert (cache.enabled, cache.max_size, cache.tag_ttl, cache.max_stale) == (
        False,
        1_500_000_000,
        10,
        3600,
    )
    assert cache.min_free == 4096
    assert parse_size("50GiB", "k") == 50 * 2**30
    assert parse_size("500mb", "k") == 500 * 10**6
