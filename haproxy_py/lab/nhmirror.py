"""The lab router's flow-keeping mode: BIRD's ECMP routes mirrored as resilient next-hop groups.

BIRD 2.0 writes multipath routes (RTA_MULTIPATH), which the kernel hashes
with hash-threshold (RFC 2992): when a next hop goes, flows move between the
remaining ones too, and their established connections break. Flow-preserving
routers keep a table of buckets instead; Linux has that as resilient next-hop
groups (`ip nexthop ... type resilient`), which BIRD cannot program. So in
this mode BIRD exports to table `TABLE`, and this process, in the router's
namespace, mirrors every VIP route it finds there into the main table as
`VIP/32 nhid G`, G a resilient group of one next-hop object per gateway:
when a gateway goes, only its buckets move; one that comes back takes only
buckets idle for `IDLE` s.

Graceful shutdown (RFC 8326) keeps the draining node in the group: the
router's import filter gives a path tagged GRACEFUL_SHUTDOWN the weight
`DRAINING` instead of `SERVING` (`bgplab.router_config`), BIRD merges the
paths with their weights, and the group takes them over. A next hop whose
weight falls to 1 of 766 wants no bucket, but a resilient group hands a
bucket over only once it has been idle for `IDLE` s (`unbalanced_timer` 0:
never by force), so the buckets of established flows stay on the draining
node while the idle ones, and with them new connections, move. Checked on
this kernel (6.18): 12 UDP flows every 100 ms, a weight set to 1: the 3
buckets they used stayed, the 13 idle ones moved after `IDLE`. Only the
path's withdrawal takes its last buckets.

    python -m haproxy_py.lab.nhmirror VIP...

Level-triggered: every route event (`ip monitor route`), and every second,
it reads table `TABLE` and converges. Lab only (it runs `ip`).
"""

from __future__ import annotations

import ipaddress
import json
import select
import subprocess
import sys

TABLE = 100
BUCKETS = 64
IDLE = 10  # seconds a bucket must be idle before another next hop may take it
SERVING = 255  # the weight of an ordinary path (BIRD's and the kernel's range is 1-256)
DRAINING = 1  # a path tagged GRACEFUL_SHUTDOWN: wants no bucket, keeps its busy ones


def ip(*args: str, check: bool = False) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode:
        print(f"ip {' '.join(args)}: {done.stderr.strip()}", file=sys.stderr, flush=True)
    return done.stdout


def gateways(vip: str) -> dict[str, int]:
    """Gateway -> weight of BIRD's route to `vip` in table TABLE (empty: no route)."""
    hops: dict[str, int] = {}
    for route in json.loads(ip("-j", "route", "show", "table", str(TABLE), f"{vip}/32") or "[]"):
        for h in route.get("nexthops", []):
            if "gateway" in h:
                hops[h["gateway"]] = int(h.get("weight", 1))
        if "gateway" in route:
            hops[route["gateway"]] = 1
    return dict(sorted(hops.items()))


def members(hops: dict[str, int]) -> str:
    """(pure) `ip nexthop ... group` members: `ID,WEIGHT/...`."""
    return "/".join(f"{object_id(gw)},{weight}" for gw, weight in hops.items())


def object_id(address: str) -> int:
    """A stable next-hop object id per lab address (the lab is one /24)."""
    return 1000 + int(ipaddress.IPv4Address(address)) % 256


def group_id(vip: str) -> int:
    return 5000 + int(ipaddress.IPv4Address(vip)) % 256


def converge(vip: str, applied: dict[str, dict[str, int]]) -> None:
    want = gateways(vip)
    if applied.get(vip) == want:
        return
    group = str(group_id(vip))
    if not want:
        ip("route", "del", f"{vip}/32", check=True)
        ip("nexthop", "del", "id", group, check=True)
    else:
        for gw in want:
            ip("nexthop", "replace", "id", str(object_id(gw)), "via", gw, "dev", "eth0", check=True)
        verb = "replace" if applied.get(vip) else "add"
        resilient = ("type", "resilient", "buckets", str(BUCKETS), "idle_timer", str(IDLE))
        ip("nexthop", verb, "id", group, "group", members(want), *resilient, check=True)
        ip("route", "replace", f"{vip}/32", "nhid", group, check=True)
    print(f"{vip}: {applied.get(vip)} -> {want}", flush=True)
    applied[vip] = want


def main(vips: list[str]) -> None:
    applied: dict[str, dict[str, int]] = {}
    monitor = subprocess.Popen(["ip", "monitor", "route"], stdout=subprocess.PIPE, text=True)
    assert monitor.stdout is not None
    while True:
        for vip in vips:
            converge(vip, applied)
        ready, _, _ = select.select([monitor.stdout], [], [], 1.0)
        if ready:
            monitor.stdout.readline()


if __name__ == "__main__":
    main(sys.argv[1:])
