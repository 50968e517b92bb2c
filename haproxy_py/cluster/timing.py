"""The timing rule that keeps a VIP from being answered by two nodes (pure: no I/O, no clock).

One keepalive, on the agent's monotonic clock, `s` = when it was sent:

    s                     the keepalive leaves; etcd renews the lease when it arrives,
                          so the lease cannot end before s + lease_ttl
    s + keepalive_timeout the answer is ignored after this
    r                     a VIP armed (added or re-armed) on the strength of this keepalive:
                          no later than s + rearm_window (W), checked by the core
                          against the clock for every arm (`latest_rearm`)
    F = r + address_lifetime + kernel_slack
                          the fence falls: nftables drops ARP, our GARP and traffic for the
                          VIP, checked at packet time (`agent.fence`, FENCE_PRECISION)
    F + KERNEL_FUZZ       the address itself is gone (valid_lft: the second line, silent)
    s + lease_ttl         the earliest the lease can expire and the VIP be assigned elsewhere

So every fence falls by s + W + address_lifetime + kernel_slack (`fence_deadline`) for
the last keepalive s that etcd renewed. Every address add and GARP frame re-checks F
against the clock right before its syscall, so an arm delayed by a freeze never runs late.

Safety, lease path: the fence falls `fence_margin` before etcd can expire the lease:

    keepalive_timeout + address_lifetime + kernel_slack + fence_margin <= lease_ttl
    rearm_window <= keepalive_timeout

So after an owner's lease has expired the controller may assign its VIPs at
once (`reassign_delay` is 0), and may even revoke a lease that has provably run
out rather than wait for etcd's 500 ms expiry sweep (`controller.expiry`): etcd
renews no expired lease.

Safety, revoke path (`controller.probes`: a lease kept alive by a stolen key, or an owner
cut off from the controllers only): every keepalive etcd renewed was sent before etcd
applied the revoke, and none after it renews, so from the moment the controller has the
revoke's answer the owner's fence falls within

    embargo = rearm_window + address_lifetime + kernel_slack      (`fence_deadline`)

and the controllers keep that owner's VIPs from every other node that long. The revoker
writes a `revoked/` marker first, and whoever assigns counts the embargo from when it first
read the lease gone, which is after the revoke (`controller.embargo`), so it holds whoever
revoked and whoever leads next. The revoke itself comes after `probe_limit` (two keepalive
periods, three probes in a row) of failed probes; node loss with a stolen key therefore
takes about a probe period + probe_limit + embargo (default 0.25 + 0.5 + 1.3 s; fast 0.125
+ 0.25 + 0.8 s), also when the leading controller was lost with the node: a standby probes
the leader as well and deposes it in the same round (`controller.probes`).

Safety, lapse path (`lapse`, the fast profile): the agent asks etcd for lease_ttl + 1 s
but counts on lease_ttl only. Once lease_ttl has passed since the send of its freshest
renewed keepalive it gives the lease up itself (`agent.arming`: a keepalive answered later
renews nothing it acts on; it registers under a new lease), and its failsafe is off, since
no round may keep a VIP past that point. etcd's `LeaseTimeToLive` reads whole seconds,
truncated, so a reading of 0 at etcd's time `t` means the last renewal `u` (and every
renewed send `s <= u`) came more than granted - 1 s before `t`:

    lapse:   s + lease_ttl <= u + (granted - 1) < t     needs   lease_ttl + 1 <= granted
    fence:   s + fence_deadline + fence_margin <= s + lease_ttl      (the first rule)

So at that reading the agent has already lapsed and its fence fell `fence_margin` before,
and no renewal etcd applies afterwards is acted on: the controller revokes the lease on
its first 0 reading and assigns at once (`lapse_proven`, `controller.expiry`), about one
second after the owner's last keepalive, where etcd's own sweep would take up to 0.5 s more.
The owner declares `lapse` in its node record, so the controller proves nothing from a
reading of an owner that does not lapse. A lapsed agent revokes the old lease itself when
etcd answers (its fences fell before the lapse). Leading controllers lapse the same way
(`[controller] lapse`), so a standby proves a lost leader's lease as fast. For a lapsing
owner the revoke path above waits until the owner has failed its probes for granted - 1
s: before that a reading of 1 s left may just be a dead node's lease running out, which
this path moves with no embargo; after it, such a reading proves a renewal since.

Availability: one keepalive that fails only after its whole timeout, then a
retry, must still land before the fence falls:

    keepalive_interval + keepalive_timeout <= address_lifetime

A keepalive answered later than `rearm_window` but within its timeout keeps the lease and
arms nothing: the agent sends the next one at once.

etcd: a lease TTL under etcd's minimum (1.5 election timeouts, rounded up to a
second) is silently raised; the failover would then be slower than configured. With
`lapse`, the TTL asked for (`granted_ttl`) is checked.

Without the fence, the address alone (kernel check once a second, rescheduled by any
address change on the host) would need the controller to wait `unfenced_delay`.

Profiles (`PROFILES`) are the named sets an operator picks (`hactl lab up
--profile`, Ansible's `cluster_timing_profile`): `default` runs on etcd's own
raft timers; `fast` halves the leases for node loss in about 1.1 s, and needs
etcd's election timeout at 500 ms (for the controllers' 1 s leases): twice the
keepalives and raft heartbeats, and an etcd call slower than 0.5 s (a loaded or distant
member) already costs a node its VIPs or a controller its leadership. Its agents lapse
(above): a node lost is seen one second after its last keepalive, and an etcd outage
longer than a second costs every node its VIPs (no failsafe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# nftables keeps element timeouts in jiffies rounded up (10 ms at HZ=100, the coarsest):
# the fence shortens every element by this much, so it is down by its deadline.
FENCE_PRECISION = 0.01
# The core removes an address this long before its fence deadline (its tick is 0.05 s).
FENCE_SLACK = 0.05
# check_lifetime() in net/ipv4/devinet.c runs at most once per ADDRCONF_TIMER_FUZZ_MAX (1 s)
# and rounds its next run up to a whole second when that costs less than HZ/4: an address
# can outlive its valid_lft by up to 1.25 s.
KERNEL_FUZZ = 1.25
DEFAULT_FENCE_MARGIN = 0.2
# A keepalive slower than this arms nothing (etcd answers in milliseconds; one this slow is
# treated like a failed one for the fence). It bounds how long a cut-off owner's fence can
# outlast a revoke of its lease: the controller's embargo is this plus one fence lifetime.
REARM_WINDOW = 0.25
ETCD_ELECTION_TIMEOUT = 1.0  # etcd's defaults
ETCD_HEARTBEAT_INTERVAL = 0.1
EPSILON = 1e-9


@dataclass(frozen=True)
class Timing:
    """Lease, keepalive and fence timing, in seconds; `problems` proves it safe.

    `keepalive_timeout` 0 means: the longest that both rules allow, at most
    twice the interval; `rearm_window` 0: REARM_WINDOW, at most the keepalive timeout.
    `lapse`: the agent gives its lease up itself `lease_ttl` after its last renewed send,
    and asks etcd for one second more (`granted_ttl`), so a reading can prove it did.
    """

    lease_ttl: int
    keepalive_interval: float
    address_lifetime: float
    fence_margin: float
    kernel_slack: float = FENCE_SLACK
    keepalive_timeout: float = 0.0
    rearm_window: float = 0.0
    etcd_election_timeout: float = ETCD_ELECTION_TIMEOUT
    etcd_heartbeat_interval: float = ETCD_HEARTBEAT_INTERVAL
    lapse: bool = False

    def __post_init__(self) -> None:
        if self.keepalive_timeout <= 0:
            allowed = min(
                2 * self.keepalive_interval,
                self.address_lifetime - self.keepalive_interval,
                _lease_room(self),
            )
            timeout = allowed if allowed > 0 else self.keepalive_interval  # `problems` says why
            object.__setattr__(self, "keepalive_timeout", timeout)
        if self.rearm_window <= 0:
            object.__setattr__(self, "rearm_window", min(REARM_WINDOW, self.keepalive_timeout))


def _lease_room(t: Timing) -> float:
    """How late after its send a keepalive may arm a fence that still falls `fence_margin`
    before the lease can end."""
    return t.lease_ttl - t.fence_margin - t.address_lifetime - t.kernel_slack


def latest_rearm(t: Timing) -> float:
    """How long after a keepalive was sent its success may still arm a VIP (the core's rule)."""
    return min(t.rearm_window, _lease_room(t))


def fence_deadline(t: Timing) -> float:
    """The latest the fence falls, counted from the send of the last keepalive etcd renewed;
    after a revoke, the controller's embargo (counted from the revoke's answer)."""
    return latest_rearm(t) + t.address_lifetime + t.kernel_slack


def granted_ttl(t: Timing) -> int:
    """The TTL the agent asks etcd for: one second more than it counts on when it lapses."""
    return t.lease_ttl + 1 if t.lapse else t.lease_ttl


def lapse_proven(lapse: float, granted: int) -> bool:
    """A lease of `granted` s whose owner lapses `lapse` s after its last renewed send
    (0: it does not) has provably lapsed, its fence fallen, once it reads 0 s left."""
    return 0 < lapse <= granted - 1


def etcd_min_ttl(election_timeout: float, heartbeat_interval: float) -> int:
    """etcd 3.4's minimum lease TTL: ceil(3 * election ticks / 2 (integer) * heartbeat)."""
    ticks = round(election_timeout / heartbeat_interval)
    return math.ceil((3 * ticks // 2) * heartbeat_interval - EPSILON)


def reassign_delay(t: Timing) -> float:
    """Seconds the controller waits, after an owner's lease expired, before assigning its VIPs
    elsewhere: the fence fell by s + fence_deadline, the lease ended at s + lease_ttl or later."""
    return max(0.0, round(fence_deadline(t) - t.lease_ttl, 9))


def unfenced_delay(t: Timing) -> float:
    """The same wait if only the address lifetime (valid_lft, whole seconds) fenced the VIP."""
    valid_lft = max(1, math.ceil(t.address_lifetime))
    return max(0.0, latest_rearm(t) + valid_lft + KERNEL_FUZZ - t.lease_ttl)


def failsafe_round(t: Timing) -> float:
    """How long a failsafe round may take (`agent.failsafe`): as long as a keepalive may, so a
    refresh at its end meets the same fence as a keepalive answered just in time."""
    return t.keepalive_timeout


def failsafe_promise(t: Timing) -> float:
    """How long a peer arms no VIP after vouching for a holder in a failsafe round.

    The holder counts it from when it sent the round (before any peer received it) and
    refreshes only within `failsafe_round`, so its fence falls `fence_margin` before the
    earliest promise ends: round + address_lifetime + kernel_slack + fence_margin, which the
    first rule keeps within one lease TTL.
    """
    return failsafe_round(t) + t.address_lifetime + t.kernel_slack + t.fence_margin


def failsafe_after(t: Timing) -> float:
    """etcd counts as unreachable once no call has succeeded for this long: one and a half
    keepalive periods, so a holder starts asking its peers while its fence has most of an
    address lifetime left, and two nodes' views differ by at most one keepalive period."""
    return 1.5 * t.keepalive_interval


def probe_limit(t: Timing) -> float:
    """How long a VIP owner may fail the controller's authenticated probes before its lease is
    revoked (`controller.probes`): two keepalive periods, three probes in a row (probes run
    every keepalive period), so one lost probe or a short stall never moves a VIP. Shorter
    than a fence lifetime because the embargo that follows the revoke adds one; a healthy
    owner cut off from every controller for this long loses its VIPs."""
    return 2 * t.keepalive_interval


def problems(t: Timing) -> list[str]:
    """Every rule this timing breaks, each with its numbers and what to change; [] when safe."""
    found = []
    need = t.keepalive_timeout + t.address_lifetime + t.kernel_slack + t.fence_margin
    if need > t.lease_ttl + EPSILON:
        found.append(
            f"keepalive_timeout ({t.keepalive_timeout:g}) + address_lifetime "
            f"({t.address_lifetime:g}) + fence slack ({t.kernel_slack:g}) + fence_margin "
            f"({t.fence_margin:g}) = {need:g} s exceeds lease_ttl ({t.lease_ttl} s): the fence "
            "could outlive the lease; raise lease_ttl or lower the others"
        )
    if t.rearm_window > t.keepalive_timeout + EPSILON:
        found.append(
            f"rearm_window ({t.rearm_window:g}) exceeds keepalive_timeout "
            f"({t.keepalive_timeout:g}): an answer the agent no longer waits for cannot arm; "
            "lower rearm_window"
        )
    gap = t.keepalive_interval + t.keepalive_timeout
    if gap > t.address_lifetime + EPSILON:
        found.append(
            f"keepalive_interval ({t.keepalive_interval:g}) + keepalive_timeout "
            f"({t.keepalive_timeout:g}) = {gap:g} s exceeds address_lifetime "
            f"({t.address_lifetime:g} s): one slow keepalive would let the VIP lapse; lower "
            "keepalive_interval or keepalive_timeout, or raise address_lifetime"
        )
    floor = etcd_min_ttl(t.etcd_election_timeout, t.etcd_heartbeat_interval)
    if granted_ttl(t) < floor:
        asked = f"{t.lease_ttl} s + 1 s for lapse" if t.lapse else f"{t.lease_ttl} s"
        found.append(
            f"lease_ttl ({asked}) is below etcd's minimum lease TTL ({floor} s for "
            f"election timeout {t.etcd_election_timeout:g} s, heartbeat "
            f"{t.etcd_heartbeat_interval:g} s): etcd would grant {floor} s; raise lease_ttl, or "
            "lower etcd's --election-timeout and set etcd_election_timeout to match"
        )
    return found


@dataclass(frozen=True)
class Profile:
    """One named timing: the agents' and controllers' lease TTL, etcd's raft timers it
    needs (`--heartbeat-interval`, `--election-timeout`), and the bound on every etcd call
    (`[etcd] timeout`: a controller keepalive plus it must fit in the controller's TTL)."""

    name: str
    lease_ttl: int
    etcd_heartbeat_interval: float
    etcd_election_timeout: float
    etcd_timeout: float
    lapse: bool = False  # the agents lapse (`Timing.lapse`) and run no failsafe

    def timing(self) -> Timing:
        """The agent's timing under this profile, every other number at its default."""
        lifetime, interval = defaults(self.lease_ttl)
        return Timing(
            self.lease_ttl,
            interval,
            lifetime,
            DEFAULT_FENCE_MARGIN,
            etcd_election_timeout=self.etcd_election_timeout,
            etcd_heartbeat_interval=self.etcd_heartbeat_interval,
            lapse=self.lapse,
        )

    def problems(self) -> list[str]:
        """The agent's rules (`problems`) and the controller's: a TTL etcd grants as asked, and
        keepalive (TTL / 4) + the etcd call timeout <= TTL, so one slow keepalive never costs
        the leadership."""
        found = problems(self.timing())
        floor = etcd_min_ttl(self.etcd_election_timeout, self.etcd_heartbeat_interval)
        if self.lease_ttl < floor:
            found.append(
                f"the controller's lease_ttl ({self.lease_ttl} s) is below etcd's minimum lease "
                f"TTL ({floor} s): lower etcd's --election-timeout"
            )
        keepalive = self.lease_ttl / 4
        if keepalive + self.etcd_timeout > self.lease_ttl + EPSILON:
            found.append(
                f"controller keepalive ({keepalive:g}) + etcd timeout ({self.etcd_timeout:g}) "
                f"exceeds the controller's lease_ttl ({self.lease_ttl} s)"
            )
        return found


PROFILES = {
    p.name: p
    for p in (
        Profile(
            "default",
            lease_ttl=2,
            etcd_heartbeat_interval=0.1,
            etcd_election_timeout=1.0,
            etcd_timeout=1.0,
        ),
        Profile(
            "fast",
            lease_ttl=1,
            etcd_heartbeat_interval=0.05,
            etcd_election_timeout=0.5,
            etcd_timeout=0.5,
            lapse=True,
        ),
    )
}


def defaults(lease_ttl: int) -> tuple[float, float]:
    """(address_lifetime, keepalive_interval) for a lease TTL: half the TTL, a quarter of that."""
    lifetime = lease_ttl / 2
    return lifetime, lifetime / 4
