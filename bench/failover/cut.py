"""A partition below IP routing, which no socket option can bypass.

The lab's own partition adds blackhole routes inside the node; keepalived's
VRRP adverts still reached the peer through it (its unicast socket is bound
to the interface), so that partition never cut VRRP. Here every neighbour
entry between the node and each peer (both directions) is pinned to a MAC
address no interface on the bridge has: all their IPv4 packets, whatever the
protocol or socket, go nowhere, while ARP and the clients' and backends'
traffic are untouched. This cuts both stacks alike. Deleting the namespaces
(lab teardown) removes the entries too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from haproxy_py.lab.netns import ip, lab_interface

NOWHERE = "02:00:00:00:00:00"  # locally administered, unicast, owned by no interface


@dataclass(frozen=True)
class End:
    """One side of the cut: a namespace and its address on the lab's bridge."""

    netns: str
    address: str


def pairs(node: End, peers: Sequence[End]) -> list[tuple[str, str]]:
    """(namespace, neighbour address) entries that separate `node` from `peers`."""
    entries = []
    for peer in peers:
        entries.append((node.netns, str(lab_interface(peer.address).ip)))
        entries.append((peer.netns, str(lab_interface(node.address).ip)))
    return entries


def cut(node: End, peers: Sequence[End], device: str = "eth0") -> None:
    """Make `node` and each of `peers` unable to reach each other, in both directions."""
    for netns, address in pairs(node, peers):
        ip(
            "neigh",
            "replace",
            address,
            "lladdr",
            NOWHERE,
            "nud",
            "permanent",
            "dev",
            device,
            netns=netns,
        )


def mend(node: End, peers: Sequence[End], device: str = "eth0") -> None:
    """Undo `cut` (the entries are learnt again by ARP)."""
    for netns, address in pairs(node, peers):
        ip("neigh", "del", address, "dev", device, netns=netns, check=False)
