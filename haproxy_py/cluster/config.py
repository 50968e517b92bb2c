"""Parsing the cluster sections of the node config: `[node]`, `[cluster]`, `[etcd]`,
`[controller]` and `[logging]` (the agent's `[agent]` lives in `agent_config`).

Each parser returns a frozen dataclass and raises ConfigError naming the file
and key path; timing invariants are checked here, at load, not at runtime.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from haproxy_py.cluster.records import MODES, Mode
from haproxy_py.configfile import Table

# the controller's peer endpoint (`controller.peer`), next to the agents' (peerlink.PEER_PORT)
CONTROLLER_PEER_PORT = 9735


def _check_key_part(table: Table, key: str, value: str | None) -> None:
    """A name that becomes one segment of an etcd key must be non-empty and without '/'."""
    if value is not None and (not value or "/" in value):
        table.fail(key, f"expected a non-empty {key} without '/', got {value!r}")


@dataclass(frozen=True)
class NodeConfig:
    """Who this node is: its name (also the proxy's `Via` name), address and VIP interface."""

    name: str
    address: str | None
    interface: str
    priority: int


def parse_node(doc: Table) -> NodeConfig:
    node = doc.table("node", {})
    node.reject_unknown({"name", "address", "interface", "priority"})
    name = node.string("name", socket.gethostname())
    _check_key_part(node, "name", name)
    address = node.string("address", None)
    if address is not None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            node.fail("address", f"expected an IP address, got {address!r}")
    priority = node.integer("priority", 100, min=0)
    if priority > 255:
        node.fail("priority", f"expected an integer from 0 to 255, got {priority}")
    return NodeConfig(
        name=name, address=address, interface=node.string("interface", "eth0"), priority=priority
    )


@dataclass(frozen=True)
class ClusterConfig:
    """`[cluster]`: the cluster's name (the etcd key prefix), mode, VIPs and failback policy.

    `failsafe` (default on): while etcd is unreachable, a node keeps the VIPs it holds as
    long as every other node answers, over mutual TLS, that it cannot reach etcd either,
    holds none of them and will add none for a while (`agent.failsafe`). Without it an
    etcd outage takes every VIP down within a second, although every proxy is healthy.
    It keeps a working holder; it never elects a new one. `failsafe = false` turns it off
    (VIPs then last only as long as the node's lease, as before).
    """

    name: str
    mode: Mode
    vips: tuple[str, ...]
    failback: bool
    failback_hold: float
    failsafe: bool = True
    # BGP mode: announce each VIP from at least this many live nodes, ready or not
    min_announcers: int = 1


def parse_cluster(doc: Table) -> ClusterConfig:
    cluster = doc.table("cluster", {})
    cluster.reject_unknown(
        {"name", "mode", "vips", "failback", "failback_hold", "failsafe", "min_announcers"}
    )
    name = cluster.string("name", "default")
    _check_key_part(cluster, "name", name)
    mode = cluster.choice("mode", MODES, "active-standby")
    where = Table({}, cluster.file, cluster.where("vips"))
    vips: list[str] = []
    for i, raw in enumerate(cluster.strings("vips", [])):
        try:
            vip = str(ipaddress.IPv4Address(raw))
        except ValueError:
            where.fail(i, f"expected an IPv4 address, got {raw!r}")
        if vip in vips:
            where.fail(i, f"{raw} is listed twice")
        vips.append(vip)
    return ClusterConfig(
        name=name,
        mode=mode,
        vips=tuple(vips),
        # Active-active means spread: a node that (re)joins gets its share back by default.
        failback=cluster.boolean("failback", mode == "active-active"),
        failback_hold=cluster.number("failback_hold", 30.0, min=0),
        failsafe=cluster.boolean("failsafe", True),
        min_announcers=cluster.integer("min_announcers", 1, min=1),
    )


@dataclass(frozen=True)
class EtcdConfig:
    """`[etcd]`: where etcd is and how to reach it.

    `endpoints` are `host:port`; TLS is on when `cacert` is set (then `cert` and
    `key`, if given, are the client certificate). `timeout` bounds every call.
    """

    endpoints: tuple[str, ...]
    timeout: float = 1.0
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.cacert is not None


def _endpoint(table: Table, index: int, raw: str, tls: bool) -> str:
    where = Table({}, table.file, table.where("endpoints"))
    text = raw
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            if (scheme == "https://") != tls:
                hint = "set cacert for https" if not tls else "use https:// (cacert is set)"
                where.fail(index, f"{raw!r}: scheme does not match the TLS settings; {hint}")
            text = text[len(scheme) :]
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        where.fail(
            index, f'expected "host:port" (optionally with http:// or https://), got {raw!r}'
        )
    return f"{host}:{int(port)}"


DAEMONS = ("agent", "controller")  # each may have its own etcd identity: [etcd.agent] cert, key


def parse_etcd(doc: Table, daemon: str | None = None) -> EtcdConfig:
    """`[etcd]`, with the client certificate of `daemon` (`[etcd.<daemon>] cert, key`) when
    its table is there. Only that daemon's files are opened, so the agent's key can be
    readable by the agent's user alone, and the controller's by the controller's."""
    etcd = doc.table("etcd", {})
    etcd.reject_unknown({"endpoints", "timeout", "cacert", "cert", "key", *DAEMONS})
    cacert = etcd.readable_file("cacert")
    own = etcd
    if daemon is not None and daemon in etcd.data:
        own = etcd.table(daemon)
        own.reject_unknown({"cert", "key"})
    cert, key = own.readable_file("cert"), own.readable_file("key")
    if (cert is None) != (key is None):
        own.fail("cert" if cert is None else "key", "cert and key must be given together")
    if cert is not None and cacert is None:
        etcd.fail("cacert", "missing; a client certificate needs the CA that signed etcd's")
    raw = etcd.strings("endpoints", ["127.0.0.1:2379"])
    if not raw:
        etcd.fail("endpoints", "expected at least one endpoint")
    endpoints = tuple(_endpoint(etcd, i, item, cacert is not None) for i, item in enumerate(raw))
    timeout = etcd.number("timeout", 1.0)
    if not 0 < timeout <= 60:
        etcd.fail("timeout", f"expected seconds > 0 and <= 60, got {timeout:g}")
    return EtcdConfig(endpoints=endpoints, timeout=timeout, cacert=cacert, cert=cert, key=key)


@dataclass(frozen=True)
class ControllerConfig:
    """`[controller]`: election lease, timings and the metrics listener.

    A standby takes over at most `lease_ttl` (+ etcd's ~0.5 s expiry check)
    after the leader dies. The default TTL equals the agents' (2 s), so a
    node crash that takes the leading controller with it still fails over
    within the node-loss budget. `keepalive_interval + etcd.timeout <=
    lease_ttl`, so one slow keepalive never costs the leadership (losing it
    would only delay decisions: VIPs hang on the nodes' leases, not on this one).
    `lapse` (the fast profile): the controller asks etcd for `lease_ttl` + 1 s and leads
    only until `lease_ttl` after its last renewed keepalive, so a standby can prove a lost
    leader's lease over a second after its last keepalive (`haproxy_py.cluster.timing`).
    """

    id: str | None
    lease_ttl: int
    keepalive_interval: float
    tick: float
    release_timeout: float
    event_history: int
    request_history: int
    metrics: tuple[str, int] | None
    # hold-downs, measured on the controller's own monotonic clock
    health_hold: float = 10.0  # a node that lost liveness waits this long to be a candidate again
    ready_hold: float = 5.0  # readiness scores must hold this long before a VIP moves for them
    unheld_limit: float = 3.0  # an assigned VIP its owner does not list as held is then released
    lapse: bool = False
    # the endpoint the standbys probe this controller at while it leads (`controller.peer`),
    # on `[node] address`; 0: none (then a leader kept alive by a stolen key is never deposed)
    peer_port: int = CONTROLLER_PEER_PORT


def _peer_port(ctl: Table) -> int:
    port: int = ctl.integer("peer_port", CONTROLLER_PEER_PORT, min=0)
    if port > 65535:
        ctl.fail("peer_port", f"expected a port from 0 (none) to 65535, got {port}")
    return port


def parse_controller(doc: Table, etcd: EtcdConfig) -> ControllerConfig:
    ctl = doc.table("controller", {})
    ctl.reject_unknown(
        {
            "id",
            "lease_ttl",
            "keepalive_interval",
            "tick",
            "release_timeout",
            "event_history",
            "request_history",
            "metrics",
            "health_hold",
            "ready_hold",
            "unheld_limit",
            "lapse",
            "peer_port",
        }
    )
    ident = ctl.string("id", None)
    _check_key_part(ctl, "id", ident)
    ttl = ctl.integer("lease_ttl", 2, min=1)
    keepalive = ctl.number("keepalive_interval", ttl / 4)
    if keepalive <= 0:
        ctl.fail("keepalive_interval", f"expected seconds > 0, got {keepalive:g}")
    if keepalive + etcd.timeout > ttl:
        ctl.fail(
            "keepalive_interval",
            f"keepalive_interval ({keepalive:g} s) + etcd.timeout ({etcd.timeout:g} s) "
            f"must be <= lease_ttl ({ttl} s), or one slow keepalive loses leadership; "
            "lower them or raise lease_ttl",
        )
    tick = ctl.number("tick", 1.0)
    if not 0 < tick <= 60:
        ctl.fail("tick", f"expected seconds > 0 and <= 60, got {tick:g}")
    release_timeout = ctl.number("release_timeout", 5.0)
    if release_timeout <= 0:
        ctl.fail("release_timeout", f"expected seconds > 0, got {release_timeout:g}")
    metrics_raw = ctl.string("metrics", "127.0.0.1:9733")
    metrics: tuple[str, int] | None = None
    if metrics_raw:
        host, sep, port = metrics_raw.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            ctl.fail("metrics", f'expected "host:port" or "" to disable, got {metrics_raw!r}')
        metrics = (host.strip("[]"), int(port))
    return ControllerConfig(
        id=ident,
        lease_ttl=ttl,
        keepalive_interval=keepalive,
        tick=tick,
        release_timeout=release_timeout,
        event_history=ctl.integer("event_history", 200, min=10),
        request_history=ctl.integer("request_history", 100, min=1),
        metrics=metrics,
        health_hold=ctl.number("health_hold", 10.0, min=0),
        ready_hold=ctl.number("ready_hold", 5.0, min=0),
        lapse=ctl.boolean("lapse", False),
        unheld_limit=ctl.number("unheld_limit", 3.0, min=0.5),
        peer_port=_peer_port(ctl),
    )


@dataclass(frozen=True)
class LoggingConfig:
    """`[logging]`: level and format (`auto` = JSON unless stderr is a terminal)."""

    level: str
    format: str

    @property
    def json(self) -> bool | None:
        return None if self.format == "auto" else self.format == "json"


def parse_logging(doc: Table) -> LoggingConfig:
    section = doc.table("logging", {})
    section.reject_unknown({"level", "format"})
    return LoggingConfig(
        level=section.choice("level", ("debug", "info", "warning", "error"), "info"),
        format=section.choice("format", ("auto", "json", "console"), "auto"),
    )
