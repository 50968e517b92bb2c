"""The anchors' node configs for `bench.bgpanchors` (pure: no I/O, no clock).

Each node runs HAProxy (Debian) as its proxy, in front of the lab's two demo
backends, adding `Via: 1.1 <node>` so the lab's probes see which node
answered, and one of two BGP set-ups, with their documented defaults:

- **ExaBGP 4.2** with its `healthcheck` process (the form of Debian's
  `/usr/share/doc/exabgp/examples/example-healthcheck.conf`): an HTTP check of
  the local proxy with `curl --fail`, the healthcheck's defaults (interval
  5 s, fast interval 1 s, rise 3, fall 3, timeout 5 s; a failing service is
  announced with MED 1000 instead of 100, a disabled one with 500: no
  `--withdraw-on-down`), and no `hold-time`, so ExaBGP's default of 180 s
  (`exabgp/configuration/neighbor/__init__.py`, `HoldTime(180)`).
- **MetalLB's BGP speaker, reproduced with FRR**: the session part of
  MetalLB's `internal/bgp/frr/templates/frr.tmpl` (no ebgp-requires-policy,
  no network import-check, no default IPv4 unicast, graceful restart with
  preserve-fw-state, FRR's restart time 120 s), `timers 30 90` (MetalLB's
  default hold time 90 s, keepalive hold/3, in `internal/config/config.go`
  until commit bf4c8d5f7, and still in its native mode), no BFD profile (BFD
  off); the VIP's `network` statement is added and removed by
  `bench.anchorready`, which models Kubernetes' endpoint readiness.
"""

from __future__ import annotations

from collections.abc import Sequence

PROXY_PORT = 8080
CHECK_PATH = "/whoami"
HOLD_EXABGP = 180  # ExaBGP's default hold-time (its healthcheck example sets none)
HOLD_METALLB, KEEPALIVE_METALLB = 90, 30
RESTART_FRR = 120  # FRR's default graceful-restart restart time, which a helper router honours


def haproxy_config(node: str, apps: Sequence[str], port: int = PROXY_PORT) -> str:
    """HAProxy in HTTP mode on every address of the node (the VIP on `lo` and 127.0.0.1
    for the checks), WebSockets tunnelled, long client and tunnel timeouts."""
    servers = [f"  server app{i} {app} check inter 1s" for i, app in enumerate(apps, 1)]
    return "\n".join(
        [
            "# Written by bench.bgpanchors: the anchors' proxy.",
            "global",
            "  maxconn 8000",  # 2 FDs each: within this machine's hard limit of 20,000
            "defaults",
            "  mode http",
            "  timeout connect 2s",
            "  timeout client 600s",
            "  timeout server 600s",
            "  timeout tunnel 600s",
            "  timeout http-keep-alive 600s",
            "frontend vip",
            f"  bind :{port}",
            f'  http-response set-header Via "1.1 {node}"',
            "  default_backend apps",
            "backend apps",
            *servers,
            "",
        ]
    )


def check_command(port: int = PROXY_PORT) -> str:
    """The health check both anchors run against the local proxy (as the ExaBGP example)."""
    return (
        f"curl --fail --silent --output /dev/null --max-time 2 http://127.0.0.1:{port}{CHECK_PATH}"
    )


def exabgp_config(
    *, node: str, router: str, local_asn: int, peer_asn: int, vip: str, disable: str
) -> str:
    """exabgp.conf: one neighbor (the router) and the healthcheck process announcing
    `vip`/32 while the check passes; `disable` is its maintenance file (a planned drain)."""
    healthcheck = [
        "/usr/bin/python3 -m exabgp healthcheck --no-syslog --name proxy",
        f'--cmd "{check_command()}"',
        f"--ip {vip}/32 --disable {disable}",
    ]
    return "\n".join(
        [
            "# Written by bench.bgpanchors: ExaBGP with its healthcheck, its defaults.",
            "process healthcheck {",
            f"  run {' '.join(healthcheck)};",
            "  encoder text;",
            "}",
            f"neighbor {router} {{",
            f"  router-id {node};",
            f"  local-address {node};",
            f"  local-as {local_asn};",
            f"  peer-as {peer_asn};",
            "  api services {",
            "    processes [ healthcheck ];",
            "  }",
            "}",
            "",
        ]
    )


def frr_config(*, hostname: str, node: str, router: str, local_asn: int, peer_asn: int) -> str:
    """bgpd's config as MetalLB's speaker renders it for one peer, with MetalLB's default
    timers and no BFD; no `network` yet (announced once the node is ready)."""
    return "\n".join(
        [
            "! Written by bench.bgpanchors: MetalLB's FRR session defaults.",
            f"hostname {hostname}",
            "log stdout informational",
            f"router bgp {local_asn}",
            "  no bgp ebgp-requires-policy",
            "  no bgp network import-check",
            "  no bgp default ipv4-unicast",
            "  bgp graceful-restart preserve-fw-state",
            f"  bgp router-id {node}",
            f"  neighbor {router} remote-as {peer_asn}",
            f"  neighbor {router} timers {KEEPALIVE_METALLB} {HOLD_METALLB}",
            "  address-family ipv4 unicast",
            f"    neighbor {router} activate",
            "  exit-address-family",
            "",
        ]
    )


def frr_network(local_asn: int, vip: str, announce: bool) -> list[str]:
    """vtysh commands that add (or remove) the VIP's `network` statement."""
    statement = f"network {vip}/32" if announce else f"no network {vip}/32"
    return [
        "configure terminal",
        f"router bgp {local_asn}",
        "address-family ipv4 unicast",
        statement,
    ]
