"""ansible/site.yml takes bare Debian hosts to a working cluster: for real, over ssh.

Three systemd-nspawn containers (real systemd as PID 1) are the etcd members
and proxy nodes, a fourth runs the demo backends. The playbook installs
everything from a local apt repo and a wheelhouse served on the bridge, then
the checks run from the host, as an operator would: every unit active, etcd
healthy over TLS, `hactl status` with the operator certificate the playbook
made, a client through the VIP, `hactl failover`, and a second run that
changes nothing. Everything is torn down afterwards, also on failure; the
logs (both playbook runs with time stamps, each machine's journal and console,
the timings) are kept in tests/artifacts/provision/.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from tests.provision.ansible_run import run_playbook
from tests.provision.deploy import (
    APP,
    CLUSTER,
    HACTL,
    PROBE_ERRORS,
    PROXIES,
    SETTLE_TIMEOUT,
    Deployed,
    assert_no_key_material,
    deploy,
    hactl,
    second_run_changes_nothing,
    status,
    units_active,
)
from tests.provision.deploy import unit as _unit
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]

DAEMONS = ["haproxy-py", "ha-agent", "ha-controller"]
T = TypeVar("T")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deploy(tmp_path_factory.mktemp("provision"), "site", PROXIES, APP) as d:
        yield d


def vip_owner(d: Deployed) -> str | None:
    """The node holding the VIP, once the cluster is healthy and the assignment settled."""
    doc = status(d)
    d.last_status = doc
    vips = [v for v in doc["vips"] if v["address"] == d.vip]
    healthy = [n["name"] for n in doc["nodes"] if n["healthy"]]
    if len(healthy) != len(PROXIES) or not vips or vips[0]["state"] != "assigned":
        return None
    owner = vips[0]["owner"]
    return str(owner) if owner else None


def through_vip(d: Deployed) -> str | None:
    with urllib.request.urlopen(f"http://{d.vip}/", timeout=5) as response:
        body = response.read().decode()
    return body if response.status == 200 else None


def test_first_run_provisions_every_host(deployed: Deployed) -> None:
    run = deployed.first
    assert run.returncode == 0, run.explain()
    assert set(run.recap) >= set(PROXIES + APP), run.explain()
    assert all(r.failed == 0 and r.unreachable == 0 for r in run.recap.values()), run.explain()


def test_every_unit_is_active(deployed: Deployed) -> None:
    units = {name: ["etcd", *DAEMONS] for name in PROXIES}
    units.update({name: ["haproxy-py-demo@8081", "haproxy-py-demo@8082"] for name in APP})
    for name, wanted in units.items():
        machine = deployed.lab.machine(name)
        units_active(deployed, machine, wanted)
        enabled = deployed.lab.ssh(machine, "systemctl is-enabled " + " ".join(wanted), check=False)
        assert enabled.stdout.split() == ["enabled"] * len(wanted), enabled.stdout


def test_kernel_setting_for_vip_listeners_is_installed(deployed: Deployed) -> None:
    for name in PROXIES:
        done = deployed.lab.ssh(deployed.lab.machine(name), "cat /etc/sysctl.d/60-haproxy-py.conf")
        assert "net.ipv4.ip_nonlocal_bind = 1" in done.stdout


def test_etcd_has_three_healthy_members_over_tls(deployed: Deployed) -> None:
    pki = deployed.pki
    endpoints = ",".join(f"https://{deployed.lab.machine(n).address}:2379" for n in PROXIES)
    tls = [
        f"--cacert={pki / 'ca.crt'}",
        f"--cert={pki / 'root.crt'}",
        f"--key={pki / 'root.key'}",
    ]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}

    def etcdctl(*args: str) -> Any:
        argv = ["etcdctl", f"--endpoints={endpoints}", *tls, "-w", "json", *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=env, check=False
        )
        if done.returncode != 0:
            raise ValueError(done.stderr.strip())
        return json.loads(done.stdout)

    members = etcdctl("member", "list")["members"]
    assert sorted(m["name"] for m in members) == PROXIES
    assert all(url.startswith("https://") for m in members for url in m["peerURLs"])
    health = etcdctl("endpoint", "health")
    assert len(health) == 3 and all(h["health"] for h in health), health

    # Without a client certificate the members refuse the client.
    plain = subprocess.run(
        [
            "etcdctl",
            f"--endpoints={endpoints}",
            f"--cacert={pki / 'ca.crt'}",
            "--command-timeout=5s",
            "get",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert plain.returncode != 0


def _etcdctl_as(d: Deployed, identity: str, *args: str) -> subprocess.CompletedProcess[str]:
    pki = d.pki
    endpoints = ",".join(f"https://{d.lab.machine(n).address}:2379" for n in PROXIES)
    argv = ["etcdctl", f"--endpoints={endpoints}", f"--cacert={pki / 'ca.crt'}"]
    argv += [f"--cert={pki / identity}.crt", f"--key={pki / identity}.key", *args]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_first_run_with_diff_printed_no_key(deployed: Deployed) -> None:
    """M7: `--diff` on the first run (every key written) shows no private key material."""
    log = deployed.first.log.read_text(errors="replace")
    assert "--- before" in log or "+++ after" in log, "the first run printed no diff at all"
    assert_no_key_material(deployed, deployed.first)


def test_etcd_auth_confines_a_node_key(deployed: Deployed) -> None:
    """RBAC is on: node1's agent key may write its own record only; the operator may ask."""
    prefix = f"/haproxy-py/{CLUSTER}/"
    for key in ("/elsewhere", prefix + "nodes/node2", prefix + "config", prefix + "requests/x"):
        done = _etcdctl_as(deployed, "agent-node1", "put", key, "{}")
        assert done.returncode != 0 and "permission denied" in done.stderr, (key, done.stderr)
    done = _etcdctl_as(deployed, "agent-node1", "auth", "disable")
    assert "permission denied" in done.stderr, done.stderr
    # VIP assignments are the controller's alone: an agent key can neither write nor delete one
    for verb in (["put", prefix + f"vips/{deployed.vip}", "{}"], ["del", prefix + "vips/x"]):
        done = _etcdctl_as(deployed, "agent-node1", *verb)
        assert done.returncode != 0 and "permission denied" in done.stderr, (verb, done.stderr)
    # ... and each agent holds only what its own config allows, written from the inventory
    toml = deployed.lab.ssh(deployed.lab.machine("node1"), "cat /etc/haproxy-py/node.toml")
    assert f'allowed_vips = ["{deployed.vip}"]' in toml.stdout, toml.stdout
    done = _etcdctl_as(deployed, "operator-admin", "put", prefix + "config", "{}")
    assert "permission denied" in done.stderr, done.stderr
    # The peer port takes peer-CA certificates only.
    address = deployed.lab.machine("node1").address
    peer = subprocess.run(
        [
            "curl", "-s", "-m", "10", "--cacert", str(deployed.pki / "peer-ca.crt"),
            "--cert", str(deployed.pki / "agent-node1.crt"),
            "--key", str(deployed.pki / "agent-node1.key"), f"https://{address}:2380/members",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert peer.returncode != 0 and "peerURLs" not in peer.stdout, peer.stdout


def test_daemons_run_as_their_own_users_in_a_sandbox(deployed: Deployed) -> None:
    machine = deployed.lab.machine("node1")
    users = {unit: _unit(deployed, machine, unit, "User")["User"] for unit in DAEMONS}
    assert users == {
        "haproxy-py": "haproxy-py",
        "ha-agent": "ha-agent",
        "ha-controller": "ha-controller",
    }
    for key in ("agent.key", "controller.key"):
        read = deployed.lab.ssh(
            machine, f"runuser -u haproxy-py -- cat /etc/haproxy-py/pki/{key}", check=False
        )
        assert read.returncode != 0 and "PRIVATE" not in read.stdout, read.stdout
    for unit in DAEMONS:
        done = deployed.lab.ssh(machine, f"systemd-analyze security --no-pager {unit}", check=False)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert match and float(match.group(1)) <= 2.5, done.stdout[-600:]


def test_etcd_compacts_has_a_quota_and_defragments_one_member_per_slot(
    deployed: Deployed,
) -> None:
    slots = set()
    for name in PROXIES:
        machine = deployed.lab.machine(name)
        env = deployed.lab.ssh(machine, "cat /etc/default/etcd").stdout
        assert 'ETCD_AUTO_COMPACTION_MODE="periodic"' in env
        assert 'ETCD_QUOTA_BACKEND_BYTES="2147483648"' in env
        timer = _unit(deployed, machine, "etcd-defrag.timer", "ActiveState", "TimersCalendar")
        assert timer["ActiveState"] == "active"
        slots.add(timer["TimersCalendar"])
        # The real service, as the etcd user, under systemd: it defragments this member.
        run = deployed.lab.ssh(machine, "systemctl start etcd-defrag.service", check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        log = deployed.lab.ssh(machine, "journalctl -u etcd-defrag --no-pager -o cat").stdout
        assert "Finished defragmenting etcd member[https://127.0.0.1:2379]" in log, log[-2000:]
    assert len(slots) == len(PROXIES)  # never two members at the same time
    doc = status(deployed)["etcd"]
    assert doc["quota"] == 2147483648 and doc["alarms"] == [] and doc["warnings"] == []
    assert sorted(m["name"] for m in doc["members"]) == PROXIES


def test_hactl_status_shows_a_healthy_cluster_with_the_vip_held(deployed: Deployed) -> None:
    owner = eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "the VIP assigned with all nodes healthy",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: deployed.last_status,
    )
    assert owner in PROXIES
    doc = status(deployed)
    assert doc["cluster"] == CLUSTER
    assert doc["controller"], doc
    assert sorted(n["name"] for n in doc["nodes"]) == PROXIES
    holders = [n["name"] for n in doc["nodes"] if deployed.vip in n["vips"]]
    assert holders == [owner], doc
    # The kernel agrees: exactly one node has the address.
    having = [
        name
        for name in PROXIES
        if f" {deployed.vip}/"
        in deployed.lab.ssh(deployed.lab.machine(name), "ip -4 -o addr show").stdout
    ]
    assert having == [owner]


def test_a_client_reaches_a_backend_through_the_vip(deployed: Deployed) -> None:
    body = eventually(
        lambda: through_vip(deployed),
        SETTLE_TIMEOUT,
        f"an answer from http://{deployed.vip}/",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )
    assert body is not None and body.startswith("demo backend app1:"), body


def test_hactl_failover_moves_the_vip(deployed: Deployed) -> None:
    before = eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "the VIP assigned",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: deployed.last_status,
    )
    done = hactl(deployed, "failover", "--yes")
    assert done.returncode == 0, done.stderr + done.stdout
    after = eventually(
        lambda: o if (o := vip_owner(deployed)) not in (None, before) else None,
        SETTLE_TIMEOUT,
        "the VIP on another node",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )
    assert after in PROXIES
    body = eventually(
        lambda: through_vip(deployed),
        SETTLE_TIMEOUT,
        f"an answer from http://{deployed.vip}/ after failover",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )
    assert body is not None and body.startswith("demo backend app1:")


def _standby(d: Deployed) -> str:
    owner = eventually(
        lambda: vip_owner(d),
        SETTLE_TIMEOUT,
        "the VIP assigned",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: d.last_status,
    )
    return next(name for name in PROXIES if name != owner)


def test_systemd_restarts_a_killed_daemon(deployed: Deployed) -> None:
    machine = deployed.lab.machine(_standby(deployed))
    for unit in DAEMONS:
        deployed.lab.ssh(machine, f"kill -KILL $(systemctl show --property=MainPID --value {unit})")

        def restarted(unit: str = unit) -> bool | None:
            show = f"systemctl show --property=ActiveState,NRestarts {unit}"
            props = dict(
                line.split("=", 1) for line in deployed.lab.ssh(machine, show).stdout.split()
            )
            return True if props["ActiveState"] == "active" and int(props["NRestarts"]) else None

        eventually(
            restarted,
            SETTLE_TIMEOUT,
            f"{machine.name}: {unit} restarted after SIGKILL",
            every=0.5,
            ignoring=PROBE_ERRORS,
        )
    eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "the cluster healthy again",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )


def test_daemons_notify_readiness_and_have_a_watchdog(deployed: Deployed) -> None:
    for name in PROXIES:
        machine = deployed.lab.machine(name)
        for unit in DAEMONS:
            props = _unit(deployed, machine, unit, "Type", "WatchdogUSec", "NotifyAccess")
            assert props == {"Type": "notify", "WatchdogUSec": "10s", "NotifyAccess": "main"}


def test_a_hung_daemon_is_killed_by_the_watchdog_and_restarted(deployed: Deployed) -> None:
    """SIGSTOP freezes the event loop; no WATCHDOG=1 comes, so systemd aborts and restarts it."""
    machine = deployed.lab.machine(_standby(deployed))
    for unit in DAEMONS:
        before = _unit(deployed, machine, unit, "NRestarts", "MainPID")
        deployed.lab.ssh(machine, f"kill -STOP {before['MainPID']}")

        def restarted(unit: str = unit, before: dict[str, str] = before) -> bool | None:
            now = _unit(deployed, machine, unit, "ActiveState", "NRestarts", "MainPID")
            again = int(now["NRestarts"]) > int(before["NRestarts"])
            moved = now["MainPID"] not in ("0", before["MainPID"])
            return True if now["ActiveState"] == "active" and again and moved else None

        eventually(
            restarted,
            SETTLE_TIMEOUT,
            f"{machine.name}: {unit} restarted by its watchdog",
            every=0.5,
            ignoring=PROBE_ERRORS,
        )
        journal = deployed.lab.ssh(machine, f"journalctl -u {unit} --no-pager -o cat", check=False)
        assert "Watchdog timeout" in journal.stdout, journal.stdout[-2000:]
    eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "the cluster healthy again",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )


def test_a_rebooted_node_comes_back_with_every_unit(deployed: Deployed) -> None:
    machine = deployed.lab.machine(_standby(deployed))
    deployed.lab.reboot(machine)
    units_active(deployed, machine, ["etcd", *DAEMONS])
    eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "all three nodes healthy again",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: deployed.last_status,
    )


def test_second_run_changes_nothing(deployed: Deployed) -> None:
    second_run_changes_nothing(deployed, PROXIES + APP)


def test_renewed_certificates_are_rolled_out_without_a_restart(deployed: Deployed) -> None:
    """Rotation: node1's certificates re-issued on the control machine and the playbook run
    again: no daemon and no etcd member restarts (etcd re-reads its own certificate per
    connection; our daemons dial with renewed files when a connection next fails), the VIP
    keeps answering, and etcd accepts the renewed agent certificate."""
    eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "the VIP assigned",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: deployed.last_status,
    )
    machine = deployed.lab.machine("node1")
    units = ["etcd", *DAEMONS]
    before = {unit: _unit(deployed, machine, unit, "MainPID")["MainPID"] for unit in units}
    for name, peer in (("etcd-node1", False), ("etcd-node1-peer", True)):
        argv = [str(HACTL), "certs", "issue", "--ca", str(deployed.pki), "--force", name]
        sans = f"{machine.address},node1" + ("" if peer else ",127.0.0.1,localhost")
        argv += ["--san", sans] + (["--peer"] if peer else [])
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    for name in ("agent-node1", "controller-node1"):
        argv = [str(HACTL), "certs", "issue", "--ca", str(deployed.pki), "--force", "--client"]
        subprocess.run([*argv, name], check=True, capture_output=True, timeout=60)
    with VipProber(deployed.vip) as prober:
        rotation = run_playbook(deployed.inventory, deployed.extra_vars, deployed.work, "rotation")
    deployed.timings["playbook run with renewed certificates"] = rotation.seconds
    assert rotation.returncode == 0, rotation.explain()
    after = {unit: _unit(deployed, machine, unit, "MainPID")["MainPID"] for unit in units}
    assert after == before, "a unit restarted for a renewed certificate"
    assert not any(not ok for _, ok in prober.samples), prober.outages()
    done = _etcdctl_as(deployed, "agent-node1", "get", f"/haproxy-py/{CLUSTER}/config")
    assert done.returncode == 0, done.stderr


class VipProber:
    """GETs the VIP every 50 ms from the test host until stopped: (monotonic time, answered)."""

    def __init__(self, vip: str) -> None:
        self.url = f"http://{vip}/"
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> VipProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    ok = response.status == 200
            except (OSError, ValueError):
                ok = False
            self.samples.append((started, ok))
            self._stop.wait(max(0.0, 0.05 - (time.monotonic() - started)))

    def outages(self) -> list[float]:
        """The length of every run of failed probes, in seconds."""
        spans, failing_since = [], None
        for at, ok in self.samples:
            if not ok and failing_since is None:
                failing_since = at
            elif ok and failing_since is not None:
                spans.append(at - failing_since)
                failing_since = None
        if failing_since is not None:
            spans.append(self.samples[-1][0] - failing_since)
        return spans


def test_a_changed_setting_restarts_every_node_and_the_vip_stays_served(
    deployed: Deployed,
) -> None:
    """The restart handlers fire on every node, one at a time; each node comes back by itself,
    and clients only see the planned hand-overs."""
    eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "the VIP assigned",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: deployed.last_status,
    )
    changed = {**deployed.extra_vars, "haproxy_py_log_level": "debug"}
    with VipProber(deployed.vip) as prober:
        third = run_playbook(deployed.inventory, changed, deployed.work, "changed-setting-run")
    deployed.timings["playbook run with a changed setting"] = third.seconds
    assert third.returncode == 0, third.explain()
    assert all(third.recap[name].changed for name in PROXIES), third.explain()
    owner = eventually(
        lambda: vip_owner(deployed),
        SETTLE_TIMEOUT,
        "every node healthy and the VIP assigned",
        every=0.5,
        ignoring=PROBE_ERRORS,
        detail=lambda: deployed.last_status,
    )
    assert owner in PROXIES
    failed = sum(1 for _, ok in prober.samples if not ok)
    outages = prober.outages()
    print(
        f"\nrolling restart: {failed} of {len(prober.samples)} probes failed, "
        f"outages (s): {[round(o, 2) for o in outages]}"
    )
    assert len(prober.samples) > 20, "the prober ran during the playbook"
    assert len(outages) <= len(PROXIES), f"more outages than planned hand-overs: {outages}"
    assert all(o <= 2.0 for o in outages), f"a hand-over took too long: {outages}"
