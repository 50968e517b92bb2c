"""The cluster config sections: defaults, and errors that name file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from haproxy_py.cluster.config import (
    EtcdConfig,
    parse_cluster,
    parse_controller,
    parse_etcd,
    parse_logging,
)
from haproxy_py.configfile import ConfigError, Table, load


def doc(tmp_path: Path, text: str) -> Table:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load(path)


class TestCluster:
    def test_defaults(self, tmp_path: Path) -> None:
        cluster = parse_cluster(doc(tmp_path, ""))
        assert (cluster.name, cluster.mode, cluster.vips) == ("default", "active-standby", ())
        assert (cluster.failback, cluster.failback_hold) == (False, 30.0)

    def test_active_active_spreads_again_by_default(self, tmp_path: Path) -> None:
        """In active-active a node that (re)joins gets its share of VIPs back unless told not to."""
        spread = parse_cluster(doc(tmp_path, '[cluster]\nmode = "active-active"\n'))
        assert spread.failback
        pinned = parse_cluster(
            doc(tmp_path, '[cluster]\nmode = "active-active"\nfailback = false\n')
        )
        assert not pinned.failback

    def test_full(self, tmp_path: Path) -> None:
        cluster = parse_cluster(
            doc(
                tmp_path,
                '[cluster]\nname = "edge"\nmode = "active-active"\n'
                'vips = ["198.18.0.10", "198.18.0.11"]\nfailback = true\nfailback_hold = 5\n',
            )
        )
        assert cluster.vips == ("198.18.0.10", "198.18.0.11")
        assert (cluster.mode, cluster.failback, cluster.failback_hold) == (
            "active-active",
            True,
            5.0,
        )

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('mode = "hot"', r"cluster\.mode: expected one of active-standby, active-active"),
            ('vips = ["nope"]', r"cluster\.vips\[0\]: expected an IPv4 address, got 'nope'"),
            (
                'vips = ["198.18.0.1", "198.18.0.1"]',
                r"cluster\.vips\[1\]: 198\.18\.0\.1 is listed twice",
            ),
            ('name = "a/b"', r"cluster\.name: expected a non-empty name without '/'"),
            ("failback_hold = -1", r"cluster\.failback_hold: expected a number >= 0"),
            ("vip = []", r"cluster\.vip: unknown key"),
        ],
    )
    def test_errors(self, tmp_path: Path, text: str, message: str) -> None:
        with pytest.raises(ConfigError, match=r"node\.toml: " + message):
            parse_cluster(doc(tmp_path, f"[cluster]\n{text}\n"))


class TestEtcd:
    def test_endpoints_accept_urls_and_default_to_loopback(self, tmp_path: Path) -> None:
        assert parse_etcd(doc(tmp_path, "")).endpoints == ("127.0.0.1:2379",)
        etcd = parse_etcd(
            doc(tmp_path, '[etcd]\nendpoints = ["http://10.0.0.1:2379", "etcd-b:2379/"]\n')
        )
        assert etcd.endpoints == ("10.0.0.1:2379", "etcd-b:2379")
        assert not etcd.tls

    def test_tls_files_resolve_next_to_the_config(self, tmp_path: Path) -> None:
        for name in ("ca.crt", "c.crt", "c.key"):
            (tmp_path / name).write_text("x")
        etcd = parse_etcd(
            doc(
                tmp_path,
                '[etcd]\nendpoints = ["https://127.0.0.1:2379"]\n'
                'cacert = "ca.crt"\ncert = "c.crt"\nkey = "c.key"\n',
            )
        )
        assert etcd.tls and etcd.cacert == tmp_path / "ca.crt"

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('endpoints = ["127.0.0.1"]', r'etcd\.endpoints\[0\]: expected "host:port"'),
            ("endpoints = []", r"etcd\.endpoints: expected at least one endpoint"),
            ('endpoints = ["https://h:1"]', r"etcd\.endpoints\[0\]: .*set cacert for https"),
            ('cacert = "missing.crt"', r"etcd\.cacert: .*missing\.crt: no such file"),
            ("timeout = 0", r"etcd\.timeout: expected seconds > 0"),
        ],
    )
    def test_errors(self, tmp_path: Path, text: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            parse_etcd(doc(tmp_path, f"[etcd]\n{text}\n"))

    def test_cert_without_key_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "c.crt").write_text("x")
        (tmp_path / "ca.crt").write_text("x")
        with pytest.raises(ConfigError, match=r"etcd\.key: cert and key must be given together"):
            parse_etcd(doc(tmp_path, '[etcd]\ncacert = "ca.crt"\ncert = "c.crt"\n'))

    def test_each_daemon_reads_only_its_own_identity(self, tmp_path: Path) -> None:
        """[etcd.agent] and [etcd.controller] give each daemon its certificate; the agent never
        opens the controller's key (it may not read it), and hactl uses the plain [etcd]."""
        for name in ("ca.crt", "agent.crt", "agent.key", "op.crt", "op.key"):
            (tmp_path / name).write_text("x")
        text = (
            '[etcd]\nendpoints = ["https://127.0.0.1:2379"]\ncacert = "ca.crt"\n'
            'cert = "op.crt"\nkey = "op.key"\n'
            '[etcd.agent]\ncert = "agent.crt"\nkey = "agent.key"\n'
            '[etcd.controller]\ncert = "unreadable.crt"\nkey = "unreadable.key"\n'
        )
        assert parse_etcd(doc(tmp_path, text), "agent").cert == tmp_path / "agent.crt"
        assert parse_etcd(doc(tmp_path, text)).cert == tmp_path / "op.crt"
        with pytest.raises(ConfigError, match=r"etcd\.controller\.cert: .*unreadable\.crt"):
            parse_etcd(doc(tmp_path, text), "controller")

    def test_unknown_identity_key_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"etcd\.agent\.crt: unknown key"):
            parse_etcd(doc(tmp_path, '[etcd.agent]\ncrt = "a"\n'), "agent")


class TestController:
    def test_defaults_satisfy_the_timing_invariant(self, tmp_path: Path) -> None:
        ctl = parse_controller(doc(tmp_path, ""), EtcdConfig(("h:1",), timeout=1.0))
        assert ctl.lease_ttl == 2  # the agents' TTL: a crash of the leader's node stays in budget
        assert ctl.keepalive_interval + 1.0 <= ctl.lease_ttl
        assert ctl.metrics == ("127.0.0.1", 9733)

    def test_timing_invariant_is_checked_at_load(self, tmp_path: Path) -> None:
        table = doc(tmp_path, "[controller]\nlease_ttl = 2\nkeepalive_interval = 1.5\n")
        with pytest.raises(ConfigError, match=r"controller\.keepalive_interval: .* <= lease_ttl"):
            parse_controller(table, EtcdConfig(("h:1",), timeout=1.0))

    def test_metrics_can_be_disabled_and_bad_binds_are_named(self, tmp_path: Path) -> None:
        etcd = EtcdConfig(("h:1",))
        assert parse_controller(doc(tmp_path, '[controller]\nmetrics = ""\n'), etcd).metrics is None
        with pytest.raises(ConfigError, match=r"controller\.metrics: expected \"host:port\""):
            parse_controller(doc(tmp_path, '[controller]\nmetrics = "9102"\n'), etcd)


class TestLogging:
    def test_levels_and_formats(self, tmp_path: Path) -> None:
        logging = parse_logging(doc(tmp_path, '[logging]\nlevel = "debug"\nformat = "json"\n'))
        assert (logging.level, logging.json) == ("debug", True)
        assert parse_logging(doc(tmp_path, "")).json is None
        with pytest.raises(ConfigError, match=r"logging\.level: expected one of"):
            parse_logging(doc(tmp_path, '[logging]\nlevel = "loud"\n'))
