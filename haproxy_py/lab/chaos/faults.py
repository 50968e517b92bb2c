"""Injecting and healing each fault kind of `schedule.KINDS` on a running lab.

`inject` returns the heal for what it did, so a run that is interrupted can
heal whatever is still in force (`Injector.heal_all`). Every kind uses the
lab's own pieces (`control.Lab`, `netns.Plumbing`, `hactl`), never a copy.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from haproxy_py.cluster.store import StoreError
from haproxy_py.lab import control, netns
from haproxy_py.lab.chaos.schedule import Fault
from haproxy_py.lab.etcdstatus import etcd_status

Heal = Callable[[], None]
EXIT_WAIT = 15.0  # a SIGTERMed daemon gets this long to hand over and exit
CHURN_PERIOD = 0.1  # the foreign address churner's add/delete period
HEAL_TRIES = 2  # an operator's heal (resume, undrain) that timed out is tried once more
RELOAD_FROM, RELOAD_TO = "timeout = 0.5 }", "timeout = 0.6 }"


class FaultError(Exception):
    """A fault could not be injected or healed (the lab itself is broken)."""


class Injector:
    def __init__(self, lab: control.Lab) -> None:
        self.lab = lab
        self.pending: list[Heal] = []

    # ---- the edges ----

    def _procs(self, node: str, process: str) -> list[netns.Proc]:
        label = f"{node}/{process}"
        return [p for p in self.lab.plumbing.procs(label) if p.label == label]

    def _signal(self, node: str, process: str, sig: int) -> None:
        procs = [p for p in self._procs(node, process) if self.lab.plumbing.alive(p)]
        if not procs:
            raise FaultError(f"{node}/{process} is not running")
        for proc in procs:
            self.lab.plumbing.kill(proc, sig)
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + EXIT_WAIT
            while any(self.lab.plumbing.alive(p) for p in procs):
                if time.monotonic() > deadline:
                    for proc in procs:  # (killed, so that the heal can start it again)
                        self.lab.plumbing.kill(proc, signal.SIGKILL)
                    raise FaultError(
                        f"{node}/{process} did not exit within {EXIT_WAIT:g} s of SIGTERM; "
                        f"its last words: {self._last_words(f'{node}/{process}')}"
                    )
                time.sleep(0.05)

    def _last_words(self, label: str, lines: int = 6) -> str:
        """The end of a process's log, for a fault that says it hung."""
        try:
            text = self.lab.paths.log(label).read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc.strerror})"
        return " | ".join(line[:300] for line in text.splitlines()[-lines:])

    def _hactl(self, *args: str, tries: int = 1) -> None:
        """Run an operator's command; one that does not finish in time (a starved machine) is
        a FaultError, tried again `tries` times in all (heals: pause and drain stay otherwise)."""
        command, failure = f"hactl {' '.join(args)}", ""
        for _ in range(tries):
            try:
                done = self.lab.hactl(*args)
            except subprocess.TimeoutExpired as exc:
                failure = f"{command} did not finish within {exc.timeout:g} s"
                continue
            if done.returncode != 0:
                raise FaultError(f"{command}: {(done.stderr or done.stdout).strip()}")
            return
        raise FaultError(failure)

    def _restart(self, node: str) -> Heal:
        return lambda: self.lab.start_node(node)

    def _partition(self, node: str, etcd: bool, peers: bool) -> Heal:
        me = self.lab.layout.node(node)
        others = [
            *(self.lab.layout.etcd if etcd else ()),
            *(self.lab.layout.nodes if peers else ()),
        ]
        addresses = [f"{m.address}/32" for m in others if m != me]
        self.lab.plumbing.partition(me.netns, addresses)
        return lambda: self.lab.heal(node)

    def _etcd_down(self, names: list[str]) -> Heal:
        for name in names:
            self.lab.kill(name)

        def heal() -> None:
            for name in names:
                self.lab.start_etcd(name)

        return heal

    def _churn(self, node: str) -> Heal:
        """Add and remove an address that is no VIP on the node's VIP interface, again and
        again, as another daemon on the host might; the agent must not be confused by it."""
        me = self.lab.layout.node(node)
        used = {m.address for m in self.lab.layout.members} | set(self.lab.layout.vips)
        net = ipaddress.ip_network(self.lab.layout.subnet)
        foreign = next(str(net[i]) for i in range(250, 10, -1) if str(net[i]) not in used)
        stop = threading.Event()

        def churn() -> None:
            for _ in range(1000):  # bounded; stopped by the heal long before
                netns.ip("addr", "add", f"{foreign}/32", "dev", "eth0", netns=me.netns, check=False)
                if stop.wait(CHURN_PERIOD / 2):
                    break
                netns.ip("addr", "del", f"{foreign}/32", "dev", "eth0", netns=me.netns, check=False)
                if stop.wait(CHURN_PERIOD / 2):
                    break

        thread = threading.Thread(target=churn, name=f"churn-{node}", daemon=True)
        thread.start()

        def heal() -> None:
            stop.set()
            thread.join(10)
            netns.ip("addr", "del", f"{foreign}/32", "dev", "eth0", netns=me.netns, check=False)

        return heal

    def _reload(self, node: str) -> Heal:
        path = self.lab.paths.config(node)
        original = path.read_text()
        if RELOAD_FROM not in original:
            raise FaultError(f"{path} has no health timeout to change for a reload")

        def write_and_hup(text: str) -> None:
            path.write_text(text)
            self._signal(node, "proxy", signal.SIGHUP)

        write_and_hup(original.replace(RELOAD_FROM, RELOAD_TO))
        return lambda: write_and_hup(original)

    # ---- the kinds ----

    def inject(self, fault: Fault) -> None:
        """Put `fault` in force; its heal waits in `pending` for `heal`."""
        heal = self._inject(fault.kind, fault.target)
        self.pending.append(heal)

    def _inject(self, kind: str, target: str) -> Heal:
        action, _, process = kind.partition("-")
        if kind == "kill-node":
            self.lab.kill(target)
            return lambda: self.lab.restart(target)
        if action in ("term", "kill") and process in control.NODE_PROCESSES:
            sig = signal.SIGTERM if action == "term" else signal.SIGKILL
            try:
                self._signal(target, process, sig)
            except FaultError:
                self.pending.append(self._restart(target))
                raise
            return self._restart(target)
        if action == "freeze":
            self._signal(target, process, signal.SIGSTOP)
            return lambda: self._signal(target, process, signal.SIGCONT)
        if action == "partition":
            return self._partition(
                target, process in ("etcd", "both"), process in ("peers", "both")
            )
        if kind == "etcd-member":
            return self._etcd_down([self.lab.layout.etcd[-1].name])
        if kind == "etcd-leader":
            try:
                leader = etcd_status(self.lab).leader
            except StoreError as exc:
                raise FaultError(f"cannot ask etcd for its leader: {exc}") from None
            if leader is None:
                raise FaultError("etcd has no leader to stop")
            return self._etcd_down([leader])
        if kind == "etcd-all":
            return self._etcd_down([m.name for m in self.lab.layout.etcd])
        if kind == "backends-down":
            apps = [m.name for m in self.lab.layout.apps]
            for app in apps:
                self.lab.kill(app)

            def restart_apps() -> None:
                for app in apps:
                    self.lab.restart(app)

            return restart_apps
        if kind == "address-churn":
            return self._churn(target)
        if kind == "recreate-link":
            me = self.lab.layout.node(target)
            self.lab.plumbing.recreate_link(me.netns, f"{me.address}/{self.lab.layout.prefixlen}")
            return lambda: None
        if kind == "failover":
            self._hactl("failover", "--vip", target, "-y")
            return lambda: None
        if kind == "drain":
            self._hactl("drain", target, "-y")
            return lambda: self._hactl("undrain", target, tries=HEAL_TRIES)
        if kind == "pause":
            self._hactl("pause")
            return lambda: self._hactl("resume", tries=HEAL_TRIES)
        if kind == "reload-proxy":
            return self._reload(target)
        raise FaultError(f"no injector for fault kind {kind!r}")

    def heal(self) -> None:
        """Undo every fault in force, most recent first."""
        while self.pending:
            self.pending.pop()()
