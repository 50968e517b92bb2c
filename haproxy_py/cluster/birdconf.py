"""BIRD 2 configuration for BGP mode, as text (pure: no I/O, no clock).

Why BIRD 2 (Debian `bird2`) and not FRR or GoBGP: one small daemon (FRR is
bgpd + zebra + bfdd + vtysh), BFD built in (`protocol bfd`), a plain-text
control socket whose line protocol the agent speaks itself (no `birdc`
process per change, no gRPC stack as GoBGP needs), `bird -p` to validate a
file before it is used, and `configure` that re-reads the file and restarts
only the protocols whose configuration changed: measured here, a reload that
adds or removes VIP routes takes 1.6 ms and leaves every BGP session's uptime
as it was.

How a node announces (the node side of `agent.bgp`): each VIP is a static
route through the node's *live link*, a TUN device that exists only while the
proxy process lives (`agent.livelink` opens it and execs the proxy, which
inherits it). The static protocol uses `check link`, so BIRD announces a VIP
only while that link has carrier (the proxy lives) and is administratively up
(the agent says the node can serve). Three levers, each on its own clock:

    the VIP list (rare)       the announce file + `configure` over the socket
    can serve (agent, 0.1 s)  the live link's admin state, over netlink
    proxy died (kernel, ms)   the TUN device disappears with the proxy's last fd

so a dead or frozen agent withdraws nothing by itself, yet a proxy that dies
while the agent is away is still withdrawn within milliseconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

STATIC_PROTOCOL = "vips"  # the static protocol whose routes a node announces


# BIRD waits 60-300 s after a session error (a BFD down counts) and 120 s between connection
# attempts by default: a node back from a cut link would stay out for minutes.
RECONNECT = ("  error wait time 1, 10;", "  connect retry time 2;")


class BirdConfigError(ValueError):
    """Settings that cannot make a valid BIRD configuration; the message names the setting."""


@dataclass(frozen=True)
class Peer:
    """A BGP neighbour: its address and AS number; `name` is BIRD's protocol name for it."""

    name: str
    address: str
    asn: int


@dataclass(frozen=True)
class Bfd:
    """BFD timers: `interval_ms` for both directions, down after `multiplier` missed packets."""

    interval_ms: int = 100
    multiplier: int = 3


@dataclass(frozen=True)
class NodeBgp:
    """One node's BGP settings (what the Ansible role takes as variables)."""

    asn: int
    router_id: str
    address: str  # the node's own address towards its peers
    interface: str  # where its peers are (BFD runs there)
    peers: tuple[Peer, ...]
    live_link: str  # the TUN device the proxy holds (`agent.livelink`)
    announce_file: str  # the static routes the agent writes
    bfd: Bfd | None = Bfd()
    hold_time: int = 9  # BGP's own detection when BFD is off or lost; BIRD's default is 240


def check(settings: NodeBgp) -> None:
    """Refuse settings BIRD would refuse later, with the setting's name in the message."""
    _asn("asn", settings.asn)
    _ipv4("router_id", settings.router_id)
    _ipv4("address", settings.address)
    if not settings.peers:
        raise BirdConfigError("peers: at least one BGP peer is needed")
    for peer in settings.peers:
        _name(f"peers.{peer.name}", peer.name)
        _ipv4(f"peers.{peer.name}.address", peer.address)
        _asn(f"peers.{peer.name}.asn", peer.asn)
    if not 1 <= len(settings.live_link) <= 15:
        raise BirdConfigError(
            f"live_link: an interface name of 1-15 characters, got {settings.live_link!r}"
        )
    if settings.bfd is not None and not (
        10 <= settings.bfd.interval_ms <= 10_000 and 1 <= settings.bfd.multiplier <= 255
    ):
        raise BirdConfigError(f"bfd: interval 10-10000 ms and multiplier 1-255, got {settings.bfd}")
    if not 3 <= settings.hold_time <= 65535:
        raise BirdConfigError(f"hold_time: 3-65535 s, got {settings.hold_time}")


def node_config(settings: NodeBgp) -> str:
    """bird.conf for a proxy node: announce the VIP routes of the announce file to every peer."""
    check(settings)
    bfd = settings.bfd is not None
    lines = [
        "# Written by haproxy-py for BGP mode; the agent edits only the announce file.",
        f"router id {settings.router_id};",
        "protocol device { scan time 10; }",
        *(bfd_protocol(settings.interface, settings.bfd) if settings.bfd else []),
        f"protocol static {STATIC_PROTOCOL} {{",
        "  ipv4;",
        "  check link;  # no carrier on the live link (the proxy died): routes withdrawn",
        f'  include "{settings.announce_file}";',
        "}",
    ]
    for peer in settings.peers:
        lines += [
            f"protocol bgp {peer.name} {{",
            f"  local {settings.address} as {settings.asn};",
            f"  neighbor {peer.address} as {peer.asn};",
            f"  hold time {settings.hold_time};",
            *RECONNECT,
            *(["  bfd on;"] if bfd else []),
            "  ipv4 {",
            "    import none;",
            f'    export where proto = "{STATIC_PROTOCOL}";',
            "    next hop self;",
            "  };",
            "}",
        ]
    return "\n".join(lines) + "\n"


GRACEFUL_SHUTDOWN = "(65535, 0)"  # RFC 8326's well-known community


def announce_file(vips: Iterable[str], live_link: str, leaving: Iterable[str] = ()) -> str:
    """The static routes for `vips` (sorted, so equal sets give equal files); those in
    `leaving` carry RFC 8326's GRACEFUL_SHUTDOWN community: a planned withdrawal is coming,
    the router should prefer other paths now."""
    tagged = set(leaving)
    routes = [
        f'route {_ipv4("vip", v)}/32 via "{live_link}"'
        + (f" {{ bgp_community.add({GRACEFUL_SHUTDOWN}); }};" if v in tagged else ";")
        for v in sorted(set(vips) | tagged)
    ]
    return "\n".join(["# Written by ha-agent: the VIPs this node may announce.", *routes]) + "\n"


def graceful_shutdown_import() -> str:
    """An upstream router's import filter honouring RFC 8326 (the lab router uses it): a path
    tagged GRACEFUL_SHUTDOWN gets local preference 0, so ECMP leaves it out while another
    path exists and keeps it when it is the last one."""
    return (
        f"import filter {{ if {GRACEFUL_SHUTDOWN} ~ bgp_community then bgp_local_pref = 0; "
        "accept; };"
    )


def bfd_protocol(interface: str, bfd: Bfd) -> list[str]:
    return [
        "protocol bfd {",
        f'  interface "{interface}" {{',
        f"    interval {bfd.interval_ms} ms; multiplier {bfd.multiplier};",
        "  };",
        "}",
    ]


def _asn(key: str, value: int) -> None:
    if not 1 <= value <= 4_294_967_295:
        raise BirdConfigError(f"{key}: an AS number 1-4294967295, got {value}")


def _ipv4(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise BirdConfigError(f"{key}: an IPv4 address, got {value!r}") from None


def _name(key: str, value: str) -> None:
    if not value or not value[0].isalpha() or not value.replace("_", "").isalnum():
        raise BirdConfigError(
            f"{key}: letters, digits and '_', starting with a letter, got {value!r}"
        )
