"""The agent's peer endpoint (and the controller's) over real mutual TLS on loopback, with
certificates made by `haproxy_py.pki`: who is refused, what a replayed answer gets, and how
small a round is."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.failsafe import MEMBER_MEMORY, Answer, Failsafe
from agent.failsafeloop import FailsafeLoop
from agent.peer import PeerServer
from agent.state import AgentCore, Assignment, Hysteresis
from controller import peer as controller_peer
from haproxy_py import pki
from haproxy_py.cluster import peerserve
from haproxy_py.cluster.allowlist import AllowList
from haproxy_py.cluster.peerlink import PeerClient, PeerError, PeerTls
from haproxy_py.cluster.timing import Timing, failsafe_after
from haproxy_py.metrics import Registry
from tests.support.wait import eventually_async

TIMING = Timing(lease_ttl=2, keepalive_interval=0.25, address_lifetime=1.0, fence_margin=0.2)
VIP = "198.18.50.10"
ALLOWED = AllowList.parse(["198.18.50.0/24"])
STALE = failsafe_after(TIMING) + 1.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca = tmp_path_factory.mktemp("pki")
    pki.init_ca(ca, common_name="test CA")
    for name in ("agent-n1", "agent-n2", "agent-n9", "controller-n1", "operator-ops", "revoked"):
        pki.issue(ca, f"{name}" if name != "revoked" else "agent-n3", client=True)
    other = ca / "other"
    pki.init_ca(other, common_name="another CA")
    pki.issue(other, "agent-n1", client=True)
    pki.revoke(ca, ca / "agent-n3.crt")
    return ca


def tls(ca: Path, name: str, base: Path | None = None) -> PeerTls:
    where = base or ca
    return PeerTls(ca / "ca.crt", where / f"{name}.crt", where / f"{name}.key", ca / "ca.crl")


class Node:
    """A peer (n2) whose etcd is out of reach, holding nothing, serving its endpoint."""

    def __init__(self, certs: Path) -> None:
        self.failsafe = Failsafe("n2", TIMING)
        self.failsafe.membership(("n1", "n2", "n3"), 0.0)
        self.core = AgentCore("n2", TIMING, Hysteresis(1, 1), ALLOWED)
        self.promises: list[float] = []
        self.server = PeerServer(
            "n2", tls(certs, "agent-n2"), self.failsafe, self.core, self.promises.append
        )
        self.port = 0


@pytest.fixture
async def peer(certs: Path) -> AsyncIterator[Node]:
    node = Node(certs)
    node.port = await node.server.start("127.0.0.1", 0)
    try:
        yield node
    finally:
        await node.server.close()


async def call(
    certs: Path,
    name: str,
    peer: Node,
    path: str,
    body: dict[str, object],
    expected: str = "agent-n2",
    base: Path | None = None,
) -> object:
    client = PeerClient(tls(certs, name, base), timeout=2.0)
    return await client.post("127.0.0.1", peer.port, expected, path, body)


ASK = {"round": "r1", "holder": "n1", "vips": [VIP]}


async def test_a_member_holder_gets_a_promise_bound_before_the_answer(
    certs: Path, peer: Node
) -> None:
    answer = Answer.from_dict(await call(certs, "agent-n1", peer, "/failsafe", ASK))
    assert answer.round == "r1" and answer.holder == "n1" and answer.peer == "n2"
    assert answer.etcd is False and answer.holds == () and answer.promise > 0
    assert peer.core.arm_hold > 0 and peer.promises == [peer.core.arm_hold]
    size = len(json.dumps(ASK)), len(json.dumps(answer.to_dict()))
    print(f"failsafe message sizes (JSON bodies): ask {size[0]} B, answer {size[1]} B")
    assert max(size) < 512


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(peer: Node) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with session.post(
                f"https://127.0.0.1:{peer.port}/failsafe", json=ASK, ssl=context
            ) as r:
                await r.read()


async def test_a_certificate_of_another_ca_is_refused(certs: Path, peer: Node) -> None:
    with pytest.raises(PeerError):
        await call(certs, "agent-n1", peer, "/failsafe", ASK, base=certs / "other")


async def test_a_revoked_certificate_is_refused(certs: Path, peer: Node) -> None:
    with pytest.raises(PeerError):
        await call(certs, "agent-n3", peer, "/failsafe", {**ASK, "holder": "n3"})


async def test_a_node_outside_the_membership_gets_403(certs: Path, peer: Node) -> None:
    with pytest.raises(PeerError, match="403"):
        await call(certs, "agent-n9", peer, "/failsafe", {**ASK, "holder": "n9"})
    assert peer.core.arm_hold < 0


async def test_a_controller_whose_agent_is_stopped_still_probes(certs: Path, peer: Node) -> None:
    """A stopped agent's record leaves etcd, but its node's controller may lead: refused,
    its probes would count as failures and the owner's lease would be revoked."""
    # n1's agent stopped: its record is gone, and long enough ago to be forgotten
    peer.failsafe.membership(("n2", "n3"), MEMBER_MEMORY + 1)
    answer = await call(certs, "controller-n1", peer, "/alive", {"nonce": "n1-leads"})
    assert answer == {"nonce": "n1-leads", "node": "n2"}
    with pytest.raises(PeerError, match="403"):
        await call(certs, "agent-n1", peer, "/failsafe", ASK)


async def test_asking_in_another_nodes_name_gets_400_and_no_promise(
    certs: Path, peer: Node
) -> None:
    with pytest.raises(PeerError, match=r"400.*certificate"):
        await call(certs, "agent-n1", peer, "/failsafe", {**ASK, "holder": "n3"})
    assert peer.core.arm_hold < 0


async def test_only_controllers_probe_and_only_agents_ask(certs: Path, peer: Node) -> None:
    answer = await call(certs, "controller-n1", peer, "/alive", {"nonce": "abc"})
    assert answer == {"nonce": "abc", "node": "n2"}
    with pytest.raises(PeerError, match="403"):
        await call(certs, "agent-n1", peer, "/alive", {"nonce": "abc"})
    with pytest.raises(PeerError, match="403"):
        await call(certs, "controller-n1", peer, "/failsafe", ASK)
    status = await call(certs, "operator-ops", peer, "/status", {})
    assert isinstance(status, dict) and status["node"] == "n2"


async def test_the_client_refuses_a_server_with_another_name(certs: Path, peer: Node) -> None:
    with pytest.raises(PeerError, match="server is 'agent-n2', expected 'agent-n3'"):
        await call(certs, "agent-n1", peer, "/failsafe", ASK, expected="agent-n3")


async def test_an_oversized_or_malformed_body_is_refused(certs: Path, peer: Node) -> None:
    with pytest.raises(PeerError, match="request larger"):
        await call(certs, "agent-n1", peer, "/failsafe", {**ASK, "pad": "x" * 5000})
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(certs / "agent-n1.crt", certs / "agent-n1.key")
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{peer.port}/failsafe"
        big = {**ASK, "pad": "x" * 5000}
        async with session.post(url, json=big, ssl=context) as response:
            assert response.status == 413
    with pytest.raises(PeerError, match="400"):
        await call(certs, "agent-n1", peer, "/failsafe", {**ASK, "vips": "all"})


async def test_a_replayed_answer_is_rejected_by_the_holder(certs: Path, peer: Node) -> None:
    holder = Failsafe("n1", TIMING)
    holder.membership(("n1", "n2"), 0.0)
    first = holder.start("round-1", {VIP}, STALE)
    assert first is not None
    old = Answer.from_dict(await call(certs, "agent-n1", peer, "/failsafe", first.to_dict()))
    assert holder.answered("n2", old, STALE) is not None  # the genuine answer grants
    second = holder.start("round-2", {VIP}, STALE + 0.25)
    assert second is not None
    assert holder.answered("n2", old, STALE + 0.26) is None  # the same answer again: ignored
    assert holder.round is not None and not holder.round.vouched


async def test_a_peer_that_holds_the_vip_fails_the_round(certs: Path, peer: Node) -> None:
    peer.core.lease_granted(5, 0.0, 2, 0.0)
    peer.core.health_sample(True, 0.0)
    peer.core.assignment_event(VIP, Assignment("n2", "assigned", 5, 3), 3, 0.0)
    assert VIP in peer.core.held
    answer = Answer.from_dict(await call(certs, "agent-n1", peer, "/failsafe", ASK))
    assert answer.holds == (VIP,) and answer.promise == 0


def test_the_failsafe_is_exported_as_metrics(certs: Path) -> None:
    core = AgentCore("n1", TIMING, Hysteresis(1, 1), ALLOWED)
    loop = FailsafeLoop(
        core,
        None,
        tls(certs, "agent-n1"),
        0,
        True,
        1.0,
        lambda step: None,
        lambda o: None,
    )
    registry = Registry("haproxy_py_agent")
    loop.register(registry)
    assert "\nhaproxy_py_agent_failsafe_seconds 0" in registry.render()
    loop.failsafe.since, loop.failsafe.rounds = time.monotonic() - 5.0, 20
    text = registry.render()
    assert "haproxy_py_agent_failsafe_rounds 20" in text
    seconds = float(text.split("\nhaproxy_py_agent_failsafe_seconds ")[1].split()[0])
    assert 5.0 <= seconds < 10.0


async def test_a_refused_round_is_asked_again_before_the_next_keepalive_period(
    certs: Path,
) -> None:
    """The first round after etcd went away meets a peer whose keepalives lag the holder's:
    it says "reaches etcd". Once its own next etcd call fails it vouches, and the holder,
    which asks again at once rather than a keepalive period later, is granted well before
    either the next period or the peer's own silence would have allowed (slow timing here:
    keepalive every 2 s, etcd counted away after 3 s)."""
    slow = Timing(lease_ttl=16, keepalive_interval=2.0, address_lifetime=8.0, fence_margin=0.5)
    peer_fs = Failsafe("n2", slow)
    peer_fs.membership(("n1", "n2"), 0.0)
    peer_core = AgentCore("n2", slow, Hysteresis(1, 1), ALLOWED)
    server = PeerServer("n2", tls(certs, "agent-n2"), peer_fs, peer_core, lambda until: None)
    port = await server.start("127.0.0.1", 0)
    holder = AgentCore("n1", slow, Hysteresis(1, 1), ALLOWED)
    start = time.monotonic()
    holder.lease_granted(7, start, 16, start)
    holder.health_sample(True, start)
    holder.assignment_event(VIP, Assignment("n1", "assigned", 7, 10), 10, start)
    assert VIP in holder.held
    granted: list[float] = []

    def post(step: object) -> None:
        granted.append(time.monotonic() - start)

    loop = FailsafeLoop(
        holder,
        None,  # the store is only read by the membership loop
        tls(certs, "agent-n1"),
        port,
        True,
        1.0,
        post,
        lambda outage: None,
    )
    loop.failsafe.membership(("n1", "n2"), 0.0)
    loop.addresses = {"n2": "127.0.0.1"}
    peer_fs.etcd_ok(time.monotonic())  # the peer's last keepalive came through
    rounds = asyncio.create_task(loop.round_loop())
    try:
        await eventually_async(lambda: loop.failsafe.failed, 10, "a refused round")
        assert "reaches etcd" in str(loop.failsafe.failed) and granted == []
        peer_fs.etcd_failed(time.monotonic())  # its next call fails: now it vouches
        await eventually_async(lambda: granted, 10, "a granted round")
    finally:
        rounds.cancel()
        loop.client.close()
        await server.close()
    assert granted[0] < 2.8, granted  # first round at 2 s; without the retry: 3 s or 4 s


async def test_the_leading_controller_answers_standbys_with_its_own_certificate(
    certs: Path,
) -> None:
    """`controller.peer`: the standbys' probe of the leader. Only a server holding the
    leader's key answers in its name; only controllers may ask."""
    runner, server, port = await controller_peer.start(
        "controller-n1", tls(certs, "controller-n1"), "127.0.0.1", 0
    )
    standby = PeerClient(tls(certs, "controller-n1"), timeout=2.0)
    agent = PeerClient(tls(certs, "agent-n2"), timeout=2.0)
    try:
        answer = await standby.post("127.0.0.1", port, "controller-n1", "/alive", {"nonce": "x1"})
        assert answer == {"nonce": "x1", "controller": "controller-n1"}
        with pytest.raises(PeerError, match="server is 'controller-n1', expected 'agent-n1'"):
            await standby.post("127.0.0.1", port, "agent-n1", "/alive", {"nonce": "x2"})
        with pytest.raises(PeerError, match="403"):
            await agent.post("127.0.0.1", port, "controller-n1", "/alive", {"nonce": "x3"})
        with pytest.raises(PeerError, match="400"):
            await standby.post("127.0.0.1", port, "controller-n1", "/alive", {"nonce": ""})
    finally:
        standby.close()
        agent.close()
        await peerserve.close(runner, server)
