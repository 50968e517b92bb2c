"""Pure parts of the agent's edges: ARP frames, their schedule and supervised sending, the
proxy's /healthz answer, and the capability check."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from structlog.testing import capture_logs

from agent.garp import ARP_REPLY, ARP_REQUEST, Announcer, arp_frame, parse_arp, schedule
from agent.netlink import missing_capabilities
from agent.proxy import status_of
from haproxy_py.cluster import tasks
from haproxy_py.cluster.agent_config import GarpConfig

MAC = bytes.fromhex("02aabbccddee")


def test_request_and_reply_frames() -> None:
    request = arp_frame(MAC, "198.18.0.10", reply=False)
    assert len(request) == 42
    assert request[:6] == b"\xff" * 6 and request[6:12] == MAC  # broadcast, from us
    assert request[12:14] == b"\x08\x06"
    assert request[14:20] == b"\x00\x01\x08\x00\x06\x04"  # Ethernet/IPv4, 6/4 byte addresses
    assert request[32:38] == b"\x00" * 6  # RFC 5227: target hardware address zero
    assert parse_arp(request) == (ARP_REQUEST, MAC, "198.18.0.10", "198.18.0.10")
    reply = arp_frame(MAC, "198.18.0.10", reply=True)
    assert reply[32:38] == MAC  # as `arping -A` sends it
    assert parse_arp(reply) == (ARP_REPLY, MAC, "198.18.0.10", "198.18.0.10")


def test_parse_rejects_what_is_not_arp() -> None:
    assert parse_arp(b"\x00" * 41) is None
    ipv4 = bytearray(arp_frame(MAC, "198.18.0.10", reply=False))
    ipv4[12:14] = b"\x08\x00"
    assert parse_arp(bytes(ipv4)) is None


def test_schedule_bursts_then_refreshes_alternating_forms() -> None:
    settings = GarpConfig(count=3, spacing=0.02, second_burst=2.0, refresh=10.0)
    steps = list(itertools.islice(schedule(settings), 10))
    times = list(itertools.accumulate(wait for wait, _ in steps))
    assert [round(t, 3) for t in times] == [
        0,
        0.02,
        0.04,
        2.0,
        2.02,
        2.04,
        12.04,
        12.06,
        22.06,
        22.08,
    ]
    forms = [reply for _, reply in steps]
    assert forms == [False, True] * 5  # request, reply, request, ...


def test_schedule_with_a_long_burst_never_waits_negative() -> None:
    settings = GarpConfig(count=5, spacing=1.0, second_burst=2.0, refresh=10.0)
    assert all(wait >= 0 for wait, _ in itertools.islice(schedule(settings), 20))


class BrokenOnce:
    """A packet socket whose first send fails with something no one expects."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.calls = 0

    def send(self, data: bytes, /) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected")
        self.sent.append(data)
        return len(data)

    def close(self) -> None:
        pass


async def test_an_unexpected_send_failure_is_logged_and_the_announcing_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "BACKOFF", 0.01)
    sock = BrokenOnce()
    settings = GarpConfig(count=3, spacing=0.01, second_burst=60.0, refresh=60.0)
    announcer = Announcer("eth0", MAC, settings, sock=sock)
    with capture_logs() as entries:
        announcer.start("198.18.0.10")
        try:
            for _ in range(500):  # bounded: 5 s at most
                if len(sock.sent) >= settings.count:
                    break
                await asyncio.sleep(0.01)
        finally:
            announcer.close()
    # the whole first burst was sent after the failure: the task started again
    assert len(sock.sent) >= settings.count
    assert parse_arp(sock.sent[0]) == (ARP_REQUEST, MAC, "198.18.0.10", "198.18.0.10")
    failures = [e for e in entries if e["event"] == "task failed; restarting it"]
    assert [e["task"] for e in failures] == ["garp 198.18.0.10"]


def test_healthz_answer_gives_liveness_and_the_readiness_score() -> None:
    body = {
        "status": "ok",
        "ready": 1,
        "pools": 2,
        "servers_up": 2,
        "servers": 3,
        "draining": False,
    }
    status = status_of(200, body)
    assert (status.live, status.ready, status.pools, status.servers_up, status.servers) == (
        True,
        1,
        2,
        2,
        3,
    )
    assert status.draining is False
    draining = status_of(503, {"status": "unhealthy", "reasons": ["draining"], "draining": True})
    assert not draining.live and draining.draining
    assert draining.detail == "/healthz answered 503: draining"
    garbage = status_of(200, ["x"])
    assert garbage.live and garbage.draining is None and garbage.pools == 0
    assert status_of(500, None).ready == 0


def test_capabilities_read_from_proc_status() -> None:
    everything = "Name:\tx\nCapEff:\t000001ffffffffff\n"
    assert missing_capabilities(everything) == []
    only_net_admin = f"CapEff:\t{1 << 12:016x}\n"
    assert missing_capabilities(only_net_admin) == ["CAP_NET_RAW"]
    assert missing_capabilities("CapEff:\t0000000000000000\n") == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
