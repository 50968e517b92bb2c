"""`[bgp]` of the node config: this node's BGP speaker (BGP mode), read into typed settings.

    [bgp]
    asn = 64513
    # router_id, address and interface default to [node] address and interface
    peers = [{ name = "tor1", address = "198.18.5.2", asn = 64512 }]
    bfd = { interval_ms = 100, multiplier = 3 }   # or bfd = false
    hold_time = 9
    live_link = "havips"          # the TUN device agent.livelink opens for the proxy
    announce_file = "/run/haproxy-py/bird-announce.conf"
    control_socket = "/run/bird/bird.ctl"
    drain_timeout = 30.0          # a planned withdrawal serves established connections this long

`python -m haproxy_py.cluster.bgp_config --config node.toml` prints the node's
bird.conf (what the Ansible role writes, after `bird -p` accepted it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from haproxy_py.cluster import birdconf
from haproxy_py.cluster.config import parse_node
from haproxy_py.configfile import ConfigError, Table, load

ANNOUNCE_FILE = "/run/haproxy-py/bird-announce.conf"
CONTROL_SOCKET = "/run/bird/bird.ctl"  # Debian's bird.service default


KEYS = frozenset(
    [
        "asn",
        "router_id",
        "address",
        "interface",
        "peers",
        "bfd",
        "hold_time",
        "live_link",
        "announce_file",
        "control_socket",
        "drain_timeout",
    ]
)


@dataclass(frozen=True)
class BgpConfig:
    node: birdconf.NodeBgp
    control_socket: str
    # After a GRACEFUL_SHUTDOWN starts, how long the node serves the connections it has before
    # it tells them to go (1001): as long as the router keeps them on this node, at most.
    drain_timeout: float = 30.0


def parse_bgp(doc: Table) -> BgpConfig | None:
    """`[bgp]`, or None when the section is absent (the node does not speak BGP)."""
    if "bgp" not in doc.data:
        return None
    node = parse_node(doc)
    bgp = doc.table("bgp")
    bgp.reject_unknown(KEYS)
    address = bgp.string("address", node.address)
    if address is None:
        bgp.fail("address", "missing, and [node] address is not set either")
    peers = tuple(
        birdconf.Peer(p.string("name"), p.string("address"), p.integer("asn"))
        for p in bgp.array("peers")
    )
    bfd: birdconf.Bfd | None = None
    if bgp.data.get("bfd", True) is not False:
        b = bgp.table("bfd", {})
        b.reject_unknown({"interval_ms", "multiplier"})
        bfd = birdconf.Bfd(b.integer("interval_ms", 100), b.integer("multiplier", 3))
    settings = birdconf.NodeBgp(
        asn=bgp.integer("asn"),
        router_id=bgp.string("router_id", address),
        address=address,
        interface=bgp.string("interface", node.interface),
        peers=peers,
        live_link=bgp.string("live_link", "havips"),
        announce_file=bgp.string("announce_file", ANNOUNCE_FILE),
        bfd=bfd,
        hold_time=bgp.integer("hold_time", 9),
    )
    try:
        birdconf.check(settings)
    except birdconf.BirdConfigError as exc:
        raise ConfigError(f"{doc.file}: bgp.{exc}") from None
    return BgpConfig(
        settings,
        bgp.string("control_socket", CONTROL_SOCKET),
        bgp.number("drain_timeout", 30.0, min=0.0),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m haproxy_py.cluster.bgp_config", description="Print this node's bird.conf."
    )
    parser.add_argument("--config", required=True, help="the node's TOML config")
    args = parser.parse_args(argv)
    try:
        found = parse_bgp(load(args.config))
    except ConfigError as exc:
        sys.exit(str(exc))
    if found is None:
        sys.exit(f"{args.config}: no [bgp] section: this node does not speak BGP")
    sys.stdout.write(birdconf.node_config(found.node))


if __name__ == "__main__":
    main()
