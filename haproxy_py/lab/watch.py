"""The no-two-owners watcher: samples every node namespace's IPv4 addresses every few ms.

One rtnetlink socket per namespace (made inside it, see `netns.in_netns`)
answers an address dump in microseconds, so a sweep over all nodes is far
shorter than any hand-over. A sweep reads the namespaces one after another;
when a VIP shows up in two of them, the earlier ones are read again: if they
still hold it, both held it at the instant the later one was read, and the
watcher records a violation (a VIP moving between the two reads is not one).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from haproxy_py.lab.netns import in_netns

_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_NLMSG_DONE = 3
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_HEADER = struct.Struct("=LHHLL")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _netlink_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    sock.bind((0, 0))
    return sock


def parse_addresses(data: bytes) -> tuple[set[str], bool]:
    """IPv4 addresses in a chunk of an RTM_GETADDR dump, and whether the dump is done."""
    found: set[str] = set()
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind in (_NLMSG_DONE, _NLMSG_ERROR):
            return found, True
        if kind == _RTM_NEWADDR:
            attrs = offset + _HEADER.size + _IFADDRMSG.size
            local = address = None
            while attrs + _RTATTR.size <= offset + length:
                alen, atype = _RTATTR.unpack_from(data, attrs)
                if alen < _RTATTR.size:
                    break
                value = data[attrs + _RTATTR.size : attrs + alen]
                if atype == _IFA_LOCAL and len(value) == 4:
                    local = socket.inet_ntoa(value)
                elif atype == _IFA_ADDRESS and len(value) == 4:
                    address = socket.inet_ntoa(value)
                attrs += (alen + 3) & ~3
            if local or address:
                found.add(local or address or "")
        offset += (length + 3) & ~3
    return found, False


class AddressReader:
    """Dumps the IPv4 addresses of one namespace through a netlink socket made inside it."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.sock = in_netns(netns, _netlink_socket)
        self.seq = 0

    def addresses(self) -> set[str]:
        self.seq += 1
        body = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        flags = _NLM_F_REQUEST | _NLM_F_DUMP
        self.sock.send(
            _HEADER.pack(_HEADER.size + len(body), _RTM_GETADDR, flags, self.seq, 0) + body
        )
        found: set[str] = set()
        done = False
        while not done:
            chunk, done = parse_addresses(self.sock.recv(65536))
            found |= chunk
        return found

    def close(self) -> None:
        self.sock.close()


@dataclass
class Violation:
    at: float  # time.time()
    vip: str
    nodes: tuple[str, ...]


@dataclass
class Watch:
    """What the watcher saw: violations, sweeps, and every change of a VIP's holders."""

    violations: list[Violation] = field(default_factory=list)
    sweeps: int = 0
    changes: list[tuple[float, str, tuple[str, ...]]] = field(default_factory=list)
    longest_sweep: float = 0.0


class TwoOwnersWatcher:
    """Background thread sampling `nodes` (name -> netns) every `interval` seconds."""

    def __init__(
        self, nodes: Mapping[str, str], vips: set[str] | frozenset[str], interval: float = 0.003
    ) -> None:
        self.vips = frozenset(vips)
        self.interval = interval
        self.readers = {name: AddressReader(ns) for name, ns in nodes.items()}
        self.result = Watch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="two-owners", daemon=True)

    def __enter__(self) -> TwoOwnersWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Watch:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for reader in self.readers.values():
            reader.close()
        return self.result

    def _sweep(self) -> dict[str, tuple[str, ...]]:
        holders: dict[str, list[str]] = {}
        for name, reader in self.readers.items():
            for vip in reader.addresses() & self.vips:
                earlier = holders.setdefault(vip, [])
                if earlier:
                    # Confirm: do the earlier holders still have it after this one was read?
                    still = [n for n in earlier if vip in self.readers[n].addresses()]
                    if still:
                        self.result.violations.append(Violation(time.time(), vip, (*still, name)))
                earlier.append(name)
        return {vip: tuple(sorted(names)) for vip, names in holders.items()}

    def _run(self) -> None:
        last: dict[str, tuple[str, ...]] = {}
        while not self._stop.is_set():
            started = time.monotonic()
            now = self._sweep()
            self.result.sweeps += 1
            self.result.longest_sweep = max(self.result.longest_sweep, time.monotonic() - started)
            for vip in self.vips:
                holders = now.get(vip, ())
                if holders != last.get(vip, ()):
                    self.result.changes.append((time.time(), vip, holders))
            last = now
            self._stop.wait(self.interval)
