"""Parsing the `[agent]` section: lease timing, proxy health polling, GARP and metrics.

The timing rule that keeps a VIP from ever being answered by two nodes lives
in `haproxy_py.cluster.timing`; it is checked here, at load, so a config that
could break it never starts, and the error gives the numbers.

Defaults follow from `lease_ttl` (2 s): `address_lifetime = lease_ttl / 2`,
`keepalive_interval = address_lifetime / 4`, and `keepalive_timeout` the
longest both rules allow, at most twice the interval (TTL 2: fence lifetime
1 s, a keepalive every 0.25 s that may take 0.5 s and arms the fence if it took at most
`rearm_window`, 0.25 s). `etcd_election_timeout`
and `etcd_heartbeat_interval` say how etcd runs (its defaults: 1 s, 0.1 s);
a TTL under etcd's minimum for them is refused (TTL 1 needs 0.5 s).
`lapse = true` (the fast profile): the agent gives its lease up itself `lease_ttl` after
its last renewed keepalive and asks etcd for one second more, so the controller can prove
a lost node's lease over a second after its last keepalive instead of waiting for etcd's
sweep; it turns the failsafe off (`haproxy_py.cluster.timing`, lapse path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from haproxy_py import pki
from haproxy_py.cluster.allowlist import AllowList, AllowListError
from haproxy_py.cluster.peerlink import PEER_PORT
from haproxy_py.cluster.timing import (
    DEFAULT_FENCE_MARGIN,
    ETCD_ELECTION_TIMEOUT,
    ETCD_HEARTBEAT_INTERVAL,
    Timing,
    defaults,
    problems,
)
from haproxy_py.configfile import Table
from haproxy_py.proxy.adminauth import AdminAuthError, load_token

_KEYS = frozenset(
    {
        "lease_ttl",
        "keepalive_interval",
        "address_lifetime",
        "fence_margin",
        "keepalive_timeout",
        "rearm_window",
        "lapse",
        "etcd_election_timeout",
        "etcd_heartbeat_interval",
        "reconcile_interval",
        "proxy_admin_url",
        "proxy_admin_cacert",
        "proxy_admin_cert",
        "proxy_admin_key",
        "health_interval",
        "health_timeout",
        "health_rise",
        "health_fall",
        "garp_count",
        "garp_spacing",
        "garp_second_burst",
        "garp_refresh",
        "metrics_bind",
        "vip_prefix_length",
        "peer_port",
        "peer_crl",
        "allowed_vips",
        "proxy_admin_token_file",
    }
)


@dataclass(frozen=True)
class GarpConfig:
    """Gratuitous ARP cadence: a burst at once, a second burst later, then a slow refresh."""

    count: int
    spacing: float
    second_burst: float
    refresh: float


@dataclass(frozen=True)
class AdminClientTls:
    """For an https admin API: the CA that signed the proxy's certificate, and ours for it."""

    cacert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class AgentConfig:
    timing: Timing
    reconcile_interval: float
    proxy_admin_url: str
    health_interval: float
    health_timeout: float
    health_rise: int
    health_fall: int
    garp: GarpConfig
    metrics_host: str | None
    metrics_port: int
    vip_prefix_length: int
    allowed: AllowList
    proxy_admin_tls: AdminClientTls | None = None
    # The peer endpoint (`agent.peer`): its port on the node's address, the same on every node
    # (0: off, and with it the failsafe); the cluster CA's CRL, checked for callers when set.
    peer_port: int = PEER_PORT
    peer_crl: Path | None = None
    proxy_admin_token: str | None = None  # sent with the agent's drain requests


def timing_problem(t: Timing) -> str | None:
    """The first rule this timing breaks (with its numbers), or None when it is safe."""
    found = problems(t)
    return found[0] if found else None


def _local_admin_url(doc: Table) -> str:
    """The proxy's admin API where the same file's `[admin]` section binds it."""
    admin = doc.data.get("admin")
    admin = admin if isinstance(admin, dict) else {}
    bind = admin.get("bind", "127.0.0.1:9901")
    return f"{'https' if 'tls' in admin else 'http'}://{bind}"


def parse_agent(doc: Table) -> AgentConfig:
    agent = doc.table("agent", {})
    agent.reject_unknown(_KEYS)
    ttl = agent.integer("lease_ttl", 2, min=1)
    default_lifetime, default_interval = defaults(ttl)
    timing = Timing(
        lease_ttl=ttl,
        keepalive_interval=agent.number("keepalive_interval", default_interval, min=0.01),
        address_lifetime=agent.number("address_lifetime", default_lifetime, min=0.1),
        fence_margin=agent.number("fence_margin", DEFAULT_FENCE_MARGIN, min=0.0),
        keepalive_timeout=agent.number("keepalive_timeout", 0.0, min=0.0),
        rearm_window=agent.number("rearm_window", 0.0, min=0.0),
        etcd_election_timeout=agent.number(
            "etcd_election_timeout", ETCD_ELECTION_TIMEOUT, min=0.01
        ),
        etcd_heartbeat_interval=agent.number(
            "etcd_heartbeat_interval", ETCD_HEARTBEAT_INTERVAL, min=0.001
        ),
        lapse=agent.boolean("lapse", False),
    )
    problem = timing_problem(timing)
    if problem is not None:
        agent.fail("lease_ttl", problem)

    url = agent.string("proxy_admin_url", _local_admin_url(doc))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        agent.fail(
            "proxy_admin_url", f"expected an http(s) URL like http://127.0.0.1:9901, got {url!r}"
        )

    admin_tls = _admin_client_tls(agent, parts.scheme == "https")

    health_interval = agent.number("health_interval", 0.1, min=0.01)
    health_timeout = agent.number("health_timeout", 0.3, min=0.01)
    garp = GarpConfig(
        count=agent.integer("garp_count", 3, min=1),
        spacing=agent.number("garp_spacing", 0.02, min=0.0),
        second_burst=agent.number("garp_second_burst", 2.0, min=0.1),
        refresh=agent.number("garp_refresh", 10.0, min=0.5),
    )
    metrics_host, metrics_port = _parse_bind(agent, "metrics_bind", "127.0.0.1:9732")
    prefix_length = agent.integer("vip_prefix_length", 32, min=1)
    if prefix_length > 32:
        agent.fail("vip_prefix_length", f"expected 1 to 32, got {prefix_length}")
    return AgentConfig(
        timing=timing,
        reconcile_interval=agent.number("reconcile_interval", 1.0, min=0.05),
        proxy_admin_url=url.rstrip("/"),
        health_interval=health_interval,
        health_timeout=health_timeout,
        health_rise=agent.integer("health_rise", 2, min=1),
        health_fall=agent.integer("health_fall", 3, min=1),
        garp=garp,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        vip_prefix_length=prefix_length,
        allowed=_allowed_vips(doc, agent),
        proxy_admin_tls=admin_tls,
        peer_port=_port(agent, "peer_port", PEER_PORT),
        peer_crl=agent.readable_file("peer_crl"),
        proxy_admin_token=_token(agent),
    )


def _token(agent: Table) -> str | None:
    """`proxy_admin_token_file`: the token the proxy's `[admin] tokens` lists for the agent."""
    if "proxy_admin_token_file" not in agent.data:
        return None
    try:
        return load_token(Path(agent.string("proxy_admin_token_file")))
    except AdminAuthError as exc:
        agent.fail("proxy_admin_token_file", str(exc))


def _allowed_vips(doc: Table, agent: Table) -> AllowList:
    """The addresses this node may ever hold: `[agent] allowed_vips`, else the same file's
    `[cluster] vips`; neither is an error (fail closed: etcd never decides this alone).
    The node's own address and the etcd members may never be on it."""
    cluster = doc.data.get("cluster")
    fallback = cluster.get("vips") if isinstance(cluster, dict) else None
    entries = agent.strings("allowed_vips", fallback if isinstance(fallback, list) else [])
    if not entries:
        agent.fail(
            "allowed_vips",
            "missing: list the VIP addresses or prefixes this node may hold "
            '(e.g. allowed_vips = ["192.0.2.10", "192.0.2.16/28"]), or [cluster] vips; '
            "the agent holds no address that its own config does not name",
        )
    try:
        allowed = AllowList.parse(str(e) for e in entries)
    except AllowListError as exc:
        agent.fail("allowed_vips", str(exc))
    node = doc.data.get("node")
    etcd = doc.data.get("etcd")
    own = [node.get("address")] if isinstance(node, dict) else []
    endpoints = etcd.get("endpoints", []) if isinstance(etcd, dict) else []
    hosts = [
        urlsplit(e if "//" in e else f"//{e}").hostname for e in endpoints if isinstance(e, str)
    ]
    clash = allowed.covering(a for a in [*own, *hosts] if isinstance(a, str))
    if clash:
        agent.fail(
            "allowed_vips",
            f"covers {', '.join(clash)} (this node's own address or an etcd member); "
            "list only the VIPs",
        )
    return allowed


def _admin_client_tls(agent: Table, https: bool) -> AdminClientTls | None:
    """An admin API served over TLS always requires a client certificate: all three files."""
    names = ("proxy_admin_cacert", "proxy_admin_cert", "proxy_admin_key")
    if not https:
        for name in names:
            if name in agent.data:
                agent.fail(name, "only used with an https:// proxy_admin_url")
        return None
    files = []
    for name in names:
        path = agent.readable_file(name)
        if path is None:
            agent.fail(
                name,
                "missing; an https:// proxy_admin_url needs proxy_admin_cacert (the CA of the "
                "proxy's certificate) and proxy_admin_cert and proxy_admin_key (this agent's)",
            )
        files.append(path)
    cacert, cert, key = files
    try:
        pki.check_client_files(cacert, cert, key)
    except pki.PkiError as exc:
        agent.fail("proxy_admin_cert", str(exc))
    return AdminClientTls(cacert, cert, key)


def _port(table: Table, key: str, default: int) -> int:
    port = table.integer(key, default, min=0)
    if port > 65535:
        table.fail(key, f"expected a port from 0 (off) to 65535, got {port}")
    return port


def _parse_bind(table: Table, key: str, default: str) -> tuple[str | None, int]:
    """`"host:port"`, or `""` to turn the endpoint off (host None)."""
    value = table.string(key, default)
    if value == "":
        return None, 0
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        table.fail(key, f'expected "host:port" (port 0 picks a free one) or "", got {value!r}')
    return host.strip("[]"), int(port)
