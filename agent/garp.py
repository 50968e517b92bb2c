"""Gratuitous ARP for the VIPs this node holds, sent by the agent itself (AF_PACKET).

Switches and clients miss single announcements, and some only learn from the
request form, others only from the reply form. So a VIP that arrives here is
announced at once with a burst, again with a second burst a few seconds later,
then slowly while it stays, alternating request and reply frames throughout.

Every frame is sent only while the VIP's fence deadline (`until`) lies ahead,
checked against the monotonic clock right before the send: an agent resumed
after a freeze (a VM pause, SIGSTOP) never announces a VIP that has moved on.
The fence's egress chain drops such a frame in the kernel as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog

from haproxy_py.cluster.agent_config import GarpConfig
from haproxy_py.cluster.tasks import supervised

log = structlog.get_logger(__name__)

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ARP_REQUEST = 1
ARP_REPLY = 2


def arp_frame(mac: bytes, vip: str, reply: bool) -> bytes:
    """An Ethernet broadcast frame announcing `vip` at `mac` (sender IP = target IP = vip).

    Request form: target hardware address zero (RFC 5227 announcement). Reply
    form: target hardware address = our own, as `arping -A` sends it.
    """
    ip = ipaddress.IPv4Address(vip).packed
    header = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARP_REPLY if reply else ARP_REQUEST)
    arp += mac + ip + (mac if reply else ZERO_MAC) + ip
    return header + arp


def parse_arp(frame: bytes) -> tuple[int, bytes, str, str] | None:
    """(operation, sender MAC, sender IP, target IP) of an ARP frame, or None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    op = struct.unpack("!H", frame[20:22])[0]
    sender_mac = frame[22:28]
    sender_ip = str(ipaddress.IPv4Address(frame[28:32]))
    target_ip = str(ipaddress.IPv4Address(frame[38:42]))
    return op, sender_mac, sender_ip, target_ip


def schedule(settings: GarpConfig) -> Iterator[tuple[float, bool]]:
    """(seconds to wait before the frame, reply form?) forever, starting with no wait."""
    sent = 0

    def burst(first_wait: float) -> Iterator[tuple[float, bool]]:
        nonlocal sent
        for i in range(settings.count):
            yield (first_wait if i == 0 else settings.spacing), sent % 2 == 1
            sent += 1

    burst_time = (settings.count - 1) * settings.spacing
    yield from burst(0.0)
    yield from burst(max(0.0, settings.second_burst - burst_time))
    while True:
        # one request and one reply per refresh
        yield settings.refresh, sent % 2 == 1
        sent += 1
        yield settings.spacing, sent % 2 == 1
        sent += 1


class FrameSocket(Protocol):
    """What the announcer needs of its packet socket (unit tests give a fake one)."""

    def send(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def packet_socket(interface: str) -> socket.socket:
    """A non-blocking AF_PACKET socket bound to `interface` for ARP frames."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.setblocking(False)
    sock.bind((interface, ETH_P_ARP))
    return sock


class Announcer:
    """One AF_PACKET socket on the VIP interface and one announcing task per held VIP.

    Each task is supervised: an unexpected failure is logged and the VIP's
    announcements start again with a fresh burst (every frame still checks the
    fence deadline), so a live agent never silently stops announcing.
    """

    def __init__(
        self,
        interface: str,
        mac: bytes,
        settings: GarpConfig,
        until: Callable[[str], float] = lambda vip: math.inf,
        on_sent: Callable[[str], None] = lambda vip: None,
        sock: FrameSocket | None = None,
    ) -> None:
        self.interface = interface
        self.mac = mac
        self.settings = settings
        self.until = until  # the VIP's fence deadline (monotonic): no frame after it
        self.on_sent = on_sent
        self._sock = sock if sock is not None else packet_socket(interface)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, vip: str) -> None:
        """Announce `vip` now and on the schedule; restarting begins a fresh burst."""
        self.stop(vip)
        name = f"garp {vip}"
        announce = supervised(name, lambda: self._announce(vip), once=True)
        self._tasks[vip] = asyncio.create_task(announce, name=name)

    def stop(self, vip: str) -> None:
        task = self._tasks.pop(vip, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for vip in list(self._tasks):
            self.stop(vip)
        self._sock.close()

    async def _announce(self, vip: str) -> None:
        failing = False
        for wait, reply in schedule(self.settings):
            if wait > 0:
                await asyncio.sleep(wait)
            late = time.monotonic() - self.until(vip)
            if late >= 0:  # not after: checked right before the send, nothing awaited between
                log.info(
                    "gratuitous ARP stopped: fence deadline passed", vip=vip, late_s=round(late, 3)
                )
                return
            try:
                self._sock.send(arp_frame(self.mac, vip, reply))
            except OSError as exc:
                if not failing:  # log the first failure of a run, not every frame
                    log.warning("gratuitous ARP failed", vip=vip, error=exc.strerror)
                failing = True
                continue
            failing = False
            self.on_sent(vip)
