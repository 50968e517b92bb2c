"""Which addresses an agent may ever hold: its own, local list of VIPs (pure).

The list comes from the node's own TOML (`[agent] allowed_vips`, written by
Ansible and the lab from the inventory), never from etcd: whoever can write
`vips/` (the controller, or a stolen credential) can then at worst move the
cluster's VIPs between nodes, never make a node announce a backend's, the
gateway's or an etcd member's address. Entries are IPv4 addresses or prefixes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network


class AllowListError(ValueError):
    """An entry that is not an IPv4 address or prefix; the message names it."""


@dataclass(frozen=True)
class AllowList:
    """IPv4 addresses and prefixes; `allows(vip)` for a VIP given by its key."""

    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.IPv4Network(entry.strip(), strict=True))
            except ValueError as exc:
                raise AllowListError(
                    f"{entry!r} is not an IPv4 address or prefix ({exc})"
                ) from None
        return cls(tuple(networks))

    def allows(self, vip: str) -> bool:
        try:
            address = ipaddress.IPv4Address(vip)
        except ValueError:
            return False  # a key name that is no address at all
        return any(address in network for network in self.networks)

    def covering(self, addresses: Iterable[str]) -> list[str]:
        """Those of `addresses` the list would allow (config checks: the node's own
        address and the etcd members must never be among them)."""
        return [a for a in addresses if self.allows(a)]
