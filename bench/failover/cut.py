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

import tempfile
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
    """Make `node` and each of `peers` unable to reach each other, in both directions. The
    node's own entries go in first, in one `ip -batch`: from that instant it reaches none of
    them (one `ip` per entry takes a while on a busy machine, and an agent that could still
    reach one etcd member meanwhile would renew its lease there)."""
    _batch(node, peers, f"neigh replace {{}} lladdr {NOWHERE} nud permanent dev {device}")


def mend(node: End, peers: Sequence[End], device: str = "eth0") -> None:
    """Undo `cut` (the entries are learnt again by ARP)."""
    _batch(node, peers, f"neigh del {{}} dev {device}", force=True)


def _batch(node: End, peers: Sequence[End], command: str, force: bool = False) -> None:
    """`command` for every entry of `pairs`, one `ip -batch` per namespace, the node's first."""
    by_netns: dict[str, list[str]] = {}
    for netns, address in pairs(node, peers):
        by_netns.setdefault(netns, []).append(command.format(address))
    for netns, lines in by_netns.items():
        with tempfile.NamedTemporaryFile("w", suffix=".ip") as script:
            script.write("\n".join(lines) + "\n")
            script.flush()
            ip(*(("-force",) if force else ()), "-batch", script.name, netns=netns, check=not force)
