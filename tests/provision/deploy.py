"""One provisioned cluster for a test module: containers up, site.yml run once, logs kept.

`deploy()` makes the inputs (cached root, repo, wheels; a fresh project
wheel), boots the machines, serves the wheelhouse on the bridge, lets the
caller add what the cluster needs around it (`around`: the BGP test's router),
runs the playbook for real with `--diff` and yields a `Deployed`; afterwards
it keeps each machine's journal and the playbook logs in
tests/artifacts/provision/<name>/ and tears everything down, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haproxy_py.lab import netns
from tests.provision import rootfs
from tests.provision.ansible_run import PlaybookRun, run_playbook, write_inventory
from tests.provision.machines import PREFIX, REPO_MOUNT, Lab, Machine
from tests.support.wait import eventually

CLUSTER = "prov"
PROXIES = ["node1", "node2", "node3"]  # the etcd members and proxy nodes
APP = ["app1"]  # the demo backends
VIP_OFFSET = 99  # the VIP is the 100th address of the lab subnet, e.g. 198.18.200.100
SETTLE_TIMEOUT = 90.0
HACTL = Path(sys.executable).parent / "hactl"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "provision"
# what a probe over ssh or HTTP may raise while the hosts settle: "not yet"
PROBE_ERRORS = (OSError, subprocess.SubprocessError, ValueError, KeyError)


@dataclass
class Deployed:
    lab: Lab
    inventory: Path
    extra_vars: dict[str, Any]
    work: Path
    vip: str
    first: PlaybookRun
    timings: dict[str, float] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None

    @property
    def pki(self) -> Path:
        return Path(str(self.extra_vars["certs_dir"]))


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _wait_listening(address: str, port: int) -> None:
    def probe() -> bool | None:
        with socket.create_connection((address, port), timeout=2):
            return True

    eventually(probe, 30, f"wheelhouse on {address}:{port}", every=0.5, ignoring=PROBE_ERRORS)


@contextlib.contextmanager
def deploy(
    work: Path,
    name: str,
    proxies: list[str],
    app: list[str],
    settings: dict[str, Any] | None = None,
    around: Callable[[Lab], None] = lambda lab: None,
) -> Iterator[Deployed]:
    """The cluster of `proxies` (etcd members too) and `app`, provisioned with `settings` on
    top of the test's package sources; logs kept under ARTIFACTS/`name`."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = rootfs.base_root()
    repo = rootfs.apt_repo(base)
    wheels = rootfs.wheelhouse()
    wheel = rootfs.project_wheel(work / "dist")
    timings["inputs (cached root, repo, wheels; fresh project wheel)"] = time.monotonic() - started
    lab = Lab(work, base, repo, proxies + app)
    try:
        started = time.monotonic()
        lab.up()
        timings[f"network + {len(lab.machines)} containers booted"] = time.monotonic() - started
        port = _free_port(lab.gateway)
        lab.plumbing.spawn(
            None,
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                lab.gateway,
                "--directory",
                str(wheels),
            ],
            label="wheelhouse",
            log=work / "wheelhouse.log",
        )
        _wait_listening(lab.gateway, port)
        around(lab)
        vip = lab.address(VIP_OFFSET)
        extra_vars: dict[str, Any] = {
            "apt_source_line": f"deb [trusted=yes] file:{REPO_MOUNT} ./",
            "apt_source_exclusive": True,
            "haproxy_py_wheel": str(wheel),
            "haproxy_py_pip_no_index": True,
            "haproxy_py_pip_find_links": f"http://{lab.gateway}:{port}/",
            "haproxy_py_pip_trusted_host": lab.gateway,
            "cluster_name": CLUSTER,
            "cluster_vips": [vip],
            "cluster_interface": "eth0",
            "certs_dir": str(work / "pki"),
            "certs_hactl": str(HACTL),
            **(settings or {}),
        }
        inventory = write_inventory(lab, work / "inventory.ini", proxies=proxies, app=app)
        # --diff, as a CI "plan" step would: every key written now must stay out of the log.
        first = run_playbook(inventory, extra_vars, work, "first-run", "--diff")
        timings["first playbook run"] = first.seconds
        yield Deployed(lab, inventory, extra_vars, work, vip, first, timings)
    finally:
        _save_journals(lab, work)
        started = time.monotonic()
        lab.down()
        timings["teardown"] = time.monotonic() - started
        (work / "timings.json").write_text(json.dumps(timings, indent=1))
        print("\nprovisioning test timings (s):", json.dumps(timings, indent=1))
        _keep_logs(work, ARTIFACTS / name)
    left = netns.leftovers(PREFIX)
    assert not left, f"teardown left {left}"


def _keep_logs(work: Path, artifacts: Path) -> None:
    """Copy the logs (never the keys) to `artifacts`, which outlives pytest's tmp."""
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.iterdir():
        if old.is_file():
            old.unlink()
    for path in [*work.glob("*.log"), work / "timings.json", work / "inventory.ini"]:
        if path.is_file():
            shutil.copy(path, artifacts / path.name)


def _save_journals(lab: Lab, work: Path) -> None:
    """Keep each machine's journal next to the playbook logs: the first thing to read on failure."""
    for machine in lab.machines:
        if machine.proc is None or not lab.plumbing.alive(machine.proc):
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = lab.ssh(machine, "journalctl --no-pager -o short-precise -n 2000", check=False)
            (work / f"journal-{machine.name}.log").write_text(done.stdout + done.stderr)


def hactl(d: Deployed, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(HACTL), "--config", str(d.pki / "hactl.toml"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def status(d: Deployed) -> dict[str, Any]:
    done = hactl(d, "status", "-o", "json")
    if done.returncode != 0:
        raise ValueError(f"hactl status exit {done.returncode}: {done.stderr.strip()}")
    return dict(json.loads(done.stdout))


def unit(d: Deployed, machine: Machine, name: str, *props: str) -> dict[str, str]:
    """systemd's properties `props` of unit `name` on `machine`."""
    show = f"systemctl show --property={','.join(props)} {name}"
    return dict(line.split("=", 1) for line in d.lab.ssh(machine, show).stdout.splitlines())


def units_active(d: Deployed, machine: Machine, names: list[str]) -> None:
    """Wait until every unit of `names` is active on `machine`."""

    def active() -> bool | None:
        done = d.lab.ssh(machine, "systemctl is-active " + " ".join(names), check=False)
        return True if done.stdout.split() == ["active"] * len(names) else None

    eventually(
        active,
        SETTLE_TIMEOUT,
        f"{machine.name}: units {names} active",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )


def assert_no_key_material(d: Deployed, run: PlaybookRun) -> None:
    """M7: the run's log shows no private key, in any form."""
    log = run.log.read_text(errors="replace")
    assert "PRIVATE KEY" not in log
    for key in d.pki.glob("*.key"):
        body = "".join(key.read_text().splitlines()[1:-1])
        assert body[:40] not in log.replace("\n", ""), key.name


def second_run_changes_nothing(d: Deployed, hosts: list[str]) -> None:
    """The playbook again, unchanged: every host ok, none changed."""
    second = run_playbook(d.inventory, d.extra_vars, d.work, "second-run")
    d.timings["second playbook run"] = second.seconds
    assert second.returncode == 0, second.explain()
    changed = {host: r.changed for host, r in second.recap.items() if r.changed}
    assert not changed, f"changed on the second run: {changed}\n{second.explain()}"
    assert set(second.recap) >= set(hosts)
