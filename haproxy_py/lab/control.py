"""Bringing the lab up and down and injecting faults: the I/O shell around `layout`.

Everything the lab makes is recorded under its run directory (default
/run/haproxy-py/lab/): `netns.json` (namespaces, links, processes: see
`netns`), `lab.json` (the layout), `context.toml` (for plain `hactl`),
`pki/`, `etc/<node>.toml`, `data/` (etcd) and `logs/`. `down` needs nothing
but those files, so it also cleans up after a crashed `up` or test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from haproxy_py import pki
from haproxy_py.cluster import rbac
from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import ClusterView
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.lab import activate, bgplab, netns, nhmirror
from haproxy_py.lab import layout as lay
from haproxy_py.lab.layout import Layout, Member

RUN_DIR = Path("/run/haproxy-py/lab")
DEFAULT_PREFIX = "hapy-"
PREFERRED_SUBNET = 200  # 198.18.200.0/24 when free: far from the low /24s people pick by hand
# In start order: `sockets` holds the proxy's listening sockets, as haproxy-py.socket does.
NODE_PROCESSES = ("sockets", "proxy", "agent", "controller")
READY_TIMEOUT = 90.0

Say = Callable[[str], None]


class LabError(Exception):
    """Something the operator must fix or know; the message says what and what to do."""


def missing_requirements() -> str | None:
    """One line naming what this machine lacks for the lab, or None."""
    problem = netns.require_tools()
    if problem is not None:
        return problem
    if shutil.which("etcd") is None:
        return "the lab needs etcd (the etcd binary): apt-get install etcd-server"
    return None


@dataclasses.dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def netns_state(self) -> Path:
        return self.root / "netns.json"

    @property
    def layout(self) -> Path:
        return self.root / "lab.json"

    @property
    def context(self) -> Path:
        return self.root / "context.toml"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def port_file(self) -> Path:
        return self.root / "forward.port"

    def log(self, label: str) -> Path:
        return self.logs / (label.replace("/", "-") + ".log")

    def sockets(self, node: str) -> Path:
        """Where the node's socket holder hands out the proxy's listening sockets."""
        return self.root / "sockets" / node

    def config(self, node: str) -> Path:
        return self.etc / f"{node}.toml"

    # What `down` removes: only names the lab itself writes.
    OWNED = (
        "netns.json",
        "lab.json",
        "context.toml",
        "forward.port",
        "pki",
        "etc",
        "data",
        "sockets",
    )


def _program(name: str) -> str:
    """A console script of this installation (next to the running interpreter)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise LabError(f"{name} is not installed: pip install -e . (or run make deps)")
    return found


class Lab:
    """A lab built (or found) under a run directory."""

    def __init__(self, paths: Paths, layout: Layout) -> None:
        self.paths = paths
        self.layout = layout
        self.plumbing = netns.Plumbing(layout.prefix, paths.netns_state)

    # ---- finding, building and removing ----

    @classmethod
    def load(cls, run_dir: Path = RUN_DIR) -> Lab:
        paths = Paths(run_dir)
        if not paths.layout.exists():
            raise LabError(f"no lab is up (nothing in {run_dir}): start one with `hactl lab up`")
        return cls(paths, Layout.load(paths.layout))

    @classmethod
    def up(
        cls,
        *,
        run_dir: Path = RUN_DIR,
        prefix: str = DEFAULT_PREFIX,
        nodes: int = 2,
        mode: str = "active-standby",
        vips: int | None = None,
        profile: str = "default",
        say: Say = print,
    ) -> Lab:
        """Build the whole lab and wait until a VIP answers; on failure remove it again."""
        paths = Paths(run_dir)
        netns.check_prefix(prefix)
        if paths.layout.exists() or paths.netns_state.exists():
            raise LabError(
                f"a lab is already up (state in {run_dir}): use it, or remove it with "
                "`hactl lab down` first"
            )
        leftover = netns.leftovers(prefix)
        if leftover:
            raise LabError(
                f"{leftover[0]} already exists (prefix {prefix!r} is in use by another lab); "
                "remove it or choose another --prefix"
            )
        subnet = netns.free_subnet(PREFERRED_SUBNET)
        layout = lay.plan(prefix, str(subnet), nodes, mode, vips, profile)
        lab = cls(paths, layout)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(paths.logs, ignore_errors=True)
            for d in (paths.etc, paths.data, paths.logs, paths.root / "sockets"):
                d.mkdir(parents=True, exist_ok=True)
            layout.save(paths.layout)
            lab._build(say)
        except BaseException:
            say(f"lab up failed; removing what was built (logs stay in {paths.logs})")
            down(run_dir, keep_logs=True)
            raise
        return lab

    def _build(self, say: Say) -> None:
        layout, paths = self.layout, self.paths
        if layout.mode == "bgp":
            bgplab.build(self, say)
            wait_for(lambda: bgplab.ready(self), READY_TIMEOUT, "BGP did not converge", paths.logs)
            return
        say(f"subnet {layout.subnet} on bridge {layout.prefix}br, namespaces {layout.prefix}*")
        self.plumbing.bridge(f"{layout.host_address}/{layout.prefixlen}")
        for m in layout.members:
            self.plumbing.add_host(m.name, f"{m.address}/{layout.prefixlen}")
        self.start_cluster_store(say)
        say("starting the demo app backends")
        for m in layout.apps:
            self._spawn(m.name, m, self._app_command(m))
        for i, node in enumerate(layout.nodes):
            paths.config(node.name).write_text(
                lay.node_config(layout, node, paths.pki, priority=200 - 10 * i)
            )
        say(
            f"starting {len(layout.nodes)} proxy nodes (haproxy-py + ha-agent + ha-controller), "
            f"timing profile {layout.profile} (lease TTL {layout.timing.lease_ttl} s)"
        )
        for node in layout.nodes:
            self.start_node(node.name)
        wait_for(self.ready, READY_TIMEOUT, "the cluster did not become ready", paths.logs)
        self._start_forwarder()

    def start_cluster_store(self, say: Say) -> None:
        """Certificates, the 3-member etcd cluster, its users and roles (every mode)."""
        self._certificates()
        say("starting a 3-member etcd cluster (mTLS)")
        for m in self.layout.etcd:
            self.start_etcd(m.name)
        wait_for(self.etcd_healthy, READY_TIMEOUT, "etcd did not become healthy", self.paths.logs)
        say("etcd users and roles from the certificates' names; auth enabled")
        self._authorization()
        self.paths.context.write_text(lay.context_file(self.layout, self.paths.pki))

    def _certificates(self) -> None:
        """A cluster CA and an etcd peer CA; one identity per daemon, the operator and root."""
        ca = self.paths.pki
        try:
            pki.init_ca(ca, common_name="haproxy-py lab CA")
            pki.init_ca(ca, common_name="haproxy-py lab etcd peer CA", ca=pki.PEER_CA)
            for m in self.layout.etcd:
                pki.issue(ca, m.name, [m.address, "127.0.0.1"])
                pki.issue(ca, f"{m.name}-peer", [m.address], ca=pki.PEER_CA)
            for m in self.layout.nodes:
                pki.issue(ca, f"agent-{m.name}", client=True)
                pki.issue(ca, f"controller-{m.name}", client=True)
            for name in (lay.OPERATOR, lay.ROOT):
                pki.issue(ca, name, client=True)
        except pki.PkiError as exc:
            raise LabError(f"certificates: {exc}") from None

    def _authorization(self) -> None:
        """etcd users and roles from the role table, then auth on (as root)."""
        nodes = [m.name for m in self.layout.nodes]
        operator = lay.OPERATOR.removeprefix("operator-")
        desired = rbac.plan(
            lay.CLUSTER, nodes, [operator], admins=[m.name for m in self.layout.etcd]
        )

        async def apply() -> None:
            async with Store(self.etcd_config(), lay.CLUSTER) as store:
                await rbac.apply(store, desired)

        try:
            asyncio.run(apply())
        except StoreError as exc:
            raise LabError(f"etcd authorization: {exc}") from None

    def _start_forwarder(self) -> None:
        self.paths.port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "haproxy_py.lab.forward", "--port-file"]
        argv += [str(self.paths.port_file), "--to", f"{self.layout.vips[0]}:{lay.PROXY_PORT}"]
        self.plumbing.spawn(None, argv, label="forward", log=self.paths.log("forward"))
        wait_for(self.paths.port_file.exists, 15, "the host port forwarder did not start", None)
        port = int(self.paths.port_file.read_text())
        self.layout = dataclasses.replace(self.layout, host_port=port)
        self.layout.save(self.paths.layout)

    # ---- processes ----

    def _spawn(self, label: str, member: Member, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.plumbing.spawn(member.netns, argv, label=label, log=self.paths.log(label), env=env)

    def _app_command(self, app: Member) -> list[str]:
        return [
            sys.executable,
            "-m",
            "haproxy_py.lab.demoapp",
            "--name",
            app.name,
            "--host",
            app.address,
            "--port",
            str(lay.APP_PORT),
        ]

    def _node_command(self, node: str, process: str) -> list[str]:
        if self.layout.mode == "bgp":
            return bgplab.node_command(self, node, process, _program)
        config = str(self.paths.config(node))
        holder = str(self.paths.sockets(node))
        if process == "sockets":
            listen = [f"{vip}:{lay.PROXY_PORT}" for vip in self.layout.vips]
            return activate.hold_command(holder, listen)
        if process == "proxy":  # listening sockets passed as systemd's haproxy-py.socket does
            return activate.from_command(
                holder, [_program("haproxy-py"), "run", "--config", config]
            )
        return [_program(f"ha-{process}"), "--config", config]

    def running(self, name: str) -> list[str]:
        """Labels of the live processes of a node or etcd member."""
        return [
            p.label
            for p in self.plumbing.procs()
            if (p.label == name or p.label.startswith(name + "/")) and self.plumbing.alive(p)
        ]

    def start_node(self, name: str, processes: tuple[str, ...] | None = None) -> None:
        node = self.layout.node(name)
        if processes is None:
            processes = bgplab.PROCESSES if self.layout.mode == "bgp" else NODE_PROCESSES
        for process in processes:
            label = f"{name}/{process}"
            if label not in self.running(name):
                self._spawn(label, node, self._node_command(name, process))

    def start_etcd(self, name: str) -> None:
        member = self._etcd_member(name)
        if name in self.running(name):
            return
        data = self.paths.data / name
        argv = lay.etcd_command(self.layout, member, self.paths.pki, data)
        argv[0] = shutil.which("etcd") or "etcd"
        self._spawn(name, member, argv)

    def _etcd_member(self, name: str) -> Member:
        for m in self.layout.etcd:
            if m.name == name:
                return m
        raise lay.LayoutError(f"no etcd member named {name!r}")

    def kill(self, name: str, only: str | None = None) -> list[str]:
        """SIGKILL a node's processes (or one of them), an etcd member or an app; say which."""
        if only is not None and only not in NODE_PROCESSES:
            raise LabError(f"--only must be one of {', '.join(NODE_PROCESSES)}")
        self.layout.member(name)
        procs = [
            proc
            for proc in self.plumbing.procs()
            if (proc.label == name or proc.label.startswith(name + "/"))
            and (only is None or proc.label == f"{name}/{only}")
        ]
        # All at once, as a node losing power: a busy machine takes a while to kill and reap
        # each process in turn, and an agent still alive meanwhile would keep its lease.
        for proc in procs:
            self.plumbing.kill(proc, signal.SIGSTOP)
        for proc in procs:
            self.plumbing.kill(proc)
        return [proc.label for proc in procs]

    def restart(self, name: str) -> None:
        """Whatever of the node (etcd member, app) is dead starts again; a partition is healed."""
        member = self.layout.member(name)
        if member in self.layout.etcd:
            self.start_etcd(name)
            return
        if member in self.layout.apps:
            if not self.running(name):
                self._spawn(name, member, self._app_command(member))
            return
        self.layout.node(name)
        self.heal(name)
        self.start_node(name)

    def partition(self, name: str) -> list[str]:
        """Cut a node off from etcd and the other nodes; clients and backends still reach it."""
        node = self.layout.node(name)
        peers = [m.address for m in (*self.layout.etcd, *self.layout.nodes) if m != node]
        self.plumbing.partition(node.netns, [f"{p}/32" for p in peers])
        return peers

    def heal(self, name: str) -> None:
        self.plumbing.heal(self.layout.node(name).netns)

    # ---- readiness ----

    def etcd_config(self) -> EtcdConfig:
        p = self.paths.pki
        return EtcdConfig(
            endpoints=tuple(f"{m.address}:{lay.ETCD_CLIENT_PORT}" for m in self.layout.etcd),
            timeout=1.0,
            cacert=p / "ca.crt",
            cert=p / f"{lay.ROOT}.crt",  # the lab's own checks act as etcd's administrator
            key=p / f"{lay.ROOT}.key",
        )

    def view(self) -> ClusterView:
        """The cluster as etcd has it now (raises StoreError when etcd is unreachable)."""

        async def read() -> ClusterView:
            async with Store(self.etcd_config(), lay.CLUSTER) as store:
                return await store.read_view()

        return asyncio.run(read())

    def etcd_healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.paths.pki / "ca.crt"))
        context.load_cert_chain(
            self.paths.pki / f"{lay.ROOT}.crt", self.paths.pki / f"{lay.ROOT}.key"
        )
        for m in self.layout.etcd:
            url = f"https://{m.address}:{lay.ETCD_CLIENT_PORT}/health"
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if b'"true"' not in response.read():
                        return False
            except OSError:
                return False
        return True

    def use_resilient_router(self) -> None:
        """Switch the BGP lab's router to resilient next-hop groups (`bgplab.use_resilient`),
        and return once every VIP's group holds every node at full weight with its share of
        buckets: BIRD re-imports the nodes' paths with their new weights one at a time, so a
        group passes through lopsided weights on its way."""
        bgplab.use_resilient(self)
        wait_for(
            lambda: all(bgplab.balanced(self, vip) for vip in self.layout.vips),
            nhmirror.IDLE + READY_TIMEOUT,
            "the router's resilient next-hop groups did not settle",
            self.paths.logs,
        )

    def ready(self) -> bool:
        """Every node registered, healthy and reporting its backends (so that the first
        `hactl status` a user sees is complete), every VIP assigned, and every VIP answering."""
        return not self.not_ready()

    def not_ready(self, view: ClusterView | None = None) -> str:
        """What keeps the lab from being `ready` ("" when nothing), read from `view` or etcd."""
        try:
            view = self.view() if view is None else view
        except StoreError as exc:
            return f"etcd unreadable: {exc}"
        if view.leader is None:
            return "no controller leads"
        for n in self.layout.nodes:
            record = view.nodes.get(n.name)
            if record is None:
                return f"{n.name} is not registered"
            if not record.healthy or record.backends_total == 0:
                return f"{n.name} is not healthy or reports no backends"
        for vip in self.layout.vips:
            if vip not in view.vips or view.vips[vip].state != "assigned":
                return f"{vip} is not assigned"
        for vip in self.layout.vips:
            if whoami(vip) is None:
                return f"{vip} does not answer"
        return ""

    def hactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `hactl ARGS` against this lab (its context file), capturing the output."""
        env = {**os.environ, "HACTL_CONTEXT": str(self.paths.context)}
        return subprocess.run(
            [_program("hactl"), *args], env=env, capture_output=True, text=True, timeout=60
        )


def whoami(vip: str, timeout: float = 2.0) -> tuple[str, str] | None:
    """(proxy node from `Via`, backend) of GET /whoami on a VIP, from the host; None if it fails."""
    url = f"http://{vip}:{lay.PROXY_PORT}/whoami"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            via = response.headers.get("Via", "")
            body = response.read().decode()
    except OSError:
        return None
    return via.split()[-1] if via else "?", json.loads(body).get("backend", "?")


def wait_for(check: Callable[[], bool], timeout: float, what: str, logs: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            hint = f"; see the logs in {logs}" if logs else ""
            raise LabError(f"{what} within {timeout:g} s{hint}")
        time.sleep(0.2)


def down(run_dir: Path = RUN_DIR, keep_logs: bool = False) -> bool:
    """Remove every namespace, link, process and file of the lab; False if there was none."""
    paths = Paths(run_dir)
    found = paths.netns_state.exists() or paths.layout.exists()
    netns.teardown(paths.netns_state)
    for name in (*Paths.OWNED, *(() if keep_logs else ("logs",))):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when empty
    return found
