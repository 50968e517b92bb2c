"""The lab's layout (who lives where) and the files it derives from it (pure, no I/O).

One /24 from 198.18.0.0/15 holds everything, on one bridge:

    .1        the host (bridge address; the host port forwarder reaches the VIPs through it)
    .11-.13   etcd1..etcd3        .21-.2N  node1..nodeN (proxy + agent + controller)
    .31, .32  app1, app2          .41      client
    .100...   the VIPs

Each host is a namespace named `<prefix><name>` (the default prefix is
`hapy-`). The layout is saved in the lab's run directory so that every later
`hactl lab ...` command, and `down` after a crash, know what was built.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from haproxy_py.cluster.timing import PROFILES, Profile

MODES = ("active-standby", "active-active")  # the floating-IP modes (chaos, fault tests)
LAB_MODES = (*MODES, "bgp")  # bgp: see haproxy_py.lab.bgplab
CLUSTER = "lab"
PROXY_PORT = 8080  # the proxied HTTP/WebSocket port on the VIPs
APP_PORT = 8000
ADMIN_PORT = 9901
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_QUOTA_BYTES = 256 * 1024 * 1024  # explicit; the lab writes a few MB at most
MAX_NODES = 8
FAILBACK_HOLD = 3.0  # active-active only
MAX_VIPS = 16
# The lab's etcd runs the fast profile's raft timers whatever the profile: elections are
# quick on a quiet bridge, and its minimum lease TTL (1 s) admits both profiles' leases.
LAB_ETCD = PROFILES["fast"]


class LayoutError(Exception):
    """A lab shape that cannot be built (e.g. too many nodes); the message says what is allowed."""


@dataclass(frozen=True)
class Member:
    """One namespace of the lab: `name` is also the node name the proxy puts in `Via`."""

    name: str
    netns: str
    address: str


@dataclass(frozen=True)
class Layout:
    prefix: str
    subnet: str
    mode: str
    etcd: tuple[Member, ...]
    nodes: tuple[Member, ...]
    apps: tuple[Member, ...]
    client: Member
    vips: tuple[str, ...]
    host_address: str
    host_port: int = 0
    profile: str = "default"  # a name in `haproxy_py.cluster.timing.PROFILES`

    @property
    def timing(self) -> Profile:
        return PROFILES[self.profile]

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def members(self) -> tuple[Member, ...]:
        return (*self.etcd, *self.nodes, *self.apps, self.client)

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"https://{m.address}:{ETCD_CLIENT_PORT}" for m in self.etcd]

    @property
    def host_url(self) -> str | None:
        return f"http://127.0.0.1:{self.host_port}/" if self.host_port else None

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in (*self.nodes, *self.etcd, *self.apps))
        raise LayoutError(f"no lab host named {name!r} (known: {known})")

    def node(self, name: str) -> Member:
        for m in self.nodes:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.nodes)
        raise LayoutError(f"no lab node named {name!r} (nodes: {known})")

    def status_json(self) -> dict[str, Any]:
        """The stable `hactl lab status -o json` document."""
        return {
            "prefix": self.prefix,
            "subnet": self.subnet,
            "mode": self.mode,
            "nodes": [asdict(m) for m in self.nodes],
            "etcd_members": [asdict(m) for m in self.etcd],
            "apps": [asdict(m) for m in self.apps],
            "client_netns": self.client.netns,
            "vips": list(self.vips),
            "port": PROXY_PORT,
            "etcd": self.etcd_endpoints,
            "host_url": self.host_url,
            "profile": self.profile,
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Layout:
        data = json.loads(path.read_text())
        for key in ("etcd", "nodes", "apps"):
            data[key] = tuple(Member(**m) for m in data[key])
        data["client"] = Member(**data["client"])
        data["vips"] = tuple(data["vips"])
        return cls(**data)


def plan(
    prefix: str, subnet: str, nodes: int, mode: str, vips: int | None, profile: str = "default"
) -> Layout:
    """The lab's shape; `vips` defaults to one per node (active-active), else 1."""
    if profile not in PROFILES:
        raise LayoutError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if not 1 <= nodes <= MAX_NODES:
        raise LayoutError(f"--nodes must be 1 to {MAX_NODES}, got {nodes}")
    if mode not in LAB_MODES:
        raise LayoutError(f"--mode must be one of {', '.join(LAB_MODES)}, got {mode!r}")
    count = vips if vips is not None else (nodes if mode == "active-active" else 1)
    if not 1 <= count <= MAX_VIPS:
        raise LayoutError(f"--vips must be 1 to {MAX_VIPS}, got {count}")
    net = ipaddress.IPv4Network(subnet)
    if net.prefixlen != 24:
        raise LayoutError(f"the lab subnet must be a /24, got {subnet}")

    def member(name: str, host: int) -> Member:
        return Member(name=name, netns=prefix + name, address=str(net[host]))

    # In BGP mode the client sits behind the lab's router, on a link of its own.
    client_net = behind_router(net) if mode == "bgp" else net

    return Layout(
        prefix=prefix,
        subnet=str(net),
        mode=mode,
        etcd=tuple(member(f"etcd{i}", 10 + i) for i in (1, 2, 3)),
        nodes=tuple(member(f"node{i}", 20 + i) for i in range(1, nodes + 1)),
        apps=tuple(member(f"app{i}", 30 + i) for i in (1, 2)),
        client=Member(name="client", netns=prefix + "client", address=str(client_net[41])),
        vips=tuple(str(net[100 + i]) for i in range(count)),
        host_address=str(net[1]),
        profile=profile,
    )


def behind_router(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The /24 behind the BGP lab's router: 198.19.x.0/24 for the bridge's 198.18.x.0/24 (or
    198.18.x for 198.19.x): inside the lab range, never routed on the host."""
    third = subnet.network_address.packed[2]
    second = 19 if subnet.network_address.packed[1] == 18 else 18
    return ipaddress.IPv4Network(f"198.{second}.{third}.0/24")


def _toml(value: object) -> str:
    """A TOML value for the simple types the lab writes (json's escapes are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _section(name: str, values: dict[str, object], array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([head, *(f"{k} = {_toml(v)}" for k, v in values.items())]) + "\n"


ROOT = "root"  # the etcd administrator; its key stays in the lab's pki directory
OPERATOR = "operator-lab"  # what plain `hactl` uses against the lab


def identity(pki: Path, name: str) -> dict[str, object]:
    return {"cert": str(pki / f"{name}.crt"), "key": str(pki / f"{name}.key")}


def etcd_tls(pki: Path, name: str) -> dict[str, object]:
    return {"cacert": str(pki / "ca.crt"), **identity(pki, name)}


def node_config(layout: Layout, node: Member, pki: Path, priority: int) -> str:
    """One node's TOML file, read by its haproxy-py, ha-agent and ha-controller."""
    parts = [
        "# Written by `hactl lab up`; read by haproxy-py, ha-agent and ha-controller.\n",
        _section(
            "node",
            {"name": node.name, "address": node.address, "interface": "eth0", "priority": priority},
        ),
        _section("admin", {"bind": f"127.0.0.1:{ADMIN_PORT}"}),
        _section("proxy", {"access_log": False}),
    ]
    for i, vip in enumerate(layout.vips, 1):
        parts.append(
            _section("listeners", {"name": f"vip{i}", "bind": f"{vip}:{PROXY_PORT}"}, True)
        )
    parts.append(_section("routes", {"path_prefix": "/", "backend": "app"}, array=True))
    # By source address, so that one browser's tabs share a backend and so a chat room.
    parts.append(
        _section(
            "backends.app",
            {
                "balance": "source_hash",
                "servers": [f"{a.address}:{APP_PORT}" for a in layout.apps],
                "health": {"path": "/whoami", "interval": 1.0, "timeout": 0.5},
            },
        )
    )
    cluster: dict[str, object] = {"name": CLUSTER, "mode": layout.mode, "vips": list(layout.vips)}
    if layout.mode == "active-active":
        # Failback is on by default here; a short hold-down spreads the VIPs again within
        # seconds of a node coming back, where a lab user is watching.
        cluster["failback_hold"] = FAILBACK_HOLD
    parts.append(_section("cluster", cluster))
    # No [etcd] cert of its own: each daemon connects as itself (etcd user = common name).
    timing = layout.timing
    etcd = {"endpoints": layout.etcd_endpoints, "cacert": str(pki / "ca.crt")}
    parts.append(_section("etcd", {**etcd, "timeout": timing.etcd_timeout}))
    for daemon in ("agent", "controller"):
        parts.append(_section(f"etcd.{daemon}", identity(pki, f"{daemon}-{node.name}")))
    # The peer endpoint (failsafe, the controller's probe) checks callers against the CRL;
    # the node may ever hold the lab's VIPs only, whatever etcd says.
    agent: dict[str, object] = {
        "proxy_admin_url": f"http://127.0.0.1:{ADMIN_PORT}",
        "peer_crl": str(pki / "ca.crl"),
        "allowed_vips": list(layout.vips),
        "lease_ttl": timing.lease_ttl,
        # what the lab's etcd runs: the agent refuses a lease TTL etcd would raise
        "etcd_election_timeout": LAB_ETCD.etcd_election_timeout,
        "etcd_heartbeat_interval": LAB_ETCD.etcd_heartbeat_interval,
    }
    controller: dict[str, object] = {"id": node.name, "metrics": "", "lease_ttl": timing.lease_ttl}
    if timing.lapse:  # (the fast profile) both give their leases up themselves
        agent["lapse"] = controller["lapse"] = True
    parts.append(_section("agent", agent))
    parts.append(_section("controller", controller))
    parts.append(_section("logging", {"level": "info", "format": "json"}))
    return "\n".join(parts)


def context_file(layout: Layout, pki: Path) -> str:
    """The file that points plain `hactl` at the lab."""
    return "\n".join(
        [
            "# Written by `hactl lab up`, removed by `hactl lab down`.\n",
            _section("cluster", {"name": CLUSTER}),
            _section("etcd", {"endpoints": layout.etcd_endpoints, **etcd_tls(pki, OPERATOR)}),
        ]
    )


def etcd_command(layout: Layout, member: Member, pki: Path, data_dir: Path) -> list[str]:
    """etcd with mTLS for clients (CRL-checked, users from certificate names) and for peers
    (their own CA); the fast profile's raft timers (as in the tests) on a quiet bridge."""
    peer = f"https://{member.address}:{ETCD_PEER_PORT}"
    client = f"https://{member.address}:{ETCD_CLIENT_PORT}"
    cluster = ",".join(f"{m.name}=https://{m.address}:{ETCD_PEER_PORT}" for m in layout.etcd)
    cert, key, ca = pki / f"{member.name}.crt", pki / f"{member.name}.key", pki / "ca.crt"
    peer_cert, peer_key = pki / f"{member.name}-peer.crt", pki / f"{member.name}-peer.key"
    return [
        "etcd",
        f"--name={member.name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={cluster}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token=haproxy-py-{layout.prefix}lab",
        f"--heartbeat-interval={round(LAB_ETCD.etcd_heartbeat_interval * 1000)}",
        f"--election-timeout={round(LAB_ETCD.etcd_election_timeout * 1000)}",
        # History kept 10 min (a long demo or benchmark never grows it), and an explicit quota.
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=10m",
        f"--quota-backend-bytes={ETCD_QUOTA_BYTES}",
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--trusted-ca-file={ca}",
        "--client-cert-auth",
        f"--client-crl-file={pki / 'ca.crl'}",
        # Peers are members only: their own CA, so no client certificate opens the raft port.
        f"--peer-cert-file={peer_cert}",
        f"--peer-key-file={peer_key}",
        f"--peer-trusted-ca-file={pki / 'peer-ca.crt'}",
        "--peer-client-cert-auth",
        f"--peer-crl-file={pki / 'peer-ca.crl'}",
        "--logger=zap",
        "--log-level=warn",
    ]
