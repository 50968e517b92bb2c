"""The [agent] section: defaults derived from the lease TTL, and the timing rule checked at load."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haproxy_py import pki
from haproxy_py.cluster.agent_config import (
    AdminClientTls,
    AgentConfig,
    parse_agent,
)
from haproxy_py.cluster.timing import DEFAULT_FENCE_MARGIN, Timing, defaults, problems
from haproxy_py.configfile import ConfigError, load


def parse(
    tmp_path: Path, text: str, vips: str = '[cluster]\nvips = ["198.18.0.100"]\n'
) -> AgentConfig:
    path = tmp_path / "node.toml"
    path.write_text(vips + text)
    return parse_agent(load(path))


def test_defaults_for_a_two_second_lease(tmp_path: Path) -> None:
    cfg = parse(tmp_path, "")
    assert cfg.timing.lease_ttl == 2
    assert cfg.timing.address_lifetime == 1
    assert cfg.timing.keepalive_interval == 0.25
    assert cfg.timing.keepalive_timeout == 0.5  # decoupled: one slow keepalive is no fence
    assert cfg.proxy_admin_url == "http://127.0.0.1:9901"  # the proxy's own admin default
    assert (cfg.metrics_host, cfg.metrics_port) == ("127.0.0.1", 9732)
    assert cfg.vip_prefix_length == 32


def test_the_proxy_admin_url_follows_the_admin_section(tmp_path: Path) -> None:
    """One node file: the agent finds its proxy where `[admin]` binds it."""
    cfg = parse(tmp_path, '[admin]\nbind = "127.0.0.1:9950"\n')
    assert cfg.proxy_admin_url == "http://127.0.0.1:9950"


@given(st.integers(min_value=1, max_value=3600))
def test_derived_defaults_are_always_safe(ttl: int) -> None:
    lifetime, interval = defaults(ttl)
    timing = Timing(ttl, interval, lifetime, DEFAULT_FENCE_MARGIN, etcd_election_timeout=0.5)
    assert problems(timing) == []


def test_longer_lease_derives_longer_lifetime(tmp_path: Path) -> None:
    cfg = parse(tmp_path, "[agent]\nlease_ttl = 10\n")
    assert cfg.timing.address_lifetime == 5
    assert cfg.timing.keepalive_interval == 1.25
    assert cfg.timing.keepalive_timeout == 2.5


def test_one_second_lease_needs_a_fast_etcd(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, "[agent]\nlease_ttl = 1\n")
    message = str(err.value)
    assert "node.toml: agent.lease_ttl: " in message
    assert "below etcd's minimum lease TTL (2 s for election timeout 1 s" in message
    fast = parse(tmp_path, "[agent]\nlease_ttl = 1\netcd_election_timeout = 0.5\n").timing
    assert (fast.address_lifetime, fast.keepalive_interval, fast.keepalive_timeout) == (
        0.5,
        0.125,
        0.25,
    )


def test_lifetime_too_long_for_the_lease(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"agent\.lease_ttl: keepalive_timeout \(0\.5\) \+ address_lifetime \(2\)"
    ):
        parse(tmp_path, "[agent]\nlease_ttl = 2\naddress_lifetime = 2\nkeepalive_timeout = 0.5\n")


def test_keepalive_too_slow_for_the_lifetime(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"one slow keepalive would let the VIP lapse"):
        parse(
            tmp_path,
            "[agent]\nlease_ttl = 10\naddress_lifetime = 2\nkeepalive_interval = 1.5\n"
            "keepalive_timeout = 1\n",
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('proxy_admin_url = "ftp://x"', r"agent\.proxy_admin_url: expected an http\(s\) URL"),
        ('metrics_bind = "nohost"', r'agent\.metrics_bind: expected "host:port"'),
        ('metrics_bind = "h:99999"', r'agent\.metrics_bind: expected "host:port"'),
        ("health_rise = 0", r"agent\.health_rise: expected an integer >= 1"),
        ("vip_prefix_length = 33", r"agent\.vip_prefix_length: expected 1 to 32"),
        ("lease_tll = 3", r"agent\.lease_tll: unknown key"),
        ('lease_ttl = "2"', r"agent\.lease_ttl: expected an integer"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse(tmp_path, f"[agent]\n{text}\n")


def test_metrics_can_be_turned_off_or_bound_to_a_free_port(tmp_path: Path) -> None:
    assert parse(tmp_path, '[agent]\nmetrics_bind = ""\n').metrics_host is None
    cfg = parse(tmp_path, '[agent]\nmetrics_bind = "[::1]:0"\n')
    assert (cfg.metrics_host, cfg.metrics_port) == ("::1", 0)


@pytest.fixture
def client_files(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    pki.issue(tmp_path / "ca", "agent", client=True, out=tmp_path)
    pki.issue(tmp_path / "ca", "other", client=True, out=tmp_path)
    return tmp_path


def tls_keys(files: Path, key: str = "agent.key") -> str:
    return (
        'proxy_admin_url = "https://localhost:9901"\n'
        f'proxy_admin_cacert = "{files}/ca/ca.crt"\n'
        f'proxy_admin_cert = "{files}/agent.crt"\n'
        f'proxy_admin_key = "{files}/{key}"\n'
    )


def test_https_admin_api_with_a_client_certificate(tmp_path: Path, client_files: Path) -> None:
    cfg = parse(tmp_path, "[agent]\n" + tls_keys(client_files))
    assert cfg.proxy_admin_tls == AdminClientTls(
        client_files / "ca" / "ca.crt", client_files / "agent.crt", client_files / "agent.key"
    )
    assert parse(tmp_path, "").proxy_admin_tls is None


def test_https_admin_api_needs_all_three_files(tmp_path: Path, client_files: Path) -> None:
    text = "\n".join(line for line in tls_keys(client_files).splitlines() if "_key" not in line)
    with pytest.raises(ConfigError, match=r"agent\.proxy_admin_key: missing; an https://"):
        parse(tmp_path, "[agent]\n" + text)


def test_client_certificate_files_only_with_https(tmp_path: Path, client_files: Path) -> None:
    text = tls_keys(client_files).replace("https://", "http://")
    with pytest.raises(ConfigError, match=r"agent\.proxy_admin_cacert: only used with an https"):
        parse(tmp_path, "[agent]\n" + text)


def test_client_certificate_and_key_must_match(tmp_path: Path, client_files: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, "[agent]\n" + tls_keys(client_files, key="other.key"))
    assert "agent.proxy_admin_cert: " in str(err.value)
    assert "other.key" in str(err.value)


def test_allowed_vips_default_to_the_files_own_cluster_vips(tmp_path: Path) -> None:
    cfg = parse(tmp_path, "")
    assert cfg.allowed.allows("198.18.0.100")
    assert not cfg.allowed.allows("198.18.0.1")


def test_allowed_vips_take_addresses_and_prefixes(tmp_path: Path) -> None:
    cfg = parse(tmp_path, '[agent]\nallowed_vips = ["198.18.0.100", "198.18.1.0/28"]\n')
    assert [cfg.allowed.allows(a) for a in ("198.18.0.100", "198.18.1.15", "198.18.1.16")] == [
        True,
        True,
        False,
    ]
    assert not cfg.allowed.allows("not-an-address")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "agent.allowed_vips: missing: list the VIP addresses or prefixes"),
        ('[agent]\nallowed_vips = ["198.18.0.300"]\n', "'198.18.0.300' is not an IPv4"),
        ('[agent]\nallowed_vips = ["198.18.0.1/24"]\n', "is not an IPv4 address or prefix"),
        (
            '[node]\naddress = "198.18.0.11"\n[agent]\nallowed_vips = ["198.18.0.0/24"]\n',
            "covers 198.18.0.11 (this node's own address or an etcd member)",
        ),
        (
            '[etcd]\nendpoints = ["198.18.0.21:2379"]\n[agent]\nallowed_vips = ["198.18.0.21"]\n',
            "covers 198.18.0.21",
        ),
    ],
)
def test_a_missing_or_bad_allow_list_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """Fail closed: without a list of its own the agent would hold whatever etcd names."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(tmp_path, text, vips="")
