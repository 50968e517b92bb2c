"""Parsing the `[agent]` section: lease timing, proxy health polling, GARP and metrics.

The timing rule that keeps a VIP from ever living on two nodes is checked
here, at load, so a config that could break it never starts:

    address_lifetime + KERNEL_SLACK + fence_margin + keepalive_interval <= lease_ttl

A refresh follows a keepalive sent at most `keepalive_interval` earlier (that
is also the keepalive's deadline); the kernel drops an unrefreshed address
within `address_lifetime + KERNEL_SLACK` of the refresh; `fence_margin` is left
over before etcd may expire the lease and the controller may hand the VIP on.
A second rule, `2 * keepalive_interval <= address_lifetime`, lets the address
outlive one slow keepalive instead of flapping.

Defaults follow from `lease_ttl` (2 s): `address_lifetime = lease_ttl // 2` and
`keepalive_interval = address_lifetime / 2`, which satisfy both rules for every
`lease_ttl >= 2` (TTL 2: lifetime 1 s, keepalive every 0.5 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from haproxy_py import pki
from haproxy_py.cluster.config import _file
from haproxy_py.configfile import Table

# The kernel deletes expired IPv4 addresses from a timer whose expiry it rounds
# up to a whole second when that costs less than HZ/4 (ADDRCONF_TIMER_FUZZ).
# Measured here with valid_lft 1, also with other address changes on the host
# re-running the check: gone 1.01-1.26 s after the last refresh.
KERNEL_SLACK = 0.3
DEFAULT_FENCE_MARGIN = 0.2

_KEYS = frozenset(
    {
        "lease_ttl",
        "keepalive_interval",
        "address_lifetime",
        "fence_margin",
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
    }
)


@dataclass(frozen=True)
class Timing:
    """Lease and address-lifetime timing, in seconds; `check_timing` proves it safe."""

    lease_ttl: int
    keepalive_interval: float
    address_lifetime: int
    fence_margin: float
    kernel_slack: float = KERNEL_SLACK

    @property
    def keepalive_timeout(self) -> float:
        """A keepalive that takes longer than one interval counts as failed."""
        return self.keepalive_interval


@dataclass(frozen=True)
class GarpSettings:
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
    garp: GarpSettings
    metrics_host: str | None
    metrics_port: int
    vip_prefix_length: int
    proxy_admin_tls: AdminClientTls | None = None


def timing_problem(t: Timing) -> str | None:
    """Why this timing could let a VIP outlive the lease (or flap), or None when it is safe."""
    need = t.address_lifetime + t.kernel_slack + t.fence_margin + t.keepalive_interval
    if need > t.lease_ttl + 1e-9:
        return (
            f"address_lifetime ({t.address_lifetime}) + kernel slack ({t.kernel_slack}) + "
            f"fence_margin ({t.fence_margin}) + keepalive_interval ({t.keepalive_interval}) "
            f"= {need:g} s exceeds lease_ttl ({t.lease_ttl} s): the VIP could outlive the lease; "
            "raise lease_ttl or lower the others"
        )
    if 2 * t.keepalive_interval > t.address_lifetime + 1e-9:
        return (
            f"2 * keepalive_interval ({t.keepalive_interval}) exceeds address_lifetime "
            f"({t.address_lifetime} s): one slow keepalive would let the VIP lapse; "
            "lower keepalive_interval or raise address_lifetime"
        )
    return None


def _derive(lease_ttl: int) -> tuple[int, float]:
    """Default address lifetime and keepalive interval for a lease TTL (safe for TTL >= 2)."""
    lifetime = max(1, lease_ttl // 2)
    return lifetime, lifetime / 2


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
    default_lifetime, default_interval = _derive(ttl)
    lifetime = agent.integer("address_lifetime", default_lifetime, min=1)
    interval = agent.number("keepalive_interval", default_interval, min=0.01)
    margin = agent.number("fence_margin", DEFAULT_FENCE_MARGIN, min=0.0)
    timing = Timing(
        lease_ttl=ttl, keepalive_interval=interval, address_lifetime=lifetime, fence_margin=margin
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
    garp = GarpSettings(
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
        proxy_admin_tls=admin_tls,
    )


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
        path = _file(agent, name)
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


def _parse_bind(table: Table, key: str, default: str) -> tuple[str | None, int]:
    """`"host:port"`, or `""` to turn the endpoint off (host None)."""
    value = table.string(key, default)
    if value == "":
        return None, 0
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        table.fail(key, f'expected "host:port" (port 0 picks a free one) or "", got {value!r}')
    return host.strip("[]"), int(port)
