"""The nftables fence against the clock, in network namespaces (root, iproute2, libnftables).

What clients see is judged from a client namespace: ARP replies and
gratuitous ARP on the wire (`ArpWatch`), TCP answers or their absence.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.fence import Fence
from agent.garp import ETH_P_ARP, Announcer, arp_frame
from agent.netlink import Addresses, NetlinkFailure
from haproxy_py.cluster.agent_config import GarpConfig
from haproxy_py.lab.arpwatch import ArpWatch
from haproxy_py.lab.netns import Host, in_netns, ip
from tests.lab.agent.support import addresses, plumbing

pytestmark = pytest.mark.lab

PORT = 7000
EARLY = 0.1  # an answer this long before the deadline proves the VIP was alive until then


@dataclass
class Lab:
    node: Host
    other: Host
    client: Host
    vip: str
    fence: Fence


def _mac(netns: str) -> str:
    return str(json.loads(ip("-j", "link", "show", "eth0", netns=netns))[0]["address"])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with plumbing(tmp_path, "hvf") as (net, subnet):
        net.bridge()
        node = net.add_host("n1", f"{subnet}.11/24")
        other = net.add_host("n2", f"{subnet}.12/24")
        client = net.add_host("c", f"{subnet}.99/24")
        vip = f"{subnet}.100"
        ip("addr", "add", f"{vip}/32", "dev", "eth0", netns=node.netns)
        fence = in_netns(node.netns, lambda: Fence.open("eth0"))
        try:
            yield Lab(node, other, client, vip, fence)
        finally:
            fence.close(remove=True)


def test_arp_replies_stop_at_the_deadline_to_the_millisecond(lab: Lab) -> None:
    mac = _mac(lab.node.netns)
    with ArpWatch(lab.client.netns, [lab.vip], str(lab.client.address.ip)) as watch:
        for lifetime in (0.3, 0.6):
            armed = time.monotonic()
            until = armed + lifetime
            lab.fence.arm(lab.vip, until)
            time.sleep(lifetime + 0.3)
            last = watch.last(lab.vip, mac, since=armed)
            assert last is not None, "no ARP reply while the fence was armed"
            assert until - EARLY < last <= until + 0.005, (
                f"last reply {last - armed:.3f} s after arming, deadline {lifetime} s"
            )


def test_a_refresh_moves_the_deadline_both_ways(lab: Lab) -> None:
    mac = _mac(lab.node.netns)
    with ArpWatch(lab.client.netns, [lab.vip], str(lab.client.address.ip)) as watch:
        armed = time.monotonic()
        lab.fence.arm(lab.vip, armed + 0.4)
        time.sleep(0.25)
        lab.fence.arm(lab.vip, armed + 0.9)  # a keepalive's refresh: later
        time.sleep(0.95)
        last = watch.last(lab.vip, mac, since=armed)
        assert last is not None and armed + 0.9 - EARLY < last <= armed + 0.905, (
            f"refresh to 0.9 s: last reply at {None if last is None else last - armed}"
        )
        armed = time.monotonic()
        lab.fence.arm(lab.vip, armed + 1.0)
        lab.fence.arm(lab.vip, armed + 0.3)  # an absolute deadline: earlier wins too
        time.sleep(0.6)
        last = watch.last(lab.vip, mac, since=armed)
        assert last is not None and last <= armed + 0.305, f"last reply at {last and last - armed}"


def test_our_own_gratuitous_arp_is_dropped_once_the_element_expired(lab: Lab) -> None:
    mac = _mac(lab.node.netns)
    node_mac = bytes.fromhex(mac.replace(":", ""))
    sock = in_netns(
        lab.node.netns,
        lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)),
    )
    sock.bind(("eth0", ETH_P_ARP))
    # one who-has at start, then none: the requests seen are the node's own announcements
    client = str(lab.client.address.ip)
    with sock, ArpWatch(lab.client.netns, [lab.vip], client, period=3600) as watch:
        armed = time.monotonic()
        until = armed + 0.3
        lab.fence.arm(lab.vip, until)
        refused = 0
        while time.monotonic() < armed + 0.6:
            try:
                sock.send(arp_frame(node_mac, lab.vip, reply=False))
            except OSError as exc:
                assert exc.errno in (errno.ENOBUFS, errno.EPERM), exc
                refused += 1
            time.sleep(0.005)
        time.sleep(0.05)
    garps = [c for c in watch.of(lab.vip, armed, mac) if c.op == 1]
    assert garps, "no gratuitous ARP reached the client while the fence was armed"
    assert garps[-1].at <= until + 0.005, f"GARP seen {garps[-1].at - until:.3f} s after deadline"
    assert until - garps[-1].at < EARLY
    assert refused > 0, "the kernel did not refuse a single frame after the deadline"


class EchoServer:
    """A TCP echo server on 0.0.0.0:PORT inside a namespace; `push` sends to every client."""

    def __init__(self, netns: str) -> None:
        self.listener = in_netns(netns, lambda: socket.create_server(("0.0.0.0", PORT)))
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self.conns.append(conn)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if data:
                    conn.sendall(data)
                else:
                    sel.unregister(conn)

    def push(self, data: bytes) -> None:
        for conn in self.conns:
            conn.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()
        self.listener.close()


def connect(lab: Lab, timeout: float = 0.5) -> socket.socket:
    return in_netns(lab.client.netns, lambda: socket.create_connection((lab.vip, PORT), timeout))


def echoes(conn: socket.socket, timeout: float = 0.4) -> bool:
    """Send a byte; True if it comes back, False if nothing comes within `timeout`."""
    conn.settimeout(timeout)
    conn.sendall(b"x")
    try:
        return conn.recv(16) == b"x"
    except TimeoutError:
        return False


def test_traffic_to_the_vip_stops_at_the_deadline_and_a_drop_is_silent_until_let_out(
    lab: Lab,
) -> None:
    with contextlib.closing(EchoServer(lab.node.netns)) as server:
        until = time.monotonic() + 1.0
        lab.fence.arm(lab.vip, until)
        established = connect(lab)
        assert echoes(established)
        time.sleep(max(0.0, until - time.monotonic()) + 0.02)
        assert not echoes(established), "an established connection still answered"
        with pytest.raises(OSError):
            connect(lab, timeout=0.3).close()
        established.close()

        # a clean release: nothing gets in or out, until the node's closes (the 1001) are let
        # out; what was written meanwhile was kept unsent, and leaves first
        lab.fence.arm(lab.vip, time.monotonic() + 5)
        conn = connect(lab)
        assert echoes(conn)
        lab.fence.drop(lab.vip)
        assert not echoes(conn)
        server.push(b"early ")
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.recv(16)
        lab.fence.let_out(lab.vip, 2.0)
        server.push(b"bye")
        conn.settimeout(2.0)
        got = b""
        while not got.endswith(b"bye"):
            got += conn.recv(16)
        assert got.startswith(b"early "), "the proxy's last words came out of order"
        conn.close()


def _move_vip_to_other(lab: Lab) -> None:
    ip("addr", "del", f"{lab.vip}/32", "dev", "eth0", netns=lab.node.netns)
    ip("addr", "add", f"{lab.vip}/32", "dev", "eth0", netns=lab.other.netns)
    mac = _mac(lab.other.netns)
    ip("neigh", "replace", lab.vip, "lladdr", mac, "dev", "eth0", netns=lab.client.netns)


def test_grace_drops_mid_stream_segments_without_a_reset_but_lets_syns_through(lab: Lab) -> None:
    lab.fence.arm(lab.vip, time.monotonic() + 60)
    other = in_netns(lab.other.netns, lambda: Fence.open("eth0"))
    try:
        with (
            contextlib.closing(EchoServer(lab.node.netns)),
            contextlib.closing(EchoServer(lab.other.netns)),
        ):
            in_grace, after_grace = connect(lab), connect(lab)
            assert echoes(in_grace) and echoes(after_grace)
            other.arm(lab.vip, time.monotonic() + 60)
            other.grace(lab.vip, 1.5)
            started = time.monotonic()
            _move_vip_to_other(lab)
            assert not echoes(in_grace, timeout=0.5), "a mid-stream segment was answered"
            fresh = connect(lab)  # its SYN passes: the reconnect lands on the new owner at once
            assert echoes(fresh)
            fresh.close()
            time.sleep(max(0.0, started + 1.6 - time.monotonic()))
            after_grace.settimeout(1.0)
            with pytest.raises(ConnectionResetError):  # without grace: the reset clients get
                after_grace.sendall(b"y")
                after_grace.recv(16)
            in_grace.close()
            after_grace.close()
    finally:
        other.close(remove=True)


def _nft(netns: str, *args: str) -> str:
    command = ["ip", "netns", "exec", netns, "nft", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _set(netns: str, name: str) -> str:
    return _nft(netns, "list", "set", "ip", "ha_agent", name)


def _tables(netns: str) -> str:
    return _nft(netns, "list", "tables")


def test_a_restarted_agent_keeps_the_elements_and_a_clean_close_removes_the_tables(
    lab: Lab,
) -> None:
    until = time.monotonic() + 0.5
    lab.fence.arm(lab.vip, until)
    again = in_netns(lab.node.netns, lambda: Fence.open("eth0"))
    assert "ha_agent" in _tables(lab.node.netns)
    mac = _mac(lab.node.netns)
    with ArpWatch(lab.client.netns, [lab.vip], str(lab.client.address.ip)) as watch:
        time.sleep(0.8)
    last = watch.last(lab.vip, mac)
    assert last is not None and last <= until + 0.005, "the reopened fence lost its deadline"
    again.close(remove=True)
    assert "ha_agent" not in _tables(lab.node.netns)


def test_addresses_fence_first_and_refuse_an_add_after_its_deadline(lab: Lab) -> None:
    extra = lab.vip.rsplit(".", 1)[0] + ".101"

    async def scenario() -> None:
        nl = await Addresses.open("eth0")
        try:
            with pytest.raises(NetlinkFailure, match="deadline passed"):
                await nl.arm(extra, 32, 1, until=time.monotonic() - 0.001)
            assert extra not in addresses(lab.node.netns)
            until = time.monotonic() + 1.0
            await nl.arm(extra, 32, 1, until=until)
            assert extra in addresses(lab.node.netns)
            assert nl.until(extra) == until
            nl.grace(extra, 1.0)
            assert extra in _set(lab.node.netns, "grace")
            assert await nl.remove(extra, 32)
            assert nl.until(extra) < time.monotonic()
            assert extra not in addresses(lab.node.netns)
        finally:
            nl.close()

    in_netns(lab.node.netns, lambda: asyncio.run(scenario()))
    assert "ha_agent" not in _tables(lab.node.netns), "a clean close leaves no table"


def test_an_address_the_kernel_set_after_its_deadline_is_removed_at_once(lab: Lab) -> None:
    """The agent stopped (SIGSTOP, starved) after the deadline check and before the syscall:
    the kernel sets the address late, re-creating it if its lifetime had run out meanwhile.
    The agent removes it as soon as it runs again, not a lifetime later."""
    extra = lab.vip.rsplit(".", 1)[0] + ".102"

    async def scenario() -> None:
        nl = await Addresses.open("eth0")
        real = nl._ipr.addr

        async def stopped_first(command: str, **kwargs: object) -> object:
            if command == "replace":
                await asyncio.sleep(0.3)  # stopped, or starved, right before the syscall
            return await real(command, **kwargs)

        nl._ipr.addr = stopped_first
        try:
            with pytest.raises(NetlinkFailure, match="after its deadline"):
                await nl.arm(extra, 32, 1, until=time.monotonic() + 0.1)
            assert extra not in addresses(lab.node.netns)
        finally:
            nl.close()

    in_netns(lab.node.netns, lambda: asyncio.run(scenario()))


def test_attach_binds_the_garp_chain_to_a_recreated_interface(lab: Lab) -> None:
    """The egress chain belongs to one device; Debian 12's kernel deletes it with the device
    (newer ones re-bind by name): `attach` makes it hold either way."""
    netns = lab.node.netns

    def make() -> None:
        ip("link", "add", "fx0", "type", "veth", "peer", "name", "fx0p", netns=netns)
        for dev in ("fx0", "fx0p"):
            ip("link", "set", dev, "up", netns=netns)

    def garp_refused() -> bool:
        sock = in_netns(
            netns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        )
        with sock:
            sock.bind(("fx0", ETH_P_ARP))
            try:
                sock.send(arp_frame(b"\x02" * 6, lab.vip, reply=False))
            except OSError as exc:
                assert exc.errno == errno.ENOBUFS, exc
                return True
        return False

    make()
    lab.fence.attach("fx0")
    lab.fence.arm(lab.vip, time.monotonic() + 0.05)
    time.sleep(0.1)
    assert garp_refused()
    ip("link", "del", "fx0", netns=netns)
    make()
    lab.fence.attach("fx0")
    assert garp_refused()
    lab.fence.arm(lab.vip, time.monotonic() + 5)
    assert not garp_refused(), "an armed VIP's announcements must pass"


def test_the_announcer_sends_no_frame_after_the_vips_deadline(lab: Lab) -> None:
    """The check in user space, before each frame (a VIP the fence never saw, so the kernel's
    egress chain does not interfere): a burst while the deadline lies ahead, nothing after."""
    vip = lab.vip.rsplit(".", 1)[0] + ".102"
    node_mac = bytes.fromhex(_mac(lab.node.netns).replace(":", ""))
    deadline = {vip: time.monotonic() + 0.5}
    sent: list[float] = []
    settings = GarpConfig(count=3, spacing=0.1, second_burst=0.4, refresh=0.5)

    async def scenario() -> None:
        announcer = Announcer("eth0", node_mac, settings, deadline.__getitem__)
        announcer.on_sent = lambda _: sent.append(time.monotonic())
        try:
            announcer.start(vip)
            await asyncio.sleep(1.5)
        finally:
            announcer.close()

    in_netns(lab.node.netns, lambda: asyncio.run(scenario()))
    assert len(sent) >= 3, "the first burst was not sent"
    assert max(sent) < deadline[vip], f"a frame {max(sent) - deadline[vip]:.3f} s after"


def test_the_arp_watcher_catches_two_nodes_answering(lab: Lab) -> None:
    """The watcher the cluster tests rely on can fail: the VIP on two unfenced nodes is caught,
    the fenced one of them is not counted."""
    ip("addr", "add", f"{lab.vip}/32", "dev", "eth0", netns=lab.other.netns)
    client = str(lab.client.address.ip)
    lab.fence.arm(lab.vip, time.monotonic() + 60)
    with ArpWatch(lab.client.netns, [lab.vip], client) as watch:
        time.sleep(0.3)
    assert watch.doubles(), "both nodes answered, and the watcher saw nothing"
    assert {c.mac for c in watch.of(lab.vip)} == {_mac(lab.node.netns), _mac(lab.other.netns)}
    lab.fence.drop(lab.vip)
    with ArpWatch(lab.client.netns, [lab.vip], client) as watch:
        time.sleep(0.3)
    assert watch.probes > 50 and not watch.doubles()
    assert {c.mac for c in watch.of(lab.vip)} == {_mac(lab.other.netns)}


def test_a_table_of_another_shape_is_replaced(lab: Lab) -> None:
    """A table left by a version whose sets differ: installing afresh beats refusing to start."""
    lab.fence.close(remove=True)
    _nft(lab.node.netns, "add", "table", "ip", "ha_agent")
    _nft(lab.node.netns, "add", "set", "ip", "ha_agent", "alive", "{ type ipv4_addr; }")
    lab.fence = in_netns(lab.node.netns, lambda: Fence.open("eth0"))
    lab.fence.arm(lab.vip, time.monotonic() + 5)
    assert "timeout" in _set(lab.node.netns, "alive") and lab.vip in _set(lab.node.netns, "alive")
