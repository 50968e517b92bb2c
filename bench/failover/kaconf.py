"""keepalived configuration for the comparison stacks (pure: text in, text out).

Two profiles. `nginx` follows NGINX's documented HA pair (docs.nginx.com,
"High Availability Support for NGINX Plus", the nginx-ha-keepalived template):
VRRP unicast between the two nodes, `advert_int 1`, priorities 101/100, a
health check script of the local proxy with `weight 50`, `accept`, and a GARP
refresh every 5 s; the script runs every second as the benchmark brief asks
(the template's 3 s would only make keepalived slower). `fast` is the same
with VRRPv3 and the shortest advert interval keepalived accepts (10 ms).
`log_status` reads keepalived's own log for its state and health check result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUTER_ID = 51
WEIGHT = 50


@dataclass(frozen=True)
class Profile:
    name: str
    vrrp_version: int
    advert_int: str  # as keepalived reads it (seconds; VRRPv3 resolution is 10 ms)
    title: str


PROFILES = {
    "nginx": Profile("nginx", 3, "1", "keepalived (NGINX HA template)"),
    "fast": Profile("fast", 3, "0.01", "keepalived (VRRPv3, advert 10 ms)"),
}


@dataclass(frozen=True)
class Peer:
    """One node as keepalived sees it: name, address on the bridge, base priority."""

    name: str
    address: str
    priority: int


def base_priority(index: int) -> int:
    """101 for the first node, 100 for the second, ... (the template's staggering)."""
    return 101 - index


def render(
    profile: Profile,
    me: Peer,
    others: list[Peer],
    vip: str,
    health_url: str,
    interface: str = "eth0",
) -> str:
    """The keepalived.conf of node `me`."""
    peers = "\n".join(f"        {p.address}" for p in others)
    return f"""# keepalived for the failover benchmark, profile {profile.name!r} (node {me.name}).
global_defs {{
    router_id {me.name}
    vrrp_version {profile.vrrp_version}
    script_user root
    enable_script_security
}}

vrrp_script chk_proxy {{
    script "/usr/bin/curl -sf -m 1 -o /dev/null {health_url}"
    interval 1
    weight {WEIGHT}
}}

vrrp_instance VI_1 {{
    interface {interface}
    priority {me.priority}
    virtual_router_id {ROUTER_ID}
    advert_int {profile.advert_int}
    accept
    garp_master_refresh 5
    garp_master_refresh_repeat 1
    unicast_src_ip {me.address}
    unicast_peer {{
{peers}
    }}
    virtual_ipaddress {{
        {vip}
    }}
    track_script {{
        chk_proxy
    }}
}}
"""


@dataclass(frozen=True)
class LogStatus:
    """What a keepalived log says about its latest run: VRRP state and health check result."""

    state: str  # "MASTER", "BACKUP", "FAULT"; "" before the first state
    check_passing: bool


def log_status(lines: list[str]) -> LogStatus:
    """The state and check result of the last keepalived run in `lines` (its log, in order).
    The log is the only ordered record: notify scripts run concurrently and may finish out of
    order when two transitions come within milliseconds."""
    state, check = "", None
    for line in reversed(lines):
        if not state and (found := _STATE.search(line)):
            state = found.group(1)
        if check is None and "VRRP_Script(chk_proxy)" in line:
            check = "succeeded" in line or "successful" in line  # also "... on reload"
        if (state and check is not None) or "Starting Keepalived" in line:
            break
    return LogStatus(state, bool(check))


_STATE = re.compile(r"\) Entering (\w+) STATE")
