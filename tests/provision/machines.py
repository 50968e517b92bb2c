"""Bare Debian hosts for Ansible: systemd-nspawn containers booting real systemd as PID 1.

Each machine is an overlay of the cached base root (so a copy costs nothing),
lives in its own network namespace on one bridge, answers ssh on its address,
and reads packages from the local apt repo bind-mounted read-only at
/srv/repo. There is no default route in the namespaces, so nothing inside can
reach beyond the bridge.

nspawn needs `--register=no --keep-unit` on a host without systemd (there is
no system bus to register with); SIGTERM to the nspawn process halts the
container cleanly. Everything made here is undone by `down()`, which is safe
to call at any stage of a failed `up()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from haproxy_py.lab.netns import Plumbing, Proc, free_subnet, ip, leftovers
from tests.provision.rootfs import CACHE_DIR, mount_overlay, run, unmount

PREFIX = "hp-"
REPO_MOUNT = "/srv/repo"
NSPAWN_RUN = Path("/run/systemd/nspawn")
# Held while a lab exists: one lab at a time per machine, since the names are fixed.
LOCK_FILE = Path("/run/lock/haproxy-py-provision.lock")
BOOT_TIMEOUT = 120.0
HALT_TIMEOUT = 30.0
SSH_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=5",
)


class MachineError(Exception):
    """A machine did not come up; the message names it and quotes its boot log."""


@dataclass
class Machine:
    """One container: its inventory name, address, namespace, root and nspawn process."""

    name: str
    address: str
    netns: str
    work: Path
    log: Path
    proc: Proc | None = None

    @property
    def root(self) -> Path:
        return self.work / "merged"


class Lab:
    """Containers `names` on a bridge in a free /24 of the lab range; `ssh()` runs commands."""

    def __init__(self, work: Path, base: Path, repo: Path, names: list[str]) -> None:
        self.work = work
        self.base = base
        self.repo = repo
        self.key = work / "id_ed25519"
        self.plumbing = Plumbing(PREFIX, work / "plumbing.json")
        self._lock: IO[str] | None = None
        # Far from the labs' 200: make test runs these beside the lab tier.
        self.subnet = free_subnet(preferred=330)
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self.machines = [
            Machine(
                name,
                str(hosts[10 + i]),
                f"{PREFIX}{name}",
                work / "roots" / name,
                work / f"console-{name}.log",
            )
            for i, name in enumerate(names)
        ]

    def address(self, offset: int) -> str:
        """An address of the lab subnet that no machine uses (e.g. for a VIP)."""
        return str(list(self.subnet.hosts())[offset])

    def up(self) -> None:
        self._lock = open(LOCK_FILE, "w")  # noqa: SIM115 - held until down()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        clear_leftovers()
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        self.plumbing.bridge(f"{self.gateway}/{self.subnet.prefixlen}")
        for m in self.machines:
            self.plumbing.add_host(m.name, f"{m.address}/{self.subnet.prefixlen}")
            self._prepare(m)
        for m in self.machines:
            m.proc = self.plumbing.spawn(None, self._nspawn_argv(m), label=m.name, log=m.log)
        for m in self.machines:
            self._wait_booted(m)

    def reboot(self, m: Machine) -> None:
        """Halt the container cleanly and boot it again from the same root."""
        if m.proc is not None:
            self._halt([m])
            self.plumbing.kill(m.proc)  # reaps it, or ends it if it did not halt in time
        m.proc = self.plumbing.spawn(None, self._nspawn_argv(m), label=m.name, log=m.log)
        self._wait_booted(m)

    def _prepare(self, m: Machine) -> None:
        """Make the overlay a distinct host: name, machine-id, ssh host keys, hosts, root's key."""
        root = mount_overlay(self.base, m.work)
        (root / "etc" / "hostname").write_text(f"{m.name}\n")
        (root / "etc" / "machine-id").write_text(run(["systemd-id128", "new"]))
        hosts = ["127.0.0.1 localhost"] + [f"{x.address} {x.name}" for x in self.machines]
        (root / "etc" / "hosts").write_text("\n".join(hosts) + "\n")
        resolv = root / "etc" / "resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text("")  # no DNS at all: names come from /etc/hosts, never a timeout
        for old in (root / "etc" / "ssh").glob("ssh_host_*"):
            old.unlink()
        run(["ssh-keygen", "-A", "-f", str(root)])
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)

    def _nspawn_argv(self, m: Machine) -> list[str]:
        return [
            "systemd-nspawn",
            f"--directory={m.root}",
            f"--machine={PREFIX}{m.name}",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/run/netns/{m.netns}",
            "--resolv-conf=off",
            # A real host's root has it; the agent adds and removes VIPs with it.
            "--capability=CAP_NET_ADMIN",
            "--link-journal=no",
            "--timezone=off",
            f"--bind-ro={self.repo}:{REPO_MOUNT}",
            "--console=read-only",
        ]

    def _wait_booted(self, m: Machine) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if m.proc is None or not self.plumbing.alive(m.proc):
                break
            done = self.ssh(m, "systemctl is-system-running --wait", check=False, timeout=60)
            if done.stdout.strip() in {"running", "degraded"}:
                return
            time.sleep(0.5)
        tail = m.log.read_text(errors="replace")[-3000:] if m.log.exists() else ""
        raise MachineError(f"{m.name} ({m.address}) did not boot to ssh:\n{tail}")

    def ssh(
        self, m: Machine, command: str, *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` as root on machine `m` over ssh."""
        argv = ["ssh", "-i", str(self.key), *SSH_OPTIONS, f"root@{m.address}", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise MachineError(
                f"{m.name}: `{command}` failed with exit {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done

    def machine(self, name: str) -> Machine:
        return next(m for m in self.machines if m.name == name)

    def _halt(self, machines: list[Machine]) -> None:
        """SIGTERM to nspawn halts its container cleanly; wait (bounded) for all of them."""
        procs = [m.proc for m in machines if m.proc is not None and self.plumbing.alive(m.proc)]
        for proc in procs:
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + HALT_TIMEOUT
        while time.monotonic() < deadline and any(self.plumbing.alive(p) for p in procs):
            time.sleep(0.2)

    def down(self) -> None:
        """Halt every container, unmount the overlays, remove namespaces, bridge and roots."""
        self._halt(self.machines)
        self.plumbing.teardown()  # SIGKILLs whatever did not halt in time
        for m in self.machines:
            unmount(m.root)
            # nspawn cannot remove these where /run is no tmpfs; they are named after the machine.
            for leftover in NSPAWN_RUN.glob(f"*/{PREFIX}{m.name}"):
                shutil.rmtree(leftover, ignore_errors=True)
        # And its own directories once nothing (ours or anybody's) is left in them.
        for directory in [*NSPAWN_RUN.glob("*/"), NSPAWN_RUN]:
            with contextlib.suppress(OSError):
                directory.rmdir()
        shutil.rmtree(self.work / "roots", ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None


def clear_leftovers() -> None:
    """Remove what a run that was killed outright left behind: its containers, overlays,
    namespaces and bridge (all named with PREFIX, or mounted from CACHE_DIR)."""
    names = leftovers(PREFIX)
    namespaces = [n for n in ip("netns", "list").split() if n.startswith(PREFIX)]
    for name in namespaces:
        # The containers' processes live in these namespaces; without its PID 1 nspawn exits.
        for pid in ip("netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            mountpoint = Path(fields[1])
            ours = mountpoint.name == "merged" and mountpoint.parent.parent.name == "roots"
            if fields[2] == "overlay" and ours and f"lowerdir={CACHE_DIR}/" in fields[3]:
                unmount(mountpoint)
    for name in names:
        if name in namespaces:
            ip("netns", "del", name, check=False)
        elif Path(f"/sys/class/net/{name}").exists():
            ip("link", "del", name, check=False)
