"""Parsing the `[node]` section (the other cluster sections join this module)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from haproxy_py.configfile import Table


@dataclass(frozen=True)
class NodeConfig:
    """Who this node is: its name (also the proxy's `Via` name), address and VIP interface."""

    name: str
    address: str | None
    interface: str
    priority: int


def parse_node(doc: Table) -> NodeConfig:
    node = doc.table("node", {})
    node.reject_unknown({"name", "address", "interface", "priority"})
    name = node.string("name", socket.gethostname())
    if not name or "/" in name:
        node.fail("name", f"expected a non-empty name without '/', got {name!r}")
    address = node.string("address", None)
    if address is not None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            node.fail("address", f"expected an IP address, got {address!r}")
    priority = node.integer("priority", 100, min=0)
    if priority > 255:
        node.fail("priority", f"expected an integer from 0 to 255, got {priority}")
    return NodeConfig(
        name=name, address=address, interface=node.string("interface", "eth0"), priority=priority
    )
