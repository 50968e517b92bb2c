"""The review's attacks (security.md C1, M3, M5) with node1's stolen agent key, from node1.

Each is refused by etcd (RBAC from the certificates' names, the peer CA) while
a probe from the client namespace keeps getting answers from the VIP, and a
node killed afterwards still fails over. Agents only read `vips/`, so node1's
key cannot write or delete any assignment (C2); and even a writer that can
(etcd's root here, standing in for a stolen controller key) cannot make a node
take an address its own `allowed_vips` does not list. Keeping another node's
lease alive (etcd does not authorise LeaseKeepAlive) cannot pin that node's VIP,
nor can keeping its leading controller's election lease alive: the controllers'
authenticated probe (`controller.probes`) finds the node, and the leader, gone.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py.cluster.peerlink import PEER_PORT
from haproxy_py.cluster.records import VipAssignment
from haproxy_py.cluster.store import Store
from haproxy_py.lab import control, stolen
from haproxy_py.lab.layout import CLUSTER, ETCD_CLIENT_PORT, ETCD_PEER_PORT, OPERATOR
from tests.lab.e2e.support import FaultRun, lab_session, observed, settle, view
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]
DENIED = "permission denied"
PREFIX = f"/haproxy-py/{CLUSTER}/"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.Lab]:
    with lab_session(tmp_path_factory.mktemp("sec"), "active-standby", "security") as lab:
        yield lab


def _as_node1(
    lab: control.Lab, *args: str, stdin: bytes = b"", members: int = 3
) -> subprocess.CompletedProcess[str]:
    """etcdctl with node1's agent certificate and key, run from node1's namespace."""
    p = lab.paths.pki
    chosen = lab.layout.etcd[:members]
    endpoints = ",".join(f"https://{m.address}:{ETCD_CLIENT_PORT}" for m in chosen)
    argv = ["ip", "netns", "exec", lab.layout.node("node1").netns, "etcdctl"]
    argv += [f"--endpoints={endpoints}", f"--cacert={p / 'ca.crt'}"]
    argv += [f"--cert={p / 'agent-node1.crt'}", f"--key={p / 'agent-node1.key'}", *args]
    return subprocess.run(
        argv,
        input=stdin.decode(),
        env={"ETCDCTL_API": "3", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _refused(done: subprocess.CompletedProcess[str], why: str = DENIED) -> None:
    assert done.returncode != 0 and why in done.stderr, (done.args[-3:], done.stdout, done.stderr)


def _lease_of(lab: control.Lab, node: str) -> int:
    async def read() -> int:
        async with Store(lab.etcd_config(), CLUSTER) as store:
            kv = await store.get(store.schema.node(node))
            assert kv is not None and kv.lease
            return kv.lease

    return asyncio.run(read())


def test_stolen_agent_key_is_confined_while_the_vip_serves(lab: control.Lab) -> None:
    before = settle(lab)
    vip = lab.layout.vips[0]
    with observed(lab, vip) as seen:
        started = time.monotonic()
        # Outside the cluster prefix: read, write, and a 1 MB value towards the quota (M5).
        _refused(_as_node1(lab, "put", "/not-haproxy-py/x", "y"))
        _refused(_as_node1(lab, "get", "", "--prefix", "--keys-only"))
        big = _as_node1(lab, "put", "/x/big", stdin=b"A" * 1_000_000)
        _refused(big)
        # Inside: another node's record, the controller's keys, a forged operator request.
        for key in ("nodes/node2", "controller/leader", "config", "epoch", "events/999999999999"):
            _refused(_as_node1(lab, "put", PREFIX + key, "{}"))
        _refused(_as_node1(lab, "put", PREFIX + "requests/0-forged", '{"kind":"drain"}'))
        _refused(_as_node1(lab, "lease", "revoke", f"{_lease_of(lab, 'node2'):x}"))
        # VIP assignments (C2): neither the served VIP nor a backend's address, put or delete.
        lease = _lease_of(lab, "node2")
        node2 = VipAssignment(vip, "node2", epoch=1, since=0.0, lease=lease).to_json().decode()
        for address in (vip, lab.layout.apps[0].address):
            _refused(_as_node1(lab, "put", PREFIX + f"vips/{address}", node2))
            _refused(_as_node1(lab, "del", PREFIX + f"vips/{address}"))
        # etcd administration: lock everyone out (C1 item 4), exfiltrate, reshape the cluster.
        _refused(_as_node1(lab, "auth", "disable"))
        _refused(_as_node1(lab, "user", "add", "mallory", "--no-password"))
        _refused(_as_node1(lab, "role", "add", "mallory"))
        _refused(_as_node1(lab, "snapshot", "save", str(lab.paths.root / "stolen.db"), members=1))
        _refused(_as_node1(lab, "member", "remove", "1"))
        # hactl with the agent key is not an operator (C1 item 3).
        p = lab.paths.pki
        drain = lab.hactl(
            "--cert", str(p / "agent-node1.crt"), "--key", str(p / "agent-node1.key"),
            "drain", "node2", "--yes",
        )  # fmt: skip
        assert drain.returncode != 0 and DENIED in drain.stderr, drain.stderr
        assert drain.stderr.count("\n") == 1, drain.stderr
        # The raft port takes member certificates only (M3).
        peer = subprocess.run(
            [
                "ip", "netns", "exec", lab.layout.node("node1").netns, "curl", "-s", "-m", "5",
                "--cacert", str(p / "peer-ca.crt"), "--cert", str(p / "agent-node1.crt"),
                "--key", str(p / "agent-node1.key"),
                f"https://{lab.layout.etcd[0].address}:{ETCD_PEER_PORT}/members",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert peer.returncode != 0 and "etcd1" not in peer.stdout, peer.stdout
        eventually(lambda: time.monotonic() - started > 2, 10, "two seconds of probing")
        run = seen.finish(started, None)
    assert run.outage.failed == 0, f"{run.outage.failed} client attempts failed during the attacks"
    assert not Path(lab.paths.root / "stolen.db").exists()
    after = view(lab)
    assert after is not None and after.owner(vip) == before.owner(vip)
    assert not any(r.id.endswith("forged") for r in after.requests), after.requests
    # The operator's own requests carry the certificate's identity (m6).
    for kind in ("pause", "resume"):
        done = lab.hactl(kind)
        assert done.returncode == 0, done.stderr
    latest = view(lab)
    assert latest is not None
    recent = [r.by or "" for r in latest.requests][-2:]
    assert len(recent) == 2 and all(by.startswith(f"{OPERATOR} (") for by in recent), recent
    _node_kill_still_fails_over(lab, vip)


def _node_kill_still_fails_over(lab: control.Lab, vip: str) -> None:
    old = settle(lab).owner(vip)
    assert old is not None
    try:
        lab.kill(old)

        def moved() -> bool:
            now = view(lab)
            return bool(now and vip in now.vips and now.vips[vip].node not in (old,))

        eventually(moved, 30, f"{vip} to fail over off the killed {old}")
    finally:
        lab.restart(old)


def _owned_by_node2(lab: control.Lab) -> str:
    """The first VIP, moved to node2 if it is elsewhere; the lab settled."""
    current = settle(lab)
    vip = lab.layout.vips[0]
    if current.owner(vip) != "node2":
        done = lab.hactl("failover", "--vip", vip, "--to", "node2", "-y")
        assert done.returncode == 0, done.stdout + done.stderr
        eventually(lambda: (v := view(lab)) is not None and v.owner(vip) == "node2", 30, "move")
        settle(lab)
    return vip


def _count(lab: control.Lab, what: str) -> int:
    logs = "".join(lab.paths.log(f"{n.name}/controller").read_text() for n in lab.layout.nodes)
    return logs.count(what)


def _revokes(lab: control.Lab) -> int:
    """How many owners' leases the controllers have revoked for failed probes so far."""
    return _count(lab, "VIP owner failed its authenticated probe")


def _depositions(lab: control.Lab) -> int:
    return _count(lab, "leading controller failed its authenticated probe")


def _kill_node2_keeping(lab: control.Lab, vip: str, leases: list[int]) -> tuple[float, FaultRun]:
    """node1's agent key keeps `leases` alive while node2 is SIGKILLed whole: how long until
    the VIP answered from elsewhere, and what the clients and the ARP watcher saw."""
    keepers = [stolen.keep_alive(lab, "node1", lease) for lease in leases]
    try:
        time.sleep(1.0)  # the controllers probe node2 a few times first
        with observed(lab, vip) as seen:
            killed_at = time.monotonic()
            assert lab.kill("node2")
            eventually(lambda: seen.answered_by(killed_at, "node2"), 30, f"{vip} to move")
            served_after = time.monotonic() - killed_at
            run = seen.finish(killed_at, "node2")
    finally:
        outputs = [stolen.stop(keeper) for keeper in keepers]
        lab.restart("node2")
    # the attack did keep the leases alive
    assert all("keepalived with TTL" in output for output in outputs), outputs
    return served_after, run


def test_a_stolen_key_keeping_a_dead_nodes_lease_alive_does_not_pin_its_vip(
    lab: control.Lab,
) -> None:
    """#22 item 3: with node1's agent key, keep node2's lease alive with etcdctl, SIGKILL node2
    whole: the controller's probe over mutual TLS (which only node2's key can answer) fails,
    the lease is revoked and the VIP moves to node1."""
    vip = _owned_by_node2(lab)
    assert stolen.hand_leadership(lab, "node1", lambda node: lab.kill(node, "controller"))
    revokes = _revokes(lab)
    served_after, run = _kill_node2_keeping(lab, vip, [_lease_of(lab, "node2")])
    print(
        f"lease kept alive by a stolen key, node2 killed: node1 served after {served_after:.2f} s"
    )
    run.check_one_owner()
    assert _revokes(lab) > revokes
    assert served_after < 10.0


def test_a_stolen_key_keeping_a_dead_leaders_and_owners_leases_alive_does_not_pin_its_vip(
    lab: control.Lab,
) -> None:
    """#22 item 3 with the leading controller on the killed node: node1's agent key keeps
    both node2's agent lease and node2's controller's election lease alive. node1's standby
    controller finds both failing its probes, deposes the leader, revokes the owner's lease
    and, leading, moves the VIP once the fence has fallen: served by node1, never by two."""
    vip = _owned_by_node2(lab)
    assert stolen.hand_leadership(lab, "node2", lambda node: lab.kill(node, "controller"))
    settle(lab)
    before = view(lab)
    assert before is not None and before.leader is not None and before.leader.id == "node2"
    revokes, deposed = _revokes(lab), _depositions(lab)
    leases = [_lease_of(lab, "node2"), before.leader.lease]
    served_after, run = _kill_node2_keeping(lab, vip, leases)
    print(
        "agent and election leases kept alive by a stolen key, node2 (owner and leader) "
        f"killed: node1 served after {served_after:.2f} s"
    )
    run.check_one_owner()
    assert _revokes(lab) > revokes and _depositions(lab) > deposed
    after = view(lab)
    assert after is not None and after.leader is not None and after.leader.id == "node1"
    assert served_after < 10.0


def test_an_owner_cut_off_from_the_controllers_only_loses_its_vip_once_fenced(
    lab: control.Lab,
) -> None:
    """The revoke path with a live owner: node2 keeps its own lease alive but drops every
    probe (its peer port swallows packets, so each probe waits for its timeout). The
    controller revokes its lease; node2 keeps re-arming until its next keepalive fails, and
    the VIP moves only after the embargo (`timing.fence_deadline`), never to two nodes."""
    vip = _owned_by_node2(lab)
    netns = lab.layout.node("node2").netns
    cut = f"""add table inet probecut
add chain inet probecut input {{ type filter hook input priority -400; }}
add rule inet probecut input tcp dport {PEER_PORT} drop
"""

    def nft(script: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=False
        )
        assert done.returncode == 0

    revokes, agent_log = _revokes(lab), lab.paths.log("node2/agent")
    lost = agent_log.read_text().count("lease lost")
    time.sleep(1.0)  # the controllers probe node2 under its current lease (else: lease alone)
    try:
        with observed(lab, vip) as seen:
            cut_at = time.monotonic()
            nft(cut)
            eventually(lambda: seen.answered_by(cut_at, "node2"), 30, f"{vip} to move")
            served_after = time.monotonic() - cut_at
            run = seen.finish(cut_at, "node2")
    finally:
        nft("delete table inet probecut\n")
    print(f"node2 cut off from the controllers only: served elsewhere after {served_after:.2f} s")
    run.check_one_owner()
    assert _revokes(lab) > revokes
    assert agent_log.read_text().count("lease lost") > lost  # its keepalive learnt the revoke


def test_no_etcd_writer_makes_a_node_take_a_backends_address(lab: control.Lab) -> None:
    """C2 with full write access to etcd: node2 is told to hold app1's address. It refuses
    (its allowed_vips lists the VIPs only), says so in its record and in `hactl status`,
    never adds the address, and the backend and the VIP keep serving."""
    settle(lab)
    vip, app = lab.layout.vips[0], lab.layout.apps[0].address
    node2 = lab.layout.node("node2").netns
    with observed(lab, vip) as seen:
        started = time.monotonic()

        async def assign() -> None:
            async with Store(lab.etcd_config(), CLUSTER) as store:
                lease = await store.get(store.schema.node("node2"))
                assert lease is not None
                value = VipAssignment(app, "node2", epoch=999, since=time.time(), lease=lease.lease)
                await store.put(store.schema.vip(app), value.to_json())

        asyncio.run(assign())
        added: list[str] = []

        def refused() -> bool:
            shown = subprocess.run(
                ["ip", "-n", node2, "-4", "-o", "addr", "show"], capture_output=True, text=True
            ).stdout
            if f" {app}/" in shown:
                added.append(shown)
            now = view(lab)
            record = now.nodes.get("node2") if now else None
            return record is not None and app in record.refused

        eventually(refused, 20, "node2 to report the refusal in its record")
        status = lab.hactl("status")
        assert status.returncode == 0 and f"node2 refuses {app}" in status.stdout, status.stdout
        eventually(lambda: time.monotonic() - started > 2, 10, "two seconds of probing")
        run = seen.finish(started, None)
    assert not added, f"node2 added {app}: {added[0]}"
    assert run.outage.failed == 0, f"{run.outage.failed} client attempts failed"
    # the controller clears the key (the VIP is not configured), and app1 stays up for node1
    eventually(lambda: (v := view(lab)) is not None and app not in v.occupied, 20, "key cleared")
