"""The stacks under test, each able to settle, inject a fault into its active node, and recover.

Both run on the same lab (same namespaces, proxies and backends):
`HaproxyPy` is the lab as built (agents, controllers, etcd); `Keepalived`
stops the agents and controllers and lets keepalived move the VIP instead.
Faults use the lab's own process handling (`control.Lab`) and one partition
(`cut`), so each stack gets exactly the same SIGKILL, SIGTERM and partition.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from bench.failover import cut, kaconf
from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.timing import PROFILES
from haproxy_py.lab import control, stolen
from haproxy_py.lab.layout import ADMIN_PORT, Member
from haproxy_py.lab.netns import in_netns, ip
from haproxy_py.lab.settle import wait
from haproxy_py.lab.watch import AddressReader

SCENARIOS = ("planned", "kill", "proxy", "partition", "sigterm", "stolen", "stolen-leader")
SCENARIO_TITLES = {
    "planned": "planned move",
    "kill": "SIGKILL of the active node",
    "proxy": "active node's proxy killed",
    "partition": "partition of the active node",
    "sigterm": "clean stop (SIGTERM) of the active node",
    "stolen": "SIGKILL of the active node, its etcd lease kept alive with the other's agent key "
    "(the controller leader elsewhere)",
    "stolen-leader": "SIGKILL of the active node and leading controller, its agent's and its "
    "controller's etcd leases kept alive with the other's agent key",
}
# Faults of etcd itself (`bench.failover.etcdfaults`): nothing should move, so they are measured
# apart from the scenarios above; keepalived has no etcd.
ETCD_FAULT_TITLES = {
    "etcd-leader": "etcd leader member SIGKILLed",
    "etcd-all": "every etcd member stopped (full outage)",
}
SETTLE_TIMEOUT = 90.0
LOG_TAIL = 65536  # bytes of a keepalived log that surely hold its latest state and check result


class BenchError(Exception):
    """The stack did not reach the state a trial needs; the message says which and where."""


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    if wait(check, timeout, every) is None:
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


class Stack(ABC):
    """One way of moving the VIP between the lab's nodes."""

    name: str
    title: str
    scenarios: tuple[str, ...] = SCENARIOS  # the ones that apply to this stack

    def __init__(self, lab: control.Lab) -> None:
        self.lab = lab
        self.vip = lab.layout.vips[0]
        self._readers: dict[str, AddressReader] = {}

    def holders(self) -> list[str]:
        """The nodes that have the VIP on an interface now."""
        if not self._readers:
            self._readers = {n.name: AddressReader(n.netns) for n in self.lab.layout.nodes}
        return [name for name, r in self._readers.items() if self.vip in r.addresses()]

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def other(self, node: str) -> str:
        return next(n.name for n in self.lab.layout.nodes if n.name != node)

    def terminate(self, node: str, processes: tuple[str, ...]) -> None:
        """SIGTERM the named processes of `node` at once (as a service manager stopping the
        host does), then wait for each to exit (SIGKILL after 10 s)."""
        procs = [
            p
            for p in self.lab.plumbing.procs(node + "/")
            if p.label.split("/", 1)[1] in processes and self.lab.plumbing.alive(p)
        ]
        for proc in procs:
            _signal(proc.pid, signal.SIGTERM)  # the main process only, as systemd's stop does
        deadline = time.monotonic() + 10
        for proc in procs:
            while self.lab.plumbing.alive(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.lab.plumbing.kill(proc)  # whatever is left of its group; forgets it

    def _ends(self, node: str) -> tuple[cut.End, list[cut.End]]:
        member = self.lab.layout.node(node)
        peers = [m for m in (*self.lab.layout.etcd, *self.lab.layout.nodes) if m != member]
        return cut.End(member.netns, member.address), [cut.End(m.netns, m.address) for m in peers]

    def partition(self, node: str) -> None:
        """Cut `node` off from etcd and the other nodes; clients and backends still reach it."""
        cut.cut(*self._ends(node))

    def heal(self, node: str) -> None:
        cut.mend(*self._ends(node))

    def detail(self) -> str:
        """What else about the steady state explains a trial's figures (e.g. where the controller
        leads); empty when nothing does."""
        return ""

    @abstractmethod
    def start(self) -> None:
        """Take over the VIP handling of the lab."""

    @abstractmethod
    def stop(self) -> None:
        """Give the VIP handling back up, leaving no VIP on any node."""

    @abstractmethod
    def settle(self) -> str:
        """Wait until the stack is in its steady state; return the active node."""

    def prepare(self, scenario: str, node: str) -> None:  # noqa: B027 (most need nothing)
        """Set up what `scenario` needs before the fault, outside the measured time."""

    @abstractmethod
    def inject(self, scenario: str, node: str) -> None:
        """Apply `scenario` to the active `node`."""

    @abstractmethod
    def recover(self, scenario: str, node: str) -> None:
        """Undo `scenario` on `node` (restart what was killed, heal, ...)."""


class HaproxyPy(Stack):
    """The lab as built: agents with leases and kernel-fenced VIPs, controllers, 3-member etcd,
    in the lab's timing profile (`hactl lab up --profile`)."""

    def __init__(self, lab: control.Lab) -> None:
        super().__init__(lab)
        profile = lab.layout.profile
        self.name = name_of(profile)
        self.title = f"haproxy-py {profile} (etcd lease, TTL {lab.layout.timing.lease_ttl} s)"
        self.keepers: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        for node in self.lab.layout.nodes:
            self.lab.start_node(node.name)

    def stop(self) -> None:
        for node in self.lab.layout.nodes:
            self.terminate(node.name, ("agent", "controller"))
        wait_until(lambda: not self.holders(), 30, "the agents to release the VIP")

    def settle(self) -> str:
        def steady() -> bool:
            return len(self.holders()) == 1 and self.lab.ready()

        wait_until(steady, SETTLE_TIMEOUT, "haproxy-py to settle (nodes healthy, VIP answering)")
        return self.holders()[0]

    def _leader(self) -> str | None:
        leader = self.lab.view().leader
        return leader.id if leader else None

    def detail(self) -> str:
        """The controller leader: when it is on the node that dies, a standby controller must
        first win the election before the dead node's VIP can be reassigned."""
        try:
            leader = self._leader()
        except StoreError:
            return "controller leader: unknown (etcd unreachable)"
        return f"controller leader: {leader or 'none'}"

    def inject(self, scenario: str, node: str) -> None:
        if scenario == "planned":
            done = self.lab.hactl("failover", "--yes", "--vip", self.vip, "--to", self.other(node))
            if done.returncode != 0:
                raise BenchError(f"hactl failover failed: {(done.stderr or done.stdout).strip()}")
        elif scenario in ("kill", "stolen", "stolen-leader"):
            self.lab.kill(node)
        elif scenario == "proxy":
            self.lab.kill(node, "proxy")
        elif scenario == "partition":
            self.partition(node)
        elif scenario == "sigterm":
            self.terminate(node, control.NODE_PROCESSES)
        else:
            raise BenchError(f"unknown scenario {scenario!r}")

    def prepare(self, scenario: str, node: str) -> None:
        """ "stolen": the other node's agent key keeps `node`'s lease alive (`lab.stolen`), the
        controller leading elsewhere; "stolen-leader": `node`'s controller leads, and the same
        key keeps its election lease alive too."""
        if not scenario.startswith("stolen"):
            return
        leader = node if scenario == "stolen-leader" else self.other(node)
        # the other one steps down at once (SIGTERM), and is up again as a standby
        if not stolen.hand_leadership(
            self.lab, leader, lambda n: self.terminate(n, ("controller",))
        ):
            raise BenchError(f"{leader}'s controller did not lead, or the other did not start")
        view = self.lab.view()
        record = view.nodes.get(node)
        if record is None or not record.lease:
            raise BenchError(f"{node} has no lease in etcd to keep alive")
        leases = [record.lease]
        if scenario == "stolen-leader" and view.leader is not None:
            leases.append(view.leader.lease)
        for lease in leases:
            keeper = stolen.keep_alive(self.lab, self.other(node), lease)
            self.keepers.append(keeper)
            assert keeper.stdout is not None
            first = keeper.stdout.readline()  # etcdctl's first refresh, or its error
            if "keepalived with TTL" not in first:
                raise BenchError(
                    f"etcdctl lease keep-alive: {first.strip() or stolen.stop(keeper)}"
                )
        time.sleep(1.0)  # the controllers probe the node and the leader a few times first

    def recover(self, scenario: str, node: str) -> None:
        while self.keepers:
            stolen.stop(self.keepers.pop())
        if scenario == "partition":
            self.heal(node)
        if scenario != "planned":
            self.lab.restart(node)


class Keepalived(Stack):
    """The same proxies, with keepalived (one profile of `kaconf`) moving the VIP.

    The documented pair has a primary (highest priority) and a backup, and the primary takes
    the VIP back whenever it returns (preemption, one more takeover interval of waiting). So
    that each trial need not wait for that, the roles follow the VIP: when a node recovers
    from a fault it is configured as the backup and the node that took over as the primary.
    Every fault thus still hits a primary holding the VIP with a healthy backup, configured
    exactly as documented; only which node is which alternates.
    """

    scenarios = tuple(s for s in SCENARIOS if not s.startswith("stolen"))  # no etcd, no lease

    def __init__(self, lab: control.Lab, profile: kaconf.Profile) -> None:
        super().__init__(lab)
        self.profile = profile
        self.name = f"keepalived-{profile.name}"
        self.title = profile.title
        self.dir = lab.paths.root / self.name
        self.peers = [
            kaconf.Peer(n.name, n.address, kaconf.base_priority(i))
            for i, n in enumerate(lab.layout.nodes)
        ]
        self.primary = self.peers[0].name

    def _pid_file(self, node: str, kind: str = "") -> Path:
        return self.dir / f"{node}.{kind}pid"

    def _config_file(self, node: str) -> Path:
        return self.dir / f"{node}.conf"

    def _priorities(self) -> dict[str, int]:
        """The documented priorities, the primary's first."""
        order = [self.primary, *(p.name for p in self.peers if p.name != self.primary)]
        return {name: kaconf.base_priority(i) for i, name in enumerate(order)}

    def _write_config(self, node: str, priority: int | None = None) -> None:
        me = next(p for p in self.peers if p.name == node)
        mine = self._priorities()[node] if priority is None else priority
        me = kaconf.Peer(me.name, me.address, mine)
        text = kaconf.render(
            self.profile,
            me,
            [p for p in self.peers if p.name != node],
            self.vip,
            f"http://127.0.0.1:{ADMIN_PORT}/healthz",
        )
        self._config_file(node).write_text(text)

    def _spawn(self, member: Member) -> None:
        node = member.name
        # A SIGKILLed keepalived leaves its pid files; a PID in them that is alive again (reused,
        # or a not yet reaped child) makes keepalived refuse to start ("already running").
        for pidfile in (self._pid_file(node), self._pid_file(node, "vrrp.")):
            pidfile.unlink(missing_ok=True)
        argv = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",
            "--vrrp",
            f"--use-file={self._config_file(node)}",
            f"--pid={self._pid_file(node)}",
            f"--vrrp_pid={self._pid_file(node, 'vrrp.')}",
        ]
        label = f"{node}/keepalived"
        log = self.lab.paths.log(f"{node}-{self.name}")
        self.lab.plumbing.spawn(member.netns, argv, label=label, log=log)

    def _keepalived(self, node: str) -> list[int]:
        return [
            p.pid
            for p in self.lab.plumbing.procs(f"{node}/keepalived")
            if self.lab.plumbing.alive(p)
        ]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # The previous stack's node ancillaries must be gone, the proxies must run.
        for node in self.lab.layout.nodes:
            self.terminate(node.name, ("agent", "controller"))
            self.lab.start_node(node.name, ("proxy",))
            self._undrain(node)
            self._write_config(node.name)
        for node in self.lab.layout.nodes:
            self._spawn(node)
        self.settle()

    def stop(self) -> None:
        for node in self.lab.layout.nodes:
            self.terminate(node.name, ("keepalived",))
        wait_until(lambda: not self.holders(), 30, "keepalived to remove the VIP")

    def _proxy_healthy(self, member: Member) -> bool:
        return _admin(member, "GET", "/healthz")

    def _log_status(self, node: str) -> kaconf.LogStatus:
        """The node's keepalived state and health check result, from the tail of its log."""
        log = self.lab.paths.log(f"{node}-{self.name}")
        try:
            with log.open("rb") as f:
                f.seek(max(0, log.stat().st_size - LOG_TAIL))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return kaconf.LogStatus("", False)
        return kaconf.log_status(lines)

    def _reload(self, node: str) -> None:
        """Write the node's configuration and have its keepalived (if running) reload it."""
        self._write_config(node)
        for pid in self._keepalived(node):
            _signal(pid, signal.SIGHUP)

    def _undrain(self, member: Member) -> None:
        """A stopping agent drains its proxy; under keepalived the proxy must serve again."""
        wait_until(lambda: _admin(member, "POST", "/undrain"), 30, f"{member.name}'s proxy admin")

    def _unsteady(self) -> str:
        """What keeps the stack from its steady state; empty once it is there."""
        holders = self.holders()
        if holders != [self.primary]:
            return f"the VIP is on {', '.join(holders) or 'no node'}"
        for node in self.lab.layout.nodes:
            want = "MASTER" if node.name == self.primary else "BACKUP"
            if not self._keepalived(node.name):
                return f"{node.name}'s keepalived is not running"
            status = self._log_status(node.name)
            if status.state != want:
                return f"{node.name}'s keepalived is {status.state or 'starting'}, not {want}"
            if not status.check_passing:
                # Without the check's weight a backup would not take over from the primary.
                return f"{node.name}'s health check has not succeeded"
            if not self._proxy_healthy(node):
                return f"{node.name}'s proxy is not healthy"
        if control.whoami(self.vip, timeout=2) is None:
            return "the VIP does not answer"
        return ""

    def settle(self) -> str:
        """Steady state: the primary (highest priority) is MASTER and alone holds the VIP, every
        other keepalived is BACKUP, every health check passes, and the VIP answers."""

        waiting = ""

        def steady() -> bool:
            nonlocal waiting
            waiting = self._unsteady()
            return not waiting

        try:
            wait_until(steady, SETTLE_TIMEOUT, f"{self.title} to settle with {self.primary} MASTER")
        except BenchError as exc:
            raise BenchError(f"{exc} (still: {waiting})") from None
        return self.primary

    def inject(self, scenario: str, node: str) -> None:
        if scenario == "planned":
            # What keepalived users do: lower the active node's priority and reload.
            lowest = min(p.priority for p in self.peers)
            self._write_config(node, priority=lowest - 1)
            for pid in self._keepalived(node):
                _signal(pid, signal.SIGHUP)
        elif scenario == "kill":
            self.lab.kill(node)
        elif scenario == "proxy":
            self.lab.kill(node, "proxy")
        elif scenario == "partition":
            self.partition(node)
        elif scenario == "sigterm":
            self.terminate(node, ("proxy", "keepalived"))
        else:
            raise BenchError(f"unknown scenario {scenario!r}")

    def recover(self, scenario: str, node: str) -> None:
        member = self.lab.layout.node(node)
        took_over = [n for n in self.holders() if n != node]
        self.primary = took_over[0] if took_over else self.other(node)
        # The recovered node first becomes the backup, then the survivor the primary: at no
        # moment may the recovered node outrank the node holding the VIP (it would preempt).
        self._reload(node)
        self._reload(self.primary)
        if scenario == "planned":
            return
        if scenario == "partition":
            self.heal(node)
            return
        if scenario == "kill":
            # keepalived has no fencing: a SIGKILLed master leaves its VIP behind.
            ip("addr", "del", f"{self.vip}/32", "dev", "eth0", netns=member.netns, check=False)
        self.lab.start_node(node, ("proxy",))
        if not self._keepalived(node):
            self._spawn(member)


def _signal(pid: int, sig: int) -> None:
    """Signal a process the lab started and still knows (it may just have exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _admin(member: Member, method: str, path: str) -> bool:
    """Call the node's proxy admin API (on the node's loopback); True on a 2xx answer."""

    def call() -> bool:
        url = f"http://127.0.0.1:{ADMIN_PORT}{path}"
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(200 <= response.status < 300)
        except OSError:
            return False

    return in_netns(member.netns, call)


def name_of(profile: str) -> str:
    """The stack name of haproxy-py in a timing profile: `haproxy-py`, `haproxy-py-fast`."""
    return "haproxy-py" if profile == "default" else f"haproxy-py-{profile}"


def profile_of(name: str) -> str | None:
    """The lab timing profile a stack needs; None: any (keepalived leaves etcd alone)."""
    return next((p for p in PROFILES if name_of(p) == name), None)


def make(lab: control.Lab, name: str) -> Stack:
    if profile_of(name) == lab.layout.profile:
        return HaproxyPy(lab)
    if name.startswith("keepalived-") and name.removeprefix("keepalived-") in kaconf.PROFILES:
        return Keepalived(lab, kaconf.PROFILES[name.removeprefix("keepalived-")])
    raise BenchError(f"unknown stack {name!r} (or not in a lab of its timing profile)")


STACKS = (*(name_of(p) for p in PROFILES), *(f"keepalived-{p}" for p in kaconf.PROFILES))
