"""The proxy config sections and `haproxy-py check-config`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from haproxy_py.configfile import ConfigError, Table
from haproxy_py.proxy.cli import main
from haproxy_py.proxy.config import HashKey, ServerConfig, parse_proxy

MINIMAL = """\
[admin]
bind = "127.0.0.1:9901"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"

[[routes]]
path_prefix = "/"
backend = "app"

[backends.app]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance = "least_conn"
"""


def parse(text: str) -> object:
    return parse_proxy(Table(tomllib.loads(text), "node.toml", ""))


class TestParse:
    def test_minimal_file_from_the_docs(self) -> None:
        """The minimal example parses with long-lived-WebSocket defaults."""
        config = parse_proxy(Table(tomllib.loads(MINIMAL), "node.toml", ""))
        assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9901)
        assert [(lst.name, lst.host, lst.port) for lst in config.listeners] == [
            ("web", "127.0.0.1", 8080)
        ]
        app = config.backends["app"]
        assert app.balance == "least_conn"
        assert [s.address for s in app.servers] == ["127.0.0.1:9001", "127.0.0.1:9002"]
        assert config.proxy.timeouts.websocket_idle >= 3600
        assert app.health.path is None and app.health.passive

    def test_full_backend(self) -> None:
        text = MINIMAL.replace(
            'servers = ["127.0.0.1:9001", "127.0.0.1:9002"]\nbalance = "least_conn"',
            """servers = ["127.0.0.1:9001", { address = "[::1]:9002", weight = 3, max_conns = 10 }]
balance = "header_hash"
hash_key = "header:X-User"
health = { path = "/healthz", interval = 0.5, rise = 1, fall = 2, expect_status = [200, 204] }
""",
        )
        config = parse_proxy(Table(tomllib.loads(text), "node.toml", ""))
        app = config.backends["app"]
        assert app.servers[1] == ServerConfig("::1", 9002, weight=3, max_conns=10)
        assert app.servers[1].address == "[::1]:9002"
        assert app.hash_key == HashKey("header", "x-user")
        assert app.health.expect_status == (200, 204)

    def test_wildcard_route_host(self) -> None:
        text = MINIMAL.replace('path_prefix = "/"', 'host = "*.Example.com"\npath_prefix = "/"')
        config = parse_proxy(Table(tomllib.loads(text), "node.toml", ""))
        assert config.routes[0].host == ".example.com"


MISTAKES = [
    # (what is wrong, edit to MINIMAL, expected words in the one-line error)
    (
        "bad address",
        ('"127.0.0.1:9002"', '"127.0.0.1"'),
        'backends.app.servers[1]: expected "host:port"',
    ),
    ("unknown balance", ('"least_conn"', '"fastest"'), "backends.app.balance: expected one of"),
    (
        "route to missing backend",
        ('backend = "app"', 'backend = "api"'),
        "routes[0].backend: unknown backend 'api'",
    ),
    ("typo in key", ('name = "web"', 'nmae = "web"'), "listeners[0].nmae: unknown key"),
    (
        "wrong type",
        ('balance = "least_conn"', "balance = 3"),
        "backends.app.balance: expected a string",
    ),
    (
        "header_hash without key",
        ('"least_conn"', '"header_hash"'),
        "backends.app.hash_key: missing",
    ),
    ("port out of range", ('"127.0.0.1:8080"', '"127.0.0.1:80800"'), "listeners[0].bind"),
    (
        "negative timeout",
        ("[admin]", "[proxy.timeouts]\nconnect = -1\n\n[admin]"),
        "proxy.timeouts.connect: expected a number >= 0",
    ),
    (
        "empty servers",
        ('["127.0.0.1:9001", "127.0.0.1:9002"]', "[]"),
        "backends.app.servers: expected a list",
    ),
    ("path without slash", ('path_prefix = "/"', 'path_prefix = "api"'), "routes[0].path_prefix"),
]


class TestCheckConfig:
    def test_ok(self, tmp_path: Path) -> None:
        path = tmp_path / "node.toml"
        path.write_text(MINIMAL)
        result = CliRunner().invoke(main, ["check-config", str(path)])
        assert result.exit_code == 0
        assert result.output.endswith(f"{path}: ok\n")
        if "[admin]" in MINIMAL:  # what SIGHUP does not reload is said once
            assert "[admin] bind and tls (cert, key, client_ca) take effect at the next start" in (
                result.output
            )

    @pytest.mark.parametrize(("kind", "edit", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
    def test_mistake_names_file_and_key(
        self, tmp_path: Path, kind: str, edit: tuple[str, str], expected: str
    ) -> None:
        """Each mistake gives exit 2 and one line naming the file, the key and what was wrong."""
        assert edit[0] in MINIMAL
        path = tmp_path / "node.toml"
        path.write_text(MINIMAL.replace(edit[0], edit[1], 1))
        result = CliRunner().invoke(main, ["check-config", str(path)])
        assert result.exit_code == 2
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith(f"haproxy-py: {path}: ")
        assert expected in lines[0]

    def test_missing_file(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(main, ["check-config", str(tmp_path / "nope.toml")])
        assert result.exit_code == 2
        assert "nope.toml: no such file" in result.output

    def test_not_toml(self, tmp_path: Path) -> None:
        path = tmp_path / "node.toml"
        path.write_text("[admin\n")
        result = CliRunner().invoke(main, ["check-config", str(path)])
        assert result.exit_code == 2
        assert "not valid TOML" in result.output

    def test_node_section_checked(self, tmp_path: Path) -> None:
        """check-config validates the [node] section too (its name is the Via name)."""
        path = tmp_path / "node.toml"
        path.write_text('[node]\nname = "a/b"\n' + MINIMAL)
        result = CliRunner().invoke(main, ["check-config", str(path)])
        assert result.exit_code == 2
        assert "node.name" in result.output

    @pytest.mark.parametrize(
        ("section", "expected"),
        [
            ('[agent]\nlease_ttl = "2s"\n', "agent.lease_ttl: expected an integer"),
            ("[controller]\nlease_ttl = 0\n", "controller.lease_ttl"),
            ('[cluster]\nmode = "hot-hot"\n', "cluster.mode"),
            ("[etcd]\nendpoints = [2379]\n", "etcd.endpoints"),
            ('[logging]\nlevel = "loud"\n', "logging.level"),
        ],
    )
    def test_every_daemon_section_is_checked(
        self, tmp_path: Path, section: str, expected: str
    ) -> None:
        """One check covers the whole node file: the agent's and controller's sections too."""
        path = tmp_path / "node.toml"
        path.write_text(MINIMAL + section)
        result = CliRunner().invoke(main, ["check-config", str(path)])
        assert result.exit_code == 2
        assert expected in result.output


def test_parse_error_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: listeners: missing"):
        parse(MINIMAL.replace('[[listeners]]\nname = "web"\nbind = "127.0.0.1:8080"\n', ""))


def test_route_limits_and_timeouts_override_the_node() -> None:
    text = MINIMAL.replace(
        'path_prefix = "/"\n',
        'path_prefix = "/"\nmax_body_size = 1000\n'
        "timeouts = { connect = 1, websocket_idle = 60 }\n",
    )
    config = parse_proxy(
        Table(tomllib.loads(text + "[proxy.timeouts]\nupstream_read = 7\n"), "node.toml", "")
    )
    (route,) = config.routes
    assert route.max_body_size == 1000
    assert route.timeouts is not None
    assert (route.timeouts.connect, route.timeouts.websocket_idle) == (1, 60)
    assert route.timeouts.upstream_read == 7  # the node's value where the route is silent


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("timeouts = { http_idle = 1 }\n", "routes[0].timeouts.http_idle: unknown key"),
        ("max_body_size = -1\n", "routes[0].max_body_size: expected an integer >= 0"),
    ],
)
def test_route_mistakes_are_named(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(MINIMAL.replace('path_prefix = "/"\n', 'path_prefix = "/"\n' + extra))


def test_passive_5xx_is_opt_in() -> None:
    config = parse_proxy(Table(tomllib.loads(MINIMAL), "node.toml", ""))
    assert not config.backends["app"].health.passive_5xx


def test_check_config_warns_when_anyone_may_send_proxy_headers(tmp_path: Path) -> None:
    node = tmp_path / "node.toml"
    listener = 'bind = "127.0.0.1:8080"\nproxy_protocol = true\ntrusted_proxies = ["0.0.0.0/0"]\n'
    node.write_text(
        '[node]\nname = "n1"\n' + MINIMAL.replace('bind = "127.0.0.1:8080"\n', listener)
    )
    result = CliRunner().invoke(main, ["check-config", str(node)])
    assert result.exit_code == 0, result.output
    assert "trusted_proxies lets any address send a PROXY header" in result.output
