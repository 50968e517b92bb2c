"""Stand-ins for the agent's kernel edges, so its wiring runs without root or namespaces.

`FakeAddressTable` keeps the VIPs in a dict (with a switch that makes every
operation fail, as a deleted interface does) and records grace periods;
`FakeAnnouncer` records which VIPs are being announced. Both follow the
protocols in `agent.effects`.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.netlink import NetlinkFailure


class FakeAddressTable:
    def __init__(self, interface: str = "eth0", index: int = 2) -> None:
        self.interface = interface
        self.index = index
        self.mac = b"\x02\x00\x00\x00\x00\x01"
        self.present: dict[str, float] = {}  # vip -> lifetime it was last set with
        self.graced: list[str] = []
        self.let_out_vips: list[str] = []
        self.failing = False  # every operation fails (a deleted interface)
        self.removal_failing = False  # only removals fail

    @property
    def fence(self) -> FakeAddressTable:
        return self

    def grace(self, vip: str, seconds: float) -> None:
        self.graced.append(vip)

    def let_out(self, vip: str) -> None:
        self.let_out_vips.append(vip)

    def _check(self) -> None:
        if self.failing:
            raise NetlinkFailure(f"interface {self.interface!r}: no such device")

    async def arm(
        self, vip: str, prefixlen: int, lifetime: float, until: float | None = None
    ) -> None:
        self._check()
        self.present[vip] = lifetime

    async def remove(self, vip: str, prefixlen: int) -> bool:
        self._check()
        if self.removal_failing:
            raise NetlinkFailure(f"removing {vip}: operation timed out")
        return self.present.pop(vip, None) is not None

    async def expiring(self) -> set[str]:
        self._check()
        return set(self.present)

    def close(self) -> None:
        pass


class FakeAnnouncer:
    def __init__(self) -> None:
        self.announcing: set[str] = set()
        self.on_sent: Callable[[str], None] = lambda vip: None

    def start(self, vip: str) -> None:
        self.announcing.add(vip)

    def stop(self, vip: str) -> None:
        self.announcing.discard(vip)

    def close(self) -> None:
        self.announcing.clear()
