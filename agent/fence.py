"""The packet fence: this node stops answering for a VIP at a deadline the kernel enforces.

An address's `valid_lft` is checked by one delayed work item that runs at
most once a second, and any address change on the host reschedules it, so
`valid_lft 1` means "gone within about 2 s". The safety argument needs
better: a table of the agent's own in nftables, with a timeout set `alive`
whose element for a VIP is (re)armed only after a successful keepalive.
Element timeouts are checked at packet time, to the jiffy. Once a VIP's
element has expired (or was dropped), for a VIP this agent ever fenced:

* `ip` input, priority -300 (before conntrack): traffic to the VIP is dropped,
  new and established alike;
* `ip` output: traffic from the VIP is dropped, unless it was let out for a
  few seconds (`let_out`, the `leaving` set): the proxy's 1001 close frames and
  FINs to a released VIP's clients, sent once the VIP's next owner holds it.
  Until then the node stays silent on those connections too: TCP keeps what it
  could not send unsent (a dropped segment is not "in flight"), so the 1001
  leaves at once when let out, instead of queueing behind segments sent into a
  void whose acknowledgements go to the new owner (what was sent before the
  fence fell is acknowledged first: a planned release holds the VIP's clients
  before it drops the VIP, `agent.handover`);
* `arp` output: the kernel's ARP replies and requests for the VIP are dropped;
* `netdev` egress on the VIP interface: ARP frames for the VIP sent from
  packet sockets (our own gratuitous ARP), which bypass the `arp` hooks, are
  dropped. This chain is bound to one device: `attach` again when the
  interface is recreated.

A plain `add element` leaves an existing element's expiry alone; every
refresh is `add` (no-op if present) + `delete` + `add` with the new timeout in
one transaction, which also makes the deadline absolute: the element is given
exactly the time left until `until` (monotonic), minus `PRECISION`.

`grace(vip, seconds)` serves planned moves: on the node that has just taken
the VIP, TCP segments to it that are neither SYN nor RST, of flows whose SYN
this node has not seen since (the `opened` set: mid-stream segments of the
connections the old node still owns), are dropped instead of answered with a
RST, so the old node's 1001 close reaches the client first. SYNs pass, so
reconnects land at once. Conntrack cannot tell these flows apart: an entry of an
earlier connection with the same addresses and ports (a client behind NAT, a
port come round again) outlives its socket by seconds to days, and a segment
matching it is not "new".

Sets and elements survive an agent crash: a restarted agent keeps the table
(rules are rewritten, elements kept), so an address left behind stays
fenced. `close` deletes the tables; call it only when no VIP address is left.
"""

from __future__ import annotations

import ipaddress
import math
import time

from agent.nftables import Nft, NftError
from haproxy_py.cluster.timing import FENCE_PRECISION as PRECISION

TABLE = "ha_agent"
FAMILIES = ("ip", "arp", "netdev")  # each has its own copy of the `vips` and `alive` sets
LINGER = 5.0  # seconds that a released VIP may send once let out (1001 close frames, FINs)
OPENED = 10  # seconds a flow opened during a grace period is known as opened (>= any grace)
FLOW = "ip saddr . tcp sport . ip daddr . tcp dport"


class FenceError(Exception):
    """nftables refused a fence change; the message says what and what to do."""


class Expired(FenceError):
    """The deadline passed before the fence could be armed (the agent was frozen or late)."""


def _ms(seconds: float) -> int:
    return max(1, math.floor(seconds * 1000))


def _set_to(family: str, name: str, vip: str, ms: int) -> list[str]:
    """Commands that give `vip` exactly `ms` to live in set `name` (refresh included)."""
    where = f"{family} {TABLE} {name}"
    return [
        f"add element {where} {{ {vip} timeout 1ms }}",
        f"delete element {where} {{ {vip} }}",
        f"add element {where} {{ {vip} timeout {ms}ms }}",
    ]


def _unset(family: str, name: str, vip: str) -> list[str]:
    where = f"{family} {TABLE} {name}"
    return [f"add element {where} {{ {vip} timeout 1ms }}", f"delete element {where} {{ {vip} }}"]


def _schema(interface: str) -> list[str]:
    """The tables, their sets and chains; rules rewritten, existing elements kept."""
    lines: list[str] = []
    for family in FAMILIES:
        lines += [
            f"add table {family} {TABLE}",
            f"add set {family} {TABLE} vips {{ type ipv4_addr; }}",
            f"add set {family} {TABLE} alive {{ type ipv4_addr; flags timeout; }}",
        ]
    ip = f"ip {TABLE}"
    lines += [
        f"add set {ip} leaving {{ type ipv4_addr; flags timeout; }}",
        f"add set {ip} grace {{ type ipv4_addr; flags timeout; }}",
        f"add set {ip} opened {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; "
        f"flags dynamic, timeout; timeout {OPENED}s; size 65536; }}",
    ]
    chains = {
        f"{ip} fence_in": (
            "type filter hook input priority -300; policy accept;",
            "ip daddr @vips ip daddr != @alive drop",
        ),
        f"{ip} fence_out": (
            "type filter hook output priority -300; policy accept;",
            "ip saddr @vips ip saddr != @alive ip saddr != @leaving drop",
        ),
        f"{ip} grace_in": (
            "type filter hook input priority 0; policy accept;",
            f"ip daddr @grace tcp flags & (syn | ack) == syn update @opened {{ {FLOW} }}",
            f"ip daddr @grace tcp flags & (syn | rst) == 0 {FLOW} != @opened counter drop",
        ),
        f"arp {TABLE} fence_out": (
            "type filter hook output priority 0; policy accept;",
            "arp saddr ip @vips arp saddr ip != @alive drop",
        ),
    }
    for chain, (hook, *rules) in chains.items():
        lines += [f"add chain {chain} {{ {hook} }}", f"flush chain {chain}"]
        lines += [f"add rule {chain} {rule}" for rule in rules]
    return lines + _attach(interface)


def _attach(interface: str) -> list[str]:
    """(Re)create the egress chain on `interface`: deleting it first re-binds its hook."""
    chain = f"netdev {TABLE} garp"
    hook = f'type filter hook egress device "{interface}" priority 0; policy accept;'
    return [
        f"add chain {chain} {{ {hook} }}",
        f"delete chain {chain}",
        f"add chain {chain} {{ {hook} }}",
        f"add rule {chain} arp saddr ip @vips arp saddr ip != @alive drop",
    ]


class Fence:
    """This node's nftables fence; every method is one atomic nftables transaction.

    Deadlines are `time.monotonic()` values. `until(vip)` is the deadline last
    armed (-inf when none): the GARP sender checks it before every frame.
    """

    def __init__(self, nft: Nft, interface: str) -> None:
        self._nft = nft
        self.interface = interface
        self._until: dict[str, float] = {}

    @classmethod
    def open(cls, interface: str) -> Fence:
        """Install (or take over) the tables in this thread's network namespace."""
        try:
            nft = Nft()
        except NftError as exc:
            raise FenceError(str(exc)) from None
        fence = cls(nft, interface)
        try:
            fence._run(_schema(interface), "installing the fence")
        except FenceError:
            # a table from another version whose sets differ: start afresh
            fence._run(
                [f"delete table {family} {TABLE}" for family in FAMILIES if fence._has(family)]
                + _schema(interface),
                "replacing the fence",
            )
        return fence

    def attach(self, interface: str) -> None:
        """Bind the GARP egress chain to `interface` (again, after it was recreated)."""
        self._run(_attach(interface), f"binding the fence to {interface}")
        self.interface = interface

    def arm(self, vip: str, until: float) -> None:
        """Let this node answer for `vip` until the monotonic time `until`, and not after.

        Raises Expired, changing nothing, when less than PRECISION is left; and
        when the deadline passed while the change was in flight (a freeze right
        before the syscall), it drops the element again before raising.
        """
        _check(vip)
        left = until - PRECISION - time.monotonic()
        if left < 0.001:
            raise Expired(f"{vip}: fence deadline passed {-left * 1000:.0f} ms ago; not armed")
        lines = [f"add element {family} {TABLE} vips {{ {vip} }}" for family in FAMILIES]
        for family in FAMILIES:
            lines += _set_to(family, "alive", vip, math.floor(left * 1000))
        self._run(lines, f"arming the fence of {vip}")
        self._until[vip] = until
        if time.monotonic() > until - PRECISION:
            self.drop(vip, linger=0.0)
            raise Expired(f"{vip}: fence deadline passed while it was armed; dropped again")

    def drop(self, vip: str, linger: float = 0.0) -> None:
        """Stop answering for `vip` now, silent until `let_out` (or for `linger` seconds)."""
        _check(vip)
        lines = [f"add element {family} {TABLE} vips {{ {vip} }}" for family in FAMILIES]
        for family in FAMILIES:
            lines += _unset(family, "alive", vip)
        if linger > 0:
            lines += _set_to("ip", "leaving", vip, _ms(linger))
        else:
            lines += _unset("ip", "leaving", vip)
        self._until.pop(vip, None)
        self._run(lines, f"fencing {vip}")

    def let_out(self, vip: str, seconds: float = LINGER) -> None:
        """For `seconds`, let traffic from the fenced `vip` leave: the closes of its clients."""
        _check(vip)
        self._run(_set_to("ip", "leaving", vip, _ms(seconds)), f"letting {vip}'s closes out")

    def grace(self, vip: str, seconds: float) -> None:
        """For `seconds` (at most OPENED), drop mid-stream TCP segments to `vip` of flows that
        did not open here since."""
        _check(vip)
        seconds = min(seconds, OPENED)
        self._run(_set_to("ip", "grace", vip, _ms(seconds)), f"grace period for {vip}")

    def until(self, vip: str) -> float:
        return self._until.get(vip, -math.inf)

    def close(self, remove: bool) -> None:
        """Release the library context; with `remove`, delete the tables first (clean stop).
        Closing again does nothing."""
        if self._nft.closed:
            return
        try:
            if remove:  # `add` first: deleting a table that is already gone is no error
                lines = [
                    f"{verb} table {family} {TABLE}"
                    for family in FAMILIES
                    for verb in ("add", "delete")
                ]
                self._run(lines, "removing the fence")
        finally:
            self._nft.close()

    def _has(self, family: str) -> bool:
        try:
            self._nft.run(f"list table {family} {TABLE}")
        except NftError:
            return False
        return True

    def _run(self, lines: list[str], what: str) -> None:
        try:
            self._nft.run("\n".join(lines) + "\n")
        except NftError as exc:
            hint = "; run ha-agent as root or with CAP_NET_ADMIN" if "permitted" in str(exc) else ""
            raise FenceError(f"{what}: {exc}{hint}") from None


def _check(vip: str) -> None:
    """Only a plain IPv4 address may reach the nft command buffer."""
    try:
        ipaddress.IPv4Address(vip)
    except ValueError:
        raise FenceError(f"{vip!r} is not an IPv4 address; VIPs are plain IPv4 addresses") from None
