"""What clients see of a VIP: who answers ARP for it, watched from a client's namespace.

An address still configured on a fenced node answers nothing, so "on two
nodes" is judged here, on the wire: a thread inside the client namespace asks
who-has for every VIP every `period` seconds and records every ARP frame that
claims a VIP (replies to it, gratuitous ARP from anyone) with the sender's MAC
and the monotonic time (CLOCK_MONOTONIC is shared by every namespace). Times
are the kernel's receive timestamps, so a busy machine delaying this thread
does not make a claim look later than it was.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from haproxy_py.lab.netns import thread_in_netns

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")


@dataclass(frozen=True)
class Claim:
    """One ARP frame saying `vip` is at `mac`: a reply (op 2) or a request (op 1, a GARP)."""

    at: float
    vip: str
    mac: str
    op: int


def who_has(mac: bytes, sender_ip: str, vip: str) -> bytes:
    frame = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    return frame + mac + ipaddress.IPv4Address(sender_ip).packed + b"\0" * 6 + _ip(vip)


def _ip(vip: str) -> bytes:
    return ipaddress.IPv4Address(vip).packed


def claim_of(frame: bytes, at: float, vips: frozenset[str]) -> Claim | None:
    """The claim an ARP frame makes about one of `vips` (sender IP is the VIP), or None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    sender_ip = str(ipaddress.IPv4Address(frame[28:32]))
    if sender_ip not in vips:
        return None
    op = struct.unpack("!H", frame[20:22])[0]
    return Claim(at, sender_ip, frame[22:28].hex(":"), op)


def _receive(sock: socket.socket) -> tuple[bytes, float]:
    """One frame and when the kernel received it, on the monotonic clock."""
    frame, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(_TIMESPEC.size))
    now_mono, now_real = time.monotonic(), time.time()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return frame, now_mono - (now_real - (sec + nsec / 1e9))
    return frame, now_mono


class ArpWatch:
    """Ask who-has for `vips` from `dev` in `netns` every `period` s; keep every claim seen."""

    def __init__(
        self,
        netns: str,
        vips: Iterable[str],
        sender_ip: str,
        dev: str = "eth0",
        period: float = 0.002,
    ) -> None:
        self.vips = frozenset(vips)
        self.sender_ip = sender_ip
        self.dev = dev
        self.period = period
        self.claims: list[Claim] = []
        self.probes = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._netns = netns
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ArpWatch:
        self._thread = thread_in_netns(self._netns, self._run, name=f"arpwatch-{self._netns}")
        if not self._ready.wait(10):
            raise RuntimeError(f"ARP watcher in {self._netns} did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((self.dev, ETH_P_ARP))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        mac = sock.getsockname()[4]
        probes = [who_has(mac, self.sender_ip, vip) for vip in sorted(self.vips)]
        self._ready.set()
        with sock:
            next_probe = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    if now >= next_probe:
                        for frame in probes:
                            sock.send(frame)
                        self.probes += 1
                        next_probe = now + self.period
                    readable, _, _ = select.select([sock], [], [], max(0.0, next_probe - now))
                    frame, at = _receive(sock) if readable else (b"", 0.0)
                except OSError:  # the link went down under us (a test moving things): go on
                    self._stop.wait(self.period)
                    continue
                if frame:
                    claim = claim_of(frame, at, self.vips)
                    if claim is not None:
                        self.claims.append(claim)

    # --- reading what was seen -------------------------------------------------------------

    def of(self, vip: str, since: float = 0.0, mac: str | None = None) -> list[Claim]:
        return [
            c for c in list(self.claims) if c.vip == vip and c.at >= since and mac in (None, c.mac)
        ]

    def last(self, vip: str, mac: str, since: float = 0.0) -> float | None:
        """When `mac` last claimed `vip` (after `since`), or None."""
        claims = self.of(vip, since, mac)
        return claims[-1].at if claims else None

    def doubles(self, window: float = 0.01) -> list[tuple[Claim, Claim]]:
        """Pairs of claims for one VIP by two MACs less than `window` s apart: two answerers."""
        found = []
        last_by: dict[tuple[str, str], Claim] = {}
        for claim in sorted(self.claims, key=lambda c: c.at):
            for (vip, mac), other in last_by.items():
                if vip == claim.vip and mac != claim.mac and claim.at - other.at < window:
                    found.append((other, claim))
            last_by[(claim.vip, claim.mac)] = claim
        return found
