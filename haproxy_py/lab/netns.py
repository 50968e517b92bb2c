"""Network-namespace plumbing for the lab and the namespace tests (iproute2 via subprocess).

A `Plumbing` creates one bridge, namespaces attached to it by veth pairs, and
processes inside those namespaces, and records every one of them in a JSON
state file as it goes. `teardown(state_file)` removes all of it from that file
alone, so a crashed lab or test can always be cleaned up. Every name starts
with the caller's prefix, and every address must lie in 198.18.0.0/15, so
that plumbing never touches anything it did not make and traffic never leaves
the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
IFNAMSIZ = 15  # longest Linux interface name


class NetnsError(Exception):
    """An iproute2 command failed, or a name or address is not acceptable (message says which)."""


def require_tools() -> str | None:
    """What is missing to build namespaces here, as one line for the operator, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces): run it with sudo"
    if shutil.which("ip") is None:
        return "the lab needs iproute2 (the ip command): apt-get install iproute2"
    return None


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run `ip [-n NETNS] ARGS...` and return its stdout; failures raise NetnsError with stderr."""
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def lab_interface(address: str) -> ipaddress.IPv4Interface:
    """Parse "198.18.x.y/len" and refuse anything outside the lab range."""
    try:
        iface = ipaddress.IPv4Interface(address)
    except ValueError:
        raise NetnsError(f"expected an IPv4 address with prefix length, got {address!r}") from None
    if iface.ip not in LAB_RANGE:
        raise NetnsError(f"{address}: lab addresses must lie in {LAB_RANGE}")
    return iface


def used_subnets() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks routed on the host now (to choose a lab subnet nobody else uses)."""
    nets: list[ipaddress.IPv4Network] = []
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        if first in {"broadcast", "local", "unreachable", "blackhole", "prohibit"}:
            first = line.split()[1]
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(first if first != "default" else "0.0.0.0/0"))
    return nets


def free_subnet(preferred: int = 0) -> ipaddress.IPv4Network:
    """A /24 inside the lab range that no host route covers, starting the search at `preferred`."""
    used = [n for n in used_subnets() if n.prefixlen > 0]
    subnets = [ipaddress.IPv4Network(n) for n in LAB_RANGE.subnets(new_prefix=24)]
    for i in range(len(subnets)):
        net = subnets[(preferred + i) % len(subnets)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError(f"no free /24 left in {LAB_RANGE} on this host")


def check_prefix(prefix: str) -> None:
    """Prefixes are short (interface names have 15 characters) and safe in a command line."""
    if not prefix or len(prefix) > 8 or not all(c.isalnum() or c == "-" for c in prefix):
        raise NetnsError(f"prefix must be 1-8 letters, digits or '-', got {prefix!r}")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (guards against killing a recycled PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields restart after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in {"Z", "X"} else int(fields[19])


@dataclass
class Proc:
    """A process started by the plumbing: its PID, start time and what it is."""

    pid: int
    start: int
    netns: str | None
    label: str


@dataclass
class State:
    """Everything the plumbing made, in creation order, as saved in the state file."""

    prefix: str
    bridge: str | None = None
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    blackholes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        data = json.loads(path.read_text())
        data["procs"] = [Proc(**p) for p in data.get("procs", [])]
        return cls(**data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge: its short name, namespace name and address."""

    name: str
    netns: str
    address: ipaddress.IPv4Interface
    link: str


class Plumbing:
    """Builds bridge, namespaces, veths and processes under one prefix, recording each step."""

    def __init__(self, prefix: str, state_file: Path) -> None:
        check_prefix(prefix)
        self.prefix = prefix
        self.state_file = state_file
        self.state = State.load(state_file) if state_file.exists() else State(prefix)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _save(self) -> None:
        self.state.save(self.state_file)

    def _name(self, name: str) -> str:
        full = self.prefix + name
        if len(full) > IFNAMSIZ:
            raise NetnsError(f"{full!r} is longer than {IFNAMSIZ} characters; use a shorter name")
        return full

    def bridge(self, address: str | None = None) -> str:
        """Create the bridge `<prefix>br`; an address on it lets the host reach the lab."""
        name = self._name("br")
        self.state.bridge = name
        self._save()
        ip("link", "add", name, "type", "bridge")
        if address is not None:
            ip("addr", "add", str(lab_interface(address)), "dev", name)
        ip("link", "set", name, "up")
        return name

    def add_host(self, name: str, address: str) -> Host:
        """A namespace `<prefix><name>` with `eth0` on the bridge (via veth `<prefix><name>`)."""
        if self.state.bridge is None:
            raise NetnsError("create the bridge before the hosts")
        iface = lab_interface(address)
        netns = link = self._name(name)
        self.state.netns.append(netns)
        self.state.links.append(link)
        self._save()
        ip("netns", "add", netns)
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("link", "set", link, "master", self.state.bridge)
        ip("link", "set", link, "up")
        ip("link", "set", "lo", "up", netns=netns)
        ip("addr", "add", str(iface), "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)
        return Host(name=name, netns=netns, address=iface, link=link)

    def add_routed_host(self, name: str, address: str, router_netns: str, gateway: str) -> Host:
        """A namespace `<prefix><name>` off the bridge: its `eth0` is linked to `router_netns`
        alone (that end is named `<name>` and has `gateway`), and its default route is the
        router, which has none of its own: so traffic still stays inside the lab."""
        iface, gw = lab_interface(address), lab_interface(gateway)
        netns = self._name(name)
        self.state.netns.append(netns)
        self._save()
        ip("netns", "add", netns)
        veth = ("type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("link", "add", name, *veth, netns=router_netns)
        ip("addr", "add", str(gw), "dev", name, netns=router_netns)
        ip("link", "set", name, "up", netns=router_netns)
        for args in (
            ("link", "set", "lo", "up"),
            ("addr", "add", str(iface), "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("route", "add", "default", "via", str(gw.ip)),
        ):
            ip(*args, netns=netns)
        return Host(name=name, netns=netns, address=iface, link=name)

    def recreate_link(self, netns: str, address: str) -> None:
        """Delete the host's `eth0` (and its veth peer) and create it again, as a bond or VLAN
        recreated by the network configuration would be: same name, new index, new MAC."""
        if self.state.bridge is None or netns not in self.state.netns:
            raise NetnsError(f"{netns} is not a host of this lab")
        link = netns
        ip("link", "del", link)
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("link", "set", link, "master", self.state.bridge)
        ip("link", "set", link, "up")
        ip("addr", "add", str(lab_interface(address)), "dev", "eth0", netns=netns)
        ip("link", "set", "eth0", "up", netns=netns)

    def spawn(
        self,
        netns: str | None,
        argv: Sequence[str],
        *,
        label: str,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        """Start `argv` detached (own session) inside `netns` (None: the host), output to `log`."""
        command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        with open(log, "ab") as out:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else dict(env),
                cwd=cwd,
            )
        # `ip netns exec` execs the command, so this PID is the program's own.
        proc = Proc(pid=child.pid, start=_start_time(child.pid) or 0, netns=netns, label=label)
        self._children[child.pid] = child
        self.state.procs.append(proc)
        self._save()
        return proc

    def procs(self, label_prefix: str = "") -> list[Proc]:
        return [p for p in self.state.procs if p.label.startswith(label_prefix)]

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Signal the process group of `proc` (if still that process); SIGKILL also forgets it."""
        _signal(proc, sig)
        if sig == signal.SIGKILL:
            self._reap(proc)
            self.state.procs = [p for p in self.state.procs if p.pid != proc.pid]
            self._save()

    def _reap(self, proc: Proc) -> None:
        child = self._children.pop(proc.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)

    def alive(self, proc: Proc) -> bool:
        child = self._children.get(proc.pid)
        if child is not None:
            return child.poll() is None
        return _alive(proc)

    def partition(self, netns: str, peers: Sequence[str]) -> None:
        """Cut `netns` off from `peers` (addresses) with blackhole routes; others still reach it."""
        done = self.state.blackholes.setdefault(netns, [])
        for peer in peers:
            address = str(lab_interface(peer).ip)
            if address in done:
                continue
            ip("route", "add", "blackhole", f"{address}/32", netns=netns)
            done.append(address)
            self._save()

    def heal(self, netns: str) -> None:
        """Remove the blackhole routes `partition` added to `netns`."""
        for address in self.state.blackholes.pop(netns, []):
            ip("route", "del", "blackhole", f"{address}/32", netns=netns, check=False)
        self._save()

    def teardown(self) -> None:
        """Remove everything recorded; safe to call repeatedly."""
        for proc in self.state.procs:
            _signal(proc, signal.SIGKILL)
            self._reap(proc)
        teardown(self.state_file)
        self.state = State(self.prefix)


def _alive(proc: Proc) -> bool:
    return _start_time(proc.pid) == proc.start


def pid_running(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie."""
    return _start_time(pid) is not None


def _signal(proc: Proc, sig: int) -> None:
    if not _alive(proc):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _netns_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def teardown(state_file: Path) -> None:
    """Kill the recorded processes and anything else left inside the recorded namespaces,
    then delete the namespaces, veths and bridge, and finally the state file."""
    if not state_file.exists():
        return
    state = State.load(state_file)
    for proc in state.procs:
        _signal(proc, signal.SIGKILL)
    for netns in state.netns:
        for pid in _netns_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        any(_alive(p) for p in state.procs) or any(_netns_pids(n) for n in state.netns)
    ):
        time.sleep(0.05)
    existing = set(ip("netns", "list").split())
    for netns in state.netns:
        if netns in existing:
            ip("netns", "del", netns, check=False)
    for link in [*state.links, *([state.bridge] if state.bridge else [])]:
        if link_exists(link):
            ip("link", "del", link, check=False)
    state_file.unlink(missing_ok=True)


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def leftovers(prefix: str) -> list[str]:
    """Namespaces and host links whose names start with `prefix` (empty when all is clean)."""
    names = [n for n in ip("netns", "list").split() if n.startswith(prefix)]
    names += [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    return names


_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def thread_in_netns(netns: str, fn: Callable[[], object], name: str = "") -> threading.Thread:
    """Start a daemon thread that enters `netns` and runs `fn` there.

    Sockets keep the namespace they were made in, so sockets made inside `fn`
    (or by an asyncio loop it runs) talk from `netns`; the caller never moves.
    Failing to enter the namespace raises NetnsError inside the thread.
    """

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsError(f"no network namespace {netns!r}") from None
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                raise NetnsError(f"cannot enter {netns}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
        fn()

    thread = threading.Thread(target=body, name=name or f"netns-{netns}", daemon=True)
    thread.start()
    return thread


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a thread inside `netns`, wait, and return its result (or raise its error)."""
    outcome: list[tuple[bool, object]] = []

    def call() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    if not Path(f"/run/netns/{netns}").exists():
        raise NetnsError(f"no network namespace {netns!r}")
    thread_in_netns(netns, call).join()
    if not outcome:
        raise NetnsError(f"cannot enter the network namespace {netns!r}")
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


_libc = ctypes.CDLL(None, use_errno=True)
