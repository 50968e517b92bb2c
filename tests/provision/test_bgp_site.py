"""ansible/site.yml in BGP mode, for real on systemd hosts: BIRD, the live link, the agent.

Three systemd-nspawn containers are the etcd members and proxy nodes in
`cluster_mode: bgp`, a fourth runs the demo backends; a router (BIRD in a
namespace of its own on the same bridge, as an operator's top-of-rack
switch) peers with every node over BGP with BFD and puts the VIP's paths into
its kernel as one multipath route. Checked: BIRD runs with the bird.conf the
role made from node.toml and validated; the agent drives it (the VIP in the
node's `birdc show route`, three paths at the router, a client through the
router reaches a backend); a proxy killed with its agent stopped is withdrawn
by the kernel and BIRD alone, and its restart is not announced until the agent
is back; a second run changes nothing; `--check --diff` shows no key.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haproxy_py.cluster import birdconf
from tests.provision.ansible_run import run_playbook
from tests.provision.deploy import (
    APP,
    PROBE_ERRORS,
    PROXIES,
    SETTLE_TIMEOUT,
    Deployed,
    assert_no_key_material,
    deploy,
    second_run_changes_nothing,
    status,
    units_active,
)
from tests.provision.machines import Lab
from tests.support.wait import eventually

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]

UNITS = ["etcd", "bird", "haproxy-py", "ha-agent", "ha-controller"]
ROUTER = "router"
ROUTER_OFFSET = 1  # the router is the lab subnet's second address, after the bridge's
ROUTER_ASN = 64512
NODE_ASN = 64513
BFD = birdconf.Bfd(100, 3)


def router_config(router: str, nodes: list[str]) -> str:
    """The upstream router: a BGP session with BFD per node, equal paths merged into one
    multipath kernel route (as the BGP lab's router)."""
    lines = [
        f"router id {router};",
        "protocol device { scan time 10; }",
        "protocol kernel {",
        "  ipv4 { import none; export all; };",
        "  merge paths on limit 16;",
        "}",
        *birdconf.bfd_protocol("eth0", BFD),
    ]
    for i, node in enumerate(nodes, 1):
        lines += [
            f"protocol bgp node{i} {{",
            f"  local {router} as {ROUTER_ASN};",
            f"  neighbor {node} as {NODE_ASN};",
            "  hold time 9;",
            *birdconf.RECONNECT,
            "  bfd on;",
            "  ipv4 { import all; export none; };",
            "}",
        ]
    return "\n".join(lines) + "\n"


class Router:
    """BIRD in a namespace on the lab's bridge; `start` is deploy()'s `around` step."""

    def __init__(self) -> None:
        self.address = self.netns = ""
        self.socket = Path()

    def start(self, lab: Lab) -> None:
        self.address = lab.address(ROUTER_OFFSET)
        host = lab.plumbing.add_host(ROUTER, f"{self.address}/{lab.subnet.prefixlen}")
        self.netns = host.netns
        conf = lab.work / "router-bird.conf"
        nodes = [lab.machine(n).address for n in PROXIES]
        conf.write_text(router_config(self.address, nodes))
        bird = shutil.which("bird") or "bird"
        subprocess.run([bird, "-p", "-c", str(conf)], check=True, capture_output=True)
        self.socket = lab.work / "router.ctl"
        argv = [bird, "-f", "-c", str(conf), "-s", str(self.socket)]
        lab.plumbing.spawn(self.netns, argv, label="router/bird", log=lab.work / "router-bird.log")

    def run(self, *argv: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def birdc(self, command: str) -> str:
        return self.run("birdc", "-s", str(self.socket), command)

    def next_hops(self, vip: str) -> list[str]:
        """The gateways of the router's kernel route to `vip` (sorted; empty: none)."""
        hops: list[str] = []
        for route in json.loads(self.run("ip", "-j", "route", "show", f"{vip}/32")):
            hops += [h["gateway"] for h in route.get("nexthops", []) if "gateway" in h]
            hops += [route["gateway"]] if "gateway" in route else []
        return sorted(hops)


@pytest.fixture(scope="module")
def router() -> Router:
    return Router()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, router: Router) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("provision-bgp")
    bgp: dict[str, Any] = {
        "cluster_mode": "bgp",
        "bgp_asn": NODE_ASN,
        "bgp_bfd": {"interval_ms": BFD.interval_ms, "multiplier": BFD.multiplier},
    }

    def around(lab: Lab) -> None:
        router.start(lab)
        bgp["bgp_peers"] = [{"name": "uplink", "address": router.address, "asn": ROUTER_ASN}]

    with deploy(work, "bgp", PROXIES, APP, bgp, around) as d:
        yield d


def addresses(d: Deployed) -> list[str]:
    return sorted(d.lab.machine(n).address for n in PROXIES)


def node_routes(d: Deployed, name: str) -> str:
    return d.lab.ssh(d.lab.machine(name), "birdc show route").stdout


def wait_hops(router: Router, vip: str, wanted: list[str], what: str, every: float = 0.5) -> None:
    """Wait until the router's paths to `vip` go through exactly the nodes at `wanted`."""
    eventually(
        lambda: True if router.next_hops(vip) == wanted else None,
        SETTLE_TIMEOUT,
        what,
        every=every,
        ignoring=PROBE_ERRORS,
        detail=lambda: router.birdc("show route all"),
    )


def test_first_run_provisions_bgp_mode(deployed: Deployed) -> None:
    run = deployed.first
    assert run.returncode == 0, run.explain()
    assert set(run.recap) >= set(PROXIES + APP), run.explain()
    assert all(r.failed == 0 and r.unreachable == 0 for r in run.recap.values()), run.explain()


def test_bird_runs_with_the_config_made_from_node_toml(deployed: Deployed, router: Router) -> None:
    for name in PROXIES:
        machine = deployed.lab.machine(name)
        units_active(deployed, machine, UNITS)
        conf = deployed.lab.ssh(machine, "cat /etc/bird/bird.conf").stdout
        made = "/opt/haproxy-py/venv/bin/python -m haproxy_py.cluster.bgp_config"
        rendered = deployed.lab.ssh(machine, f"{made} --config /etc/haproxy-py/node.toml")
        assert conf == rendered.stdout, conf
        assert f"router id {machine.address};" in conf
        assert f"neighbor {router.address} as {ROUTER_ASN};" in conf
        assert "bfd on;" in conf and "check link;" in conf
        check = deployed.lab.ssh(machine, "bird -p -c /etc/bird/bird.conf", check=False)
        assert check.returncode == 0, check.stderr
        toml = deployed.lab.ssh(machine, "cat /etc/haproxy-py/node.toml").stdout
        assert 'mode = "bgp"' in toml and "[bgp]" in toml and f"asn = {NODE_ASN}" in toml

        def established(machine: Any = machine) -> bool | None:
            protocols = deployed.lab.ssh(machine, "birdc show protocols").stdout
            return True if "Established" in protocols else None

        eventually(established, SETTLE_TIMEOUT, f"{name}: BGP session up", every=0.5)


def test_the_proxy_unit_stays_sandboxed_with_its_live_link(deployed: Deployed) -> None:
    """The proxy holds the persistent TUN device with no capability but CAP_NET_BIND_SERVICE."""
    machine = deployed.lab.machine("node1")
    done = deployed.lab.ssh(machine, "systemd-analyze security --no-pager haproxy-py")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match and float(match.group(1)) <= 2.5, done.stdout[-600:]
    info = json.loads(deployed.lab.ssh(machine, "ip -d -j link show havips").stdout)[0]
    tun = info["linkinfo"]
    assert tun["info_kind"] == "tun" and tun["info_data"]["persist"], info
    assert tun["info_data"]["user"] == "haproxy-py", info
    # carrier while the proxy holds it, up since the agent saw the proxy answer
    assert "LOWER_UP" in info["flags"] and "UP" in info["flags"], info


def test_every_node_announces_the_vip_and_clients_reach_it(
    deployed: Deployed, router: Router
) -> None:
    for name in PROXIES:

        def routed(name: str = name) -> bool | None:
            return True if f"{deployed.vip}/32" in node_routes(deployed, name) else None

        eventually(
            routed,
            SETTLE_TIMEOUT,
            f"{name}: the VIP in birdc show route",
            every=0.5,
            ignoring=PROBE_ERRORS,
        )
    wait_hops(router, deployed.vip, addresses(deployed), "three paths to the VIP at the router")
    bfd = router.birdc("show bfd sessions")
    assert bfd.count(" Up ") == len(PROXIES), bfd
    doc = status(deployed)
    vip = next(v for v in doc["vips"] if v["address"] == deployed.vip)
    assert sorted(vip["announcers"]) == PROXIES, doc

    def through_router() -> str | None:
        url = f"http://{deployed.vip}/"
        body = router.run(
            "python3",
            "-c",
            f"import urllib.request as u; print(u.urlopen('{url}', timeout=5).read().decode())",
        )
        return body if body.startswith("demo backend app1:") else None

    eventually(
        through_router,
        SETTLE_TIMEOUT,
        "a backend through the router",
        every=0.5,
        ignoring=PROBE_ERRORS,
    )


def test_a_dead_proxy_is_withdrawn_with_its_agent_stopped(
    deployed: Deployed, router: Router
) -> None:
    """The agent stopped (a routine stop withdraws nothing), then the proxy killed: the kernel
    drops the live link's carrier and BIRD withdraws by itself; systemd restarts the proxy,
    whose link starts down, so nothing is announced until the agent is back."""
    everyone = addresses(deployed)
    wait_hops(router, deployed.vip, everyone, "three paths to the VIP")
    machine = deployed.lab.machine("node1")
    deployed.lab.ssh(machine, "systemctl stop ha-agent")
    time.sleep(3)
    assert router.next_hops(deployed.vip) == everyone, "stopping the agent withdrew the node"
    others = [a for a in everyone if a != machine.address]
    started = time.monotonic()
    # The master and its workers (all hold the live link). `systemctl kill` of the whole
    # cgroup fails in these containers (systemd 252, hybrid cgroups: EIO).
    main = "m=$(systemctl show --property=MainPID --value haproxy-py)"
    workers = r'$(grep -l "^PPid:\s*$m$" /proc/[0-9]*/status | cut -d/ -f3)'
    deployed.lab.ssh(machine, f"{main}; kill -KILL $m {workers}")
    wait_hops(router, deployed.vip, others, "node1's path gone at the router", every=0.05)
    print(
        f"\nproxy killed, agent stopped: node1's path gone after {time.monotonic() - started:.2f} s"
    )
    assert f"{deployed.vip}/32" not in node_routes(deployed, "node1")
    units_active(deployed, machine, ["haproxy-py"])  # restarted by systemd
    time.sleep(3)
    assert router.next_hops(deployed.vip) == others, (
        "a proxy restarted without its agent is announced"
    )
    deployed.lab.ssh(machine, "systemctl start ha-agent")
    wait_hops(router, deployed.vip, everyone, "node1 announcing again with its agent back")


def test_second_run_changes_nothing(deployed: Deployed) -> None:
    second_run_changes_nothing(deployed, PROXIES + APP)


def test_check_diff_changes_nothing_and_shows_no_key(deployed: Deployed) -> None:
    run = run_playbook(
        deployed.inventory, deployed.extra_vars, deployed.work, "check-diff", "--check", "--diff"
    )
    assert run.returncode == 0, run.explain()
    assert not any(r.changed for r in run.recap.values()), run.explain()
    assert_no_key_material(deployed, run)
    assert_no_key_material(deployed, deployed.first)
