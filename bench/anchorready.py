"""`python -m bench.anchorready`: MetalLB's "announce while a ready endpoint is local", modelled.

MetalLB (BGP mode, `externalTrafficPolicy: Local`) announces a service's IP from
a node only while the node runs a ready endpoint of it. In Kubernetes the
readiness reaches the speaker through the kubelet (a dead container is seen
by its relist, every 1 s), the EndpointSlice and the speaker's watch, and the
speaker then re-renders FRR's config and reloads it. Here one loop stands for
all of that: every `--period` s (1 s, the kubelet's relist) it asks the local
proxy (`GET /whoami`, 1 s timeout) and reads `--drain` (a file standing for a
drained, terminating pod: the pod not ready while its proxy still serves); on a
change it adds or removes the VIP's `network` statement through `vtysh`. A
first failure withdraws, a first success announces (the readinessProbe's
successThreshold 1). That leaves out the API round trips and frr-reload.py's
run, so it is faster than a real MetalLB, never slower.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import anchorconf


def ready(url: str, drain: Path, timeout: float) -> bool:
    if drain.exists():
        return False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def announce(vty: str, asn: int, vip: str, up: bool) -> bool:
    """Tell bgpd (through vtysh) to announce or withdraw; False when vtysh failed."""
    argv = ["vtysh", "--vty_socket", vty, "-d", "bgpd"]
    for command in anchorconf.frr_network(asn, vip, up):
        argv += ["-c", command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        print(f"vtysh failed ({done.returncode}): {done.stdout.strip()} {done.stderr.strip()}")
    return done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.anchorready", description=__doc__)
    parser.add_argument("--vty", required=True, help="bgpd's vty socket directory")
    parser.add_argument("--asn", type=int, required=True)
    parser.add_argument("--vip", required=True)
    parser.add_argument("--drain", type=Path, required=True)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--limit", type=float, default=4 * 3600, help="stop after this many s")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{anchorconf.PROXY_PORT}{anchorconf.CHECK_PATH}"
    announced = False  # bgpd starts with no `network`
    deadline = time.monotonic() + args.limit
    while time.monotonic() < deadline:
        up = ready(url, args.drain, timeout=1.0)
        if up != announced and announce(args.vty, args.asn, args.vip, up):
            print(f"{time.strftime('%H:%M:%S')} {'announced' if up else 'withdrawn'}", flush=True)
            announced = up
        time.sleep(args.period)


if __name__ == "__main__":
    main()
