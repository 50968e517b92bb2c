"""A small cluster in network namespaces for the agent's failover tests.

Two proxy nodes (`hvln1`, `hvln2`) and a client (`hvlc`) on bridge `hvlbr`;
etcd runs on the host, listening on the bridge's host-side address so the
namespaces can reach it (and a blackhole route in one namespace cuts it off).
Each node runs a backend (`tests.lab.agent.backend`: HTTP and a WebSocket echo
on its own loopback), the real proxy (`haproxy-py run`) and the agent
(`ha-agent`); the real controller (`ha-controller`) runs on the host. A
`Watcher` (the lab's two-owners watcher) reads every node's addresses over
netlink every few milliseconds and records any instant at which a VIP sits on
two nodes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.store import Store
from haproxy_py.lab import activate
from haproxy_py.lab.netns import Plumbing, Proc
from haproxy_py.lab.watch import TwoOwnersWatcher, Violation
from tests.support.etcd import EtcdMember, free_ports
from tests.support.wait import eventually_async

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[3]
NODE_NAMES = ("n1", "n2")
PRIORITIES = {"n1": 200, "n2": 100}
ADMIN = "127.0.0.1:9901"  # inside each node's own namespace, so no two ever collide
BACKEND_PORT = 8090
PROXY_PORT = 8080


def bridge_etcd(host: str, root: Path) -> EtcdMember:
    """One etcd member whose client URL is on the bridge's host-side address."""
    client, peer = free_ports(2)
    root.mkdir(parents=True, exist_ok=True)
    return EtcdMember("m0", client, peer, root / "m0", f"m0=http://127.0.0.1:{peer}", host=host)


class Watcher:
    """The lab's two-owners watcher over the node namespaces, asked what these tests ask.

    Times are monotonic, as the tests' own are.
    """

    def __init__(self, netns: dict[str, str], vips: tuple[str, ...], period: float = 0.004):
        self.vips = vips
        self._watcher = TwoOwnersWatcher(netns, frozenset(vips), interval=period)
        self._offset = time.time() - time.monotonic()

    def start(self) -> None:
        self._watcher.__enter__()

    def stop(self) -> None:
        self._watcher.stop()

    @property
    def rounds(self) -> int:
        return self._watcher.result.sweeps

    @property
    def doubles(self) -> list[Violation]:
        return self._watcher.result.violations

    def _changes(self, vip: str) -> list[tuple[float, frozenset[str]]]:
        """(monotonic time, holders) at every change of `vip`'s holders."""
        changes = list(self._watcher.result.changes)
        return [(at - self._offset, frozenset(nodes)) for at, v, nodes in changes if v == vip]

    def holder(self, vip: str) -> frozenset[str]:
        changes = self._changes(vip)
        return changes[-1][1] if changes else frozenset()

    def gaps(self, vip: str, since: float) -> list[tuple[float, str, str]]:
        """(seconds unowned, from node, to node) for each hand-over of `vip` after `since`."""
        result = []
        owner: str | None = None
        lost_at: float | None = None
        for at, nodes in self._changes(vip):
            if nodes and lost_at is not None and owner is not None and at >= since:
                result.append((at - lost_at, owner, ",".join(sorted(nodes))))
                lost_at = None
            if nodes:
                owner = ",".join(sorted(nodes))
            elif owner is not None and lost_at is None:
                lost_at = at
        return result

    def lost_at(self, vip: str, node: str, since: float) -> float | None:
        """When `node` stopped holding `vip` (first time after `since`)."""
        had = False
        for at, nodes in self._changes(vip):
            if at < since:
                had = node in nodes
                continue
            if node in nodes:
                had = True
            elif had:
                return at
        return None


@dataclass
class Node:
    name: str
    netns: str
    address: str
    config: Path
    backend: Proc | None = None
    proxy: Proc | None = None
    agent: Proc | None = None


@dataclass
class Cluster:
    lab: Plumbing
    root: Path
    net: str
    etcd: EtcdMember
    vips: tuple[str, ...]
    mode: str
    nodes: dict[str, Node]
    client: str
    controller: Proc | None = None
    publish_delay: float = 0.0  # > 0: agents write their node record this late (slow_agent)
    publish_every: bool = False  # every write of it late, not only one newly listing a VIP
    drain_delay: float = 0.0  # > 0: a released VIP's drain this late after its let-out

    @property
    def vip(self) -> str:
        return self.vips[0]

    @property
    def vip_list(self) -> str:
        return "[" + ", ".join(f'"{vip}"' for vip in self.vips) + "]"

    @property
    def etcd_host(self) -> str:
        return f"{self.net}.1"

    def node_config(self, name: str, address: str) -> str:
        return f"""
[node]
name = "{name}"
address = "{address}"
interface = "eth0"
priority = {PRIORITIES[name]}

[cluster]
name = "lab"
vips = {self.vip_list}

[etcd]
endpoints = ["{self.etcd.endpoint}"]

[agent]
proxy_admin_url = "http://{ADMIN}"
health_interval = 0.05
reconcile_interval = 0.5
metrics_bind = ""

[logging]
level = "info"
format = "console"

[admin]
bind = "{ADMIN}"

[proxy]
access_log = false

[[listeners]]
name = "web"
bind = "0.0.0.0:{PROXY_PORT}"

[[routes]]
backend = "app"

[backends.app]
servers = ["127.0.0.1:{BACKEND_PORT}"]
health = {{ path = "/", interval = 0.05, timeout = 0.5, rise = 1, fall = 2 }}
"""

    def controller_config(self) -> str:
        return f"""
[cluster]
name = "lab"
mode = "{self.mode}"
vips = {self.vip_list}

[etcd]
endpoints = ["{self.etcd.endpoint}"]

[controller]
id = "c1"
lease_ttl = 3
keepalive_interval = 0.5
tick = 0.2
metrics = ""

[logging]
level = "info"
format = "console"
"""

    def log(self, label: str) -> Path:
        return self.root / f"{label}.log"

    def start_backend(self, node: Node) -> None:
        node.backend = self.lab.spawn(
            node.netns,
            [
                sys.executable,
                "-m",
                "tests.lab.agent.backend",
                node.name,
                "127.0.0.1",
                str(BACKEND_PORT),
            ],
            label=f"backend-{node.name}",
            log=self.log(f"backend-{node.name}"),
            cwd=REPO,
        )

    def start_agent(self, node: Node) -> None:
        program = [str(BIN / "ha-agent")]
        if self.publish_delay or self.drain_delay:
            slow = ["-m", "tests.lab.agent.slow_agent", str(self.publish_delay)]
            slow += ["every"] if self.publish_every else []
            slow += [f"drain={self.drain_delay}"] if self.drain_delay else []
            program = [sys.executable, *slow]
        node.agent = self.lab.spawn(
            node.netns,
            [*program, "--config", str(node.config)],
            label=f"agent-{node.name}",
            log=self.log(f"agent-{node.name}"),
            cwd=REPO,
        )

    def start_client(self, module: str, *args: str) -> Proc:
        """`python -m tests.lab.agent.<module> ARGS...` in the client's namespace."""
        return self.lab.spawn(
            self.client,
            [sys.executable, "-m", f"tests.lab.agent.{module}", *args],
            label=module,
            log=self.log(module),
            cwd=REPO,
        )

    def start_prober(self, seconds: float) -> Proc:
        """The client's HTTP prober of the VIP (`tests.lab.agent.prober`), into prober.out."""
        return self.lab.spawn(
            self.client,
            [
                sys.executable,
                "-m",
                "tests.lab.agent.prober",
                self.vip,
                "8080",
                str(seconds),
                str(self.root / "prober.out"),
            ],
            label="prober",
            log=self.log("prober"),
            cwd=REPO,
        )

    def start_proxy(self, node: Node) -> None:
        """The proxy as its hardened unit runs it: its listening socket from the side (as
        haproxy-py.socket passes it), no capability but CAP_NET_BIND_SERVICE."""
        node.proxy = self.lab.spawn(
            node.netns,
            activate.command(
                [f"0.0.0.0:{PROXY_PORT}"],
                [str(BIN / "haproxy-py"), "run", "--config", str(node.config)],
            ),
            label=f"proxy-{node.name}",
            log=self.log(f"proxy-{node.name}"),
        )

    def start_controller(self) -> None:
        config = self.root / "controller.toml"
        config.write_text(self.controller_config())
        self.controller = self.lab.spawn(
            None,
            [str(BIN / "ha-controller"), "--config", str(config)],
            label="controller",
            log=self.log("controller"),
        )

    def start(self) -> None:
        for node in self.nodes.values():
            self.start_backend(node)
            self.start_proxy(node)
            self.start_agent(node)
        self.start_controller()

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            if path.name.startswith("backend"):
                continue  # one line per health check
            lines = path.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


@contextlib.contextmanager
def cluster(
    root: Path,
    lab: Plumbing,
    net: str,
    vips: int = 1,
    mode: str = "active-standby",
    publish_delay: float = 0.0,
    publish_every: bool = False,
    drain_delay: float = 0.0,
) -> Iterator[Cluster]:
    """Build the namespaces, etcd and every process; tear all of it down afterwards."""
    lab.bridge(f"{net}.1/24")
    nodes = {}
    for i, name in enumerate(NODE_NAMES, start=1):
        host = lab.add_host(name, f"{net}.{10 + i}/24")
        nodes[name] = Node(name, host.netns, f"{net}.{10 + i}", root / f"{name}.toml")
    client = lab.add_host("c", f"{net}.50/24")
    etcd = bridge_etcd(f"{net}.1", root / "etcd")
    addresses = tuple(f"{net}.{100 + i}" for i in range(vips))
    c = Cluster(lab, root, net, etcd, addresses, mode, nodes, client.netns, None, publish_delay)
    c.publish_every = publish_every
    c.drain_delay = drain_delay
    for node in nodes.values():
        node.config.write_text(c.node_config(node.name, node.address))
    etcd.spawn()
    try:
        etcd.wait_healthy()
        c.start()
        yield c
    finally:
        lab.teardown()
        etcd.kill()


def mac(netns: str) -> str:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "eth0"], capture_output=True, text=True
    ).stdout
    return str(json.loads(out)[0]["address"])


def neighbour(netns: str, address: str) -> str | None:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "neigh", "show", address], capture_output=True, text=True
    ).stdout
    entries = json.loads(out or "[]")
    return str(entries[0].get("lladdr")) if entries else None


# DESIGN.md "Failover paths and their budgets" (the agents here run the default 2 s lease).
# Asserted times FACTOR: a loaded shared machine still passes, a tenfold regression fails.
FACTOR = 3.0
NODE_LOSS = 2.3  # node crash or partition: lease expiry, p95
PLANNED = 0.1  # hactl failover: the VIP unowned
RESTART = 0.5  # a daemon restarted alone (a clean stop): what a client of the node may miss
PROXY_DEATH = 0.5  # a dead or hung proxy, node alive


@dataclass
class Lab:
    c: Cluster
    w: Watcher
    store: Store
    active: Node | None = None  # the node that got the VIP first (no preemption: either may)
    standby: Node | None = None

    @property
    def vip(self) -> str:
        return self.c.vip

    async def node(self, name: str) -> NodeRecord | None:
        kv = await self.store.get(self.store.schema.node(name))
        return NodeRecord.parse(name, kv.value, kv.lease) if kv else None

    async def healthy(self, name: str) -> bool:
        record = await self.node(name)
        return record is not None and record.healthy

    def wall(self, monotonic: float) -> float:
        """The unix time of a monotonic instant (node records carry unix times)."""
        return monotonic + time.time() - time.monotonic()

    def held_by(self, *names: str) -> bool:
        return self.w.holder(self.vip) == frozenset(names)

    def report(self, scenario: str, since: float, budget: float | None = None) -> None:
        """Print each time the VIP was unowned after `since`; fail past `budget` x FACTOR."""
        for gap, source, target in self.w.gaps(self.vip, since):
            print(f"GAP {scenario}: {gap * 1000:.0f} ms unowned ({source} -> {target})")
            if budget is not None:
                assert gap <= budget * FACTOR, (
                    f"{scenario}: the VIP was unowned {gap:.3f} s; the design's budget is "
                    f"{budget} s (asserted x{FACTOR:g})"
                )

    def client_log(self, since: float) -> list[tuple[float, bool, str]]:
        path = self.c.root / "prober.out"
        rows: list[tuple[float, bool, str]] = []
        if not path.exists():
            return rows
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and float(parts[0]) >= since:
                rows.append((float(parts[0]), parts[1] == "1", parts[2]))
        return rows

    def client_statuses(self, since: float, until: float) -> list[str]:
        """What the client got after `since` and before `until`: a status, or `-` (nothing)."""
        path = self.c.root / "prober.out"
        rows = path.read_text().splitlines() if path.exists() else []
        parts = [row.split() for row in rows]
        return [p[3] for p in parts if len(p) == 4 and since <= float(p[0]) < until]

    def served_by(self, node: str, since: float) -> bool:
        rows = self.client_log(since)
        return bool(rows) and rows[-1][1] and rows[-1][2] == node

    def client_gap(self, since: float) -> float:
        """The longest time the client got no answer after `since` (0 when it never failed)."""
        longest, failing_since = 0.0, None
        for at, ok, _ in self.client_log(since):
            if not ok and failing_since is None:
                failing_since = at
            elif ok and failing_since is not None:
                longest = max(longest, at - failing_since)
                failing_since = None
        return longest

    async def client_follows(
        self, scenario: str, node: Node, since: float, budget: float | None = None
    ) -> None:
        """The client reaches the VIP on `node` again, its ARP entry updated by GARP, having
        gone without answers no longer than `budget` x FACTOR when one is given."""
        await wait_or_show(self, lambda: self.served_by(node.name, since), 30, "client answers")
        gap = self.client_gap(since)
        print(f"GAP {scenario}: client saw {gap * 1000:.0f} ms without answers")
        if budget is not None:
            assert gap <= budget * FACTOR, (
                f"{scenario}: the client went {gap:.3f} s without answers; the design's budget "
                f"is {budget} s (asserted x{FACTOR:g})"
            )
        assert neighbour(self.c.client, self.vip) == mac(node.netns)

    def roles(self) -> tuple[Node, Node]:
        assert self.active is not None and self.standby is not None
        return self.active, self.standby

    def check(self) -> None:
        assert self.w.rounds > 100, "the watcher did not sample"
        assert not self.w.doubles, (
            f"VIP on two nodes at once: {self.w.doubles[:3]}\n{self.c.logs()}"
        )


async def wait_or_show(
    lab: Lab, check: Callable[[], bool | Awaitable[bool]], limit: float, what: str
) -> float:
    """`until`, adding the cluster's logs to the failure."""
    try:
        return await eventually_async(check, limit, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.c.logs()}") from None


async def restart(lab: Lab, node: Node, daemon: str, sig: int) -> None:
    """Stop one daemon of `node` with `sig`, wait for it to exit, start it again."""
    proc = getattr(node, daemon) if daemon != "controller" else lab.c.controller
    assert proc is not None
    lab.c.lab.kill(proc, sig)
    await wait_or_show(lab, lambda: not lab.c.lab.alive(proc), 30, f"{daemon} to exit")
    if daemon == "agent":
        lab.c.start_agent(node)
    elif daemon == "proxy":
        lab.c.start_proxy(node)
    else:
        lab.c.start_controller()


def in_service(lab: Lab, node: Node, since: float):
    """The node registered again, live, ready and not stopping (checked after `since`)."""

    async def check() -> bool:
        record: NodeRecord | None = await lab.node(node.name)
        return (
            record is not None
            and record.healthy
            and not record.stopping
            and record.ready == record.pools == 1
            and record.updated is not None
            and record.updated >= lab.wall(since)
        )

    return check
