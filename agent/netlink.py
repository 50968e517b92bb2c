"""VIP addresses on the node's interface, over netlink (pyroute2), never by running `ip`.

Every VIP is fenced first (`agent.fence`: nftables drops its traffic and ARP
at a deadline the kernel enforces to the millisecond) and then set with a
finite `valid_lft`/`preferred_lft` (IFA_CACHEINFO), the second line: the
kernel deletes the address itself, within about a second of its lifetime,
when the agent stops re-arming it. Re-arming is an RTM_NEWADDR with
NLM_F_REPLACE, which re-creates an address the kernel already dropped: so
every arm checks its "not after" deadline against the monotonic clock right
before the syscall. Works in whatever network namespace the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import math
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.fence import Fence, FenceError

INFINITY = 0xFFFFFFFF  # the kernel's "forever" lifetime
LIMIT = 1.0  # seconds for the kernel to answer one request (it takes well under 1 ms)
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


class NetlinkFailure(Exception):
    """A netlink operation failed; the message says what and what to do."""


def missing_capabilities(status: str | None = None) -> list[str]:
    """Which of CAP_NET_ADMIN (addresses) and CAP_NET_RAW (GARP) this process lacks."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    effective = 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    names = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
    return [name for bit, name in names.items() if not effective & (1 << bit)]


def _explain(exc: NetlinkError, what: str) -> NetlinkFailure:
    if exc.code == errno.EPERM:
        return NetlinkFailure(f"{what}: not permitted; run ha-agent as root or with CAP_NET_ADMIN")
    return NetlinkFailure(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


@contextlib.asynccontextmanager
async def _bounded(what: str) -> AsyncIterator[None]:
    """A request the kernel does not answer must not stall the agent's actor."""
    try:
        async with asyncio.timeout(LIMIT):
            yield
    except TimeoutError:
        raise NetlinkFailure(f"{what}: no answer from the kernel in {LIMIT:g} s") from None


class Addresses:
    """The IPv4 VIPs on one interface of the current network namespace."""

    def __init__(
        self, ipr: AsyncIPRoute, interface: str, index: int, mac: bytes, fence: Fence
    ) -> None:
        self._ipr = ipr
        self.interface = interface
        self.index = index
        self.mac = mac
        self.fence = fence
        self._armed: set[str] = set()  # set here and not yet seen gone: the fence must stay

    @classmethod
    async def open(cls, interface: str) -> Addresses:
        ipr = AsyncIPRoute()
        try:
            links = [link async for link in await ipr.link("dump")]
        except NetlinkError as exc:
            ipr.close()
            raise _explain(exc, "listing interfaces") from None
        for link in links:
            if link.get("ifname") == interface:
                mac = link.get("address") or "00:00:00:00:00:00"
                try:
                    fence = Fence.open(interface)
                except FenceError as exc:
                    ipr.close()
                    raise NetlinkFailure(f"installing the VIP fence: {exc}") from None
                index = int(link["index"])
                return cls(ipr, interface, index, bytes.fromhex(mac.replace(":", "")), fence)
        ipr.close()
        names = ", ".join(sorted(str(link.get("ifname")) for link in links))
        raise NetlinkFailure(
            f"interface {interface!r} not found in this network namespace (have: {names}); "
            "set [node] interface"
        )

    def close(self) -> None:
        """The fence's tables go too, unless an address this agent set may still be there."""
        try:
            self.fence.close(remove=not self._armed)
        finally:
            self._ipr.close()

    def grace(self, vip: str, seconds: float) -> None:
        """For `seconds`, drop mid-stream TCP segments to `vip` of flows not opened here since.

        For a VIP this node has just taken in a planned move: the old node's
        1001 close reaches its clients before this node could answer them with
        a RST. SYNs pass, so their reconnects land here at once.
        """
        try:
            self.fence.grace(vip, seconds)
        except FenceError as exc:
            raise NetlinkFailure(f"grace period for {vip}: {exc}") from None

    def until(self, vip: str) -> float:
        """The monotonic time after which this node must not answer for `vip` (-inf: now)."""
        return self.fence.until(vip)

    async def arm(
        self, vip: str, prefixlen: int, lifetime: float, until: float | None = None
    ) -> None:
        """Fence `vip` to `until`, then add the address or re-arm it with `lifetime` s to live.

        `until` is the monotonic time by which this node must have stopped
        answering for the VIP (default: `lifetime` from now). Past it, nothing
        is done and NetlinkFailure says so: a re-arm decided before a freeze
        never runs after its deadline. A freeze between that check and the
        syscall cannot be prevented (a replace re-creates an address the kernel
        dropped meanwhile); the fence keeps such an address silent, and it is
        removed as soon as the agent runs again.
        """
        what = f"setting {vip}/{prefixlen} on {self.interface}"
        if until is None:
            until = time.monotonic() + lifetime
        try:
            self.fence.arm(vip, until)
        except FenceError as exc:
            raise NetlinkFailure(f"{what}: {exc}") from None
        left = until - time.monotonic()
        if left <= 0:  # not after: checked right before the syscall
            raise NetlinkFailure(f"{what}: its deadline passed {-left * 1000:.0f} ms ago; not set")
        valid = max(1, math.floor(min(lifetime, left)))
        self._armed.add(vip)
        failure: NetlinkFailure | None = None
        try:
            async with _bounded(what):
                await self._ipr.addr(
                    "replace",
                    index=self.index,
                    address=vip,
                    prefixlen=prefixlen,
                    valid_lft=valid,
                    preferred_lft=valid,
                )
        except NetlinkError as exc:
            failure = _explain(exc, what)
        except NetlinkFailure as exc:
            failure = exc
        late = time.monotonic() - until
        if late > 0:  # stopped between the check and the syscall: set after its deadline
            with contextlib.suppress(NetlinkFailure):
                await self.remove(vip, prefixlen)
            raise NetlinkFailure(
                f"{what}: the kernel may have set it {late * 1000:.0f} ms after its deadline "
                "(the agent was stopped or starved); removed again"
            )
        if failure is not None:
            raise failure

    async def remove(self, vip: str, prefixlen: int) -> bool:
        """Fence `vip` at once, then delete the address; False when it was not there."""
        what = f"removing {vip}/{prefixlen} from {self.interface}"
        try:
            self.fence.drop(vip)
        except FenceError as exc:
            raise NetlinkFailure(f"{what}: {exc}") from None
        try:
            async with _bounded(what):
                await self._ipr.addr("del", index=self.index, address=vip, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                self._armed.discard(vip)
                return False
            raise _explain(exc, what) from None
        self._armed.discard(vip)
        return True

    async def expiring(self) -> set[str]:
        """IPv4 addresses on the interface with a finite lifetime (the only kind VIPs are)."""
        what = f"listing addresses of {self.interface}"
        found = set()
        try:
            async with _bounded(what):
                async for msg in await self._ipr.addr(
                    "dump", index=self.index, family=socket.AF_INET
                ):
                    if msg.get("index") != self.index:
                        continue
                    cache = msg.get("cacheinfo")
                    valid = cache.get("ifa_valid") if cache else INFINITY
                    if valid != INFINITY:
                        found.add(str(ipaddress.IPv4Address(msg.get("address"))))
        except NetlinkError as exc:
            raise _explain(exc, what) from None
        self._armed &= found
        return found
