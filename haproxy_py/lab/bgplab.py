"""The lab in BGP mode (`hactl lab up --mode bgp`): nodes announce the VIPs to a real router.

    client (198.19.x.41) --- router (BIRD) --- bridge 198.18.x.0/24 --- node1..N, app1, app2
                             .1 | .2                                     (BIRD + proxy + announcer)

The router namespace runs BIRD with one eBGP session per node (AS 64512 to
the nodes' AS 64513), BFD to each (100 ms x 3), and installs the VIP routes
as kernel multipath routes (`merge paths`), hashed on layer 4
(`fib_multipath_hash_policy = 1`). The client sits behind the router on a
link of its own, so every connection it opens goes through the ECMP choice.
Each node runs BIRD (config from `haproxy_py.cluster.birdconf`), its proxy
under `agent.livelink`, `ha-agent` and `ha-controller` in `mode = "bgp"`
against the lab's 3-member etcd (mTLS, RBAC): the controller writes which
nodes may announce which VIP (`announce/<node>/vips`), each agent drives its BIRD;
the VIPs live on the nodes' `lo` and the nodes answer no ARP for them.

`use_resilient` (`hactl lab up --mode bgp --resilient-router`) switches the
router to resilient next-hop groups (`haproxy_py.lab.nhmirror`), which keep
established flows in place when nodes come and go.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from haproxy_py import configfile
from haproxy_py.cluster import bgp_config, bird, birdconf
from haproxy_py.lab import layout as lay
from haproxy_py.lab import netns, nhmirror

ROUTER_ASN = 64512
NODE_ASN = 64513
LIVE_LINK = "havips"
BFD = birdconf.Bfd(interval_ms=100, multiplier=3)
DRAIN_TIMEOUT = 20.0  # [bgp] drain_timeout of the lab's nodes: a graceful shutdown's serving time
PROCESSES = ("bird", "proxy", "agent", "controller")  # in start order: the agent talks to BIRD
ROUTER = "router"

Say = Callable[[str], None]


class LabPaths(Protocol):
    @property
    def etc(self) -> Path: ...
    @property
    def pki(self) -> Path: ...
    def log(self, label: str) -> Path: ...
    def config(self, node: str) -> Path: ...


class Lab(Protocol):
    """What the BGP lab needs of `control.Lab`, which builds it: declared here, so that the
    two modules do not import each other."""

    @property
    def layout(self) -> lay.Layout: ...
    @property
    def paths(self) -> LabPaths: ...
    @property
    def plumbing(self) -> netns.Plumbing: ...
    def start_cluster_store(self, say: Say) -> None: ...
    def start_node(self, name: str, processes: tuple[str, ...] | None = None) -> None: ...
    def _spawn(self, label: str, member: lay.Member, argv: list[str]) -> None: ...
    def _app_command(self, app: lay.Member) -> list[str]: ...


def router_address(layout: lay.Layout) -> str:
    return str(ipaddress.IPv4Network(layout.subnet)[2])


def client_gateway(layout: lay.Layout) -> str:
    return str(lay.behind_router(ipaddress.IPv4Network(layout.subnet))[1])


def router_config(
    layout: lay.Layout, table: int | None = None, *, hold: int | None = 9, bfd: bool = True
) -> str:
    """(pure: no I/O, no clock) The router's bird.conf: a session and BFD per node, ECMP;
    routes go to the main table, or to `table` for `nhmirror` to program. `hold` None
    leaves BIRD's default (240 s), so a node's longer hold time is the one negotiated;
    `bfd` False: no BFD (both for the anchors' defaults in `bench.bgpanchors`).

    A path tagged GRACEFUL_SHUTDOWN: with plain multipath, local preference 0 takes it out
    of the ECMP set (RFC 8326); for `nhmirror`'s resilient groups it stays in the set at the
    lowest weight, so its busy buckets (established flows) stay on the draining node."""
    if table:
        tagged = f"{birdconf.GRACEFUL_SHUTDOWN} ~ bgp_community"
        weights = f"weight = {nhmirror.DRAINING}; else weight = {nhmirror.SERVING};"
        import_filter = f"import filter {{ if {tagged} then {weights} accept; }};"
    else:
        import_filter = birdconf.graceful_shutdown_import()
    lines = [
        "# Written by `hactl lab up --mode bgp`: the lab's upstream router.",
        f"router id {router_address(layout)};",
        "protocol device { scan time 10; }",
        "protocol kernel {",
        *([f"  kernel table {table};"] if table else []),
        "  ipv4 { import none; export all; };",
        "  merge paths on limit 16;  # equal BGP paths become one multipath kernel route",
        "}",
        *(birdconf.bfd_protocol("eth0", BFD) if bfd else []),
    ]
    for node in layout.nodes:
        lines += [
            f"protocol bgp {node.name} {{",
            f"  local {router_address(layout)} as {ROUTER_ASN};",
            f"  neighbor {node.address} as {NODE_ASN};",
            *([f"  hold time {hold};"] if hold is not None else []),
            *birdconf.RECONNECT,
            *(["  bfd on;"] if bfd else []),
            f"  ipv4 {{ {import_filter} export none; }};",
            "}",
        ]
    return "\n".join(lines) + "\n"


def bgp_section(lab: Lab, node: lay.Member) -> str:
    """The node config's `[bgp]`, from which its bird.conf is made (as on a real node)."""
    peer = {"name": "uplink", "address": router_address(lab.layout), "asn": ROUTER_ASN}
    values: dict[str, object] = {
        "asn": NODE_ASN,
        "peers": [peer],
        "bfd": {"interval_ms": BFD.interval_ms, "multiplier": BFD.multiplier},
        "live_link": LIVE_LINK,
        "announce_file": str(announce_path(lab, node.name)),
        "control_socket": str(control_socket(lab, node.name)),
        "drain_timeout": DRAIN_TIMEOUT,
    }
    return lay._section("bgp", values)


# ---- files of the run directory ----


def bird_conf(lab: Lab, name: str) -> Path:
    return lab.paths.etc / f"{name}-bird.conf"


def announce_path(lab: Lab, name: str) -> Path:
    return lab.paths.etc / f"{name}-announce.conf"


def control_socket(lab: Lab, name: str) -> Path:
    return lab.paths.etc / f"{name}.ctl"  # under etc/, which `hactl lab down` removes


# ---- building ----


def sysctl(netns_name: str, *settings: str) -> None:
    argv = ["ip", "netns", "exec", netns_name, "sysctl", "-qw", *settings]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise netns.NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def validated(path: Path, text: str) -> None:
    """Write a BIRD config and check it with BIRD's own parser (`bird -p`)."""
    path.write_text(text)
    done = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise netns.NetnsError(f"bird rejects {path}: {done.stderr.strip()}")


def missing_requirements() -> str | None:
    if shutil.which("bird") is None:
        return "the BGP lab needs BIRD 2: apt-get install bird2 (make deps does)"
    return None


def build(lab: Lab, say: Say, router_conf: str | None = None) -> None:
    """Bridge, nodes, apps, the router (`router_conf`: its bird.conf, default `router_config`)
    and the client behind it; then the daemons (the caller waits for `ready`)."""
    layout, paths, plumbing = lab.layout, lab.paths, lab.plumbing
    problem = missing_requirements()
    if problem is not None:
        raise netns.NetnsError(problem)
    say(f"BGP lab: subnet {layout.subnet} on bridge {layout.prefix}br, router and client behind")
    plumbing.bridge(f"{layout.host_address}/{layout.prefixlen}")
    for m in (*layout.etcd, *layout.nodes, *layout.apps):
        plumbing.add_host(m.name, f"{m.address}/{layout.prefixlen}")
    router = plumbing.add_host(ROUTER, f"{router_address(layout)}/{layout.prefixlen}")
    plumbing.add_routed_host(
        "client", f"{layout.client.address}/24", router.netns, f"{client_gateway(layout)}/24"
    )
    sysctl(
        router.netns,
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",  # layer 4: a flow per connection, not per host
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.eth0.send_redirects=0",
    )
    client_net = str(lay.behind_router(ipaddress.IPv4Network(layout.subnet)))
    for node in layout.nodes:
        # The VIPs are on lo: answer no ARP for them on the bridge, and never use them as
        # the source of an ARP request.
        sysctl(node.netns, "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
        netns.ip("route", "add", client_net, "via", router_address(layout), netns=node.netns)
    validated(bird_conf(lab, ROUTER), router_conf or router_config(layout))
    lab.plumbing.spawn(
        router.netns,
        bird_command(lab, ROUTER),
        label=f"{ROUTER}/bird",
        log=paths.log(f"{ROUTER}/bird"),
    )
    lab.start_cluster_store(say)
    say("starting the demo app backends")
    for m in layout.apps:
        lab._spawn(m.name, m, lab._app_command(m))
    say(f"starting {len(layout.nodes)} proxy nodes (BIRD + haproxy-py + ha-agent + ha-controller)")
    for i, node in enumerate(layout.nodes):
        config = lay.node_config(layout, node, paths.pki, priority=200 - 10 * i)
        paths.config(node.name).write_text(config + "\n" + bgp_section(lab, node))
        speaker = bgp_config.parse_bgp(configfile.load(paths.config(node.name)))
        assert speaker is not None
        announce_path(lab, node.name).write_text(birdconf.announce_file([], LIVE_LINK))
        validated(bird_conf(lab, node.name), birdconf.node_config(speaker.node))
        lab.start_node(node.name)


def bird_command(lab: Lab, name: str) -> list[str]:
    return [
        shutil.which("bird") or "bird",
        "-f",  # in the foreground: the lab records and signals this PID
        "-c",
        str(bird_conf(lab, name)),
        "-s",
        str(control_socket(lab, name)),
    ]


def node_command(lab: Lab, node: str, process: str, program: Callable[[str], str]) -> list[str]:
    """The argv of one of a BGP node's processes (`PROCESSES`)."""
    config = str(lab.paths.config(node))
    if process == "bird":
        return bird_command(lab, node)
    if process == "proxy":
        proxy = [program("haproxy-py"), "run", "--config", config]
        return [sys.executable, "-m", "agent.livelink", "--device", LIVE_LINK, "--", *proxy]
    return [program(f"ha-{process}"), "--config", config]


# ---- what the router sees ----


def next_hops(lab: Lab, vip: str) -> list[str]:
    """The gateways of the router's kernel route to `vip` (sorted; empty: no route)."""
    hops = []
    for route in _router_json(lab, "route", "show", f"{vip}/32"):
        if route.get("dst") != vip:
            continue
        hops += [h["gateway"] for h in route.get("nexthops", []) if "gateway" in h]
        if "gateway" in route:
            hops.append(route["gateway"])
    return sorted(hops)


def router_query(lab: Lab, command: str) -> bird.Reply:
    async def ask() -> bird.Reply:
        control = bird.BirdControl(str(control_socket(lab, ROUTER)))
        try:
            return await control.command(command)
        finally:
            await control.close()

    return asyncio.run(ask())


def bfd_states(lab: Lab) -> dict[str, str]:
    """Node address -> the router's BFD session state."""
    return bird.bfd_sessions(router_query(lab, "show bfd sessions"))


def ready(lab: Lab) -> bool:
    """Every node's path to every VIP is in the router's kernel table."""
    want = sorted(n.address for n in lab.layout.nodes)
    return all(next_hops(lab, vip) == want for vip in lab.layout.vips)


def summary(lab: Lab) -> str:
    """What `hactl lab up --mode bgp` prints: each VIP's next hops and each node's BFD state."""
    names = {n.address: n.name for n in lab.layout.nodes}
    lines = []
    for vip in lab.layout.vips:
        hops = ", ".join(names.get(h, h) for h in next_hops(lab, vip)) or "no route"
        lines.append(f"router: {vip}/32 via {hops}")
    bfd = bfd_states(lab)
    lines.append(
        "router BFD: " + ", ".join(f"{names.get(a, a)} {s}" for a, s in sorted(bfd.items()))
    )
    return "\n".join(lines)


def use_resilient(lab: Lab) -> None:
    """Switch the running router to flow-keeping ECMP: BIRD exports to `nhmirror.TABLE`, and
    `nhmirror` programs resilient next-hop groups in the main table from there
    (`control.Lab.use_resilient_router` also waits until the groups have settled)."""
    validated(bird_conf(lab, ROUTER), router_config(lab.layout, table=nhmirror.TABLE))
    router_query(lab, "configure")
    argv = [sys.executable, "-m", "haproxy_py.lab.nhmirror", *lab.layout.vips]
    label = f"{ROUTER}/nhmirror"
    lab.plumbing.spawn(lab.layout.prefix + ROUTER, argv, label=label, log=lab.paths.log(label))


def _router_json(lab: Lab, *args: str) -> list[dict[str, Any]]:
    """`ip -j ARGS` in the router's namespace; [] when there is nothing (`ip` then prints
    "[" and "Dump terminated", or an error)."""
    out = netns.ip("-j", *args, netns=lab.layout.prefix + ROUTER, check=False)
    try:
        found = json.loads(out or "[]")
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def resilient_group(lab: Lab, vip: str) -> dict[str, Any] | None:
    """The router's next-hop group for `vip` (`ip -j nexthop show`), None in plain ECMP."""
    groups = _router_json(lab, "nexthop", "show", "id", str(nhmirror.group_id(vip)))
    return groups[0] if groups else None


def buckets(lab: Lab, vip: str) -> dict[int, int]:
    """Bucket index -> next-hop object id in the router's resilient group for `vip` (empty
    while there is none)."""
    found = _router_json(lab, "nexthop", "bucket", "show", "id", str(nhmirror.group_id(vip)))
    return {b["bucket"]["index"]: b["bucket"]["nhid"] for b in found}


def weights(lab: Lab, vip: str) -> dict[int, int]:
    """Next-hop object id -> its weight in the router's group for `vip` (`ip` omits a 1)."""
    group = resilient_group(lab, vip) or {}
    return {m["id"]: m.get("weight", 1) for m in group.get("group", [])}


def balanced(lab: Lab, vip: str) -> bool:
    """Every node's next hop is in the group at full weight and holds its share of the
    buckets (a next hop that joins or gains weight gets idle buckets only after
    `nhmirror.IDLE` s)."""
    ids = {nhmirror.object_id(n.address) for n in lab.layout.nodes}
    if weights(lab, vip) != dict.fromkeys(ids, nhmirror.SERVING):
        return False
    counts = collections.Counter(buckets(lab, vip).values())
    share = nhmirror.BUCKETS // len(lab.layout.nodes)
    return set(counts) == ids and min(counts.values()) >= share
