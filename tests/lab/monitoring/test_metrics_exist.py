"""Every metric the alert rules and the dashboard query exists in the real /metrics output.

A node namespace runs the real proxy (`haproxy-py run`) and agent (`ha-agent`)
from one node config, the host runs the real controller (`ha-controller`) and
an etcd member on the bridge; each /metrics is scraped as Prometheus would.
The agent's cluster has no VIP and the controller's has no node, so nothing
is assigned anywhere.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest

from haproxy_py.lab.netns import in_netns
from tests.lab.agent.cluster import BIN, bridge_etcd
from tests.lab.agent.support import plumbing
from tests.support.etcd import free_ports
from tests.support.monitoring import dashboard_queries, exposed, metric_names, rule_queries
from tests.support.wait import eventually

pytestmark = pytest.mark.lab
ADMIN = "127.0.0.1:9901"
WAIT = 60.0  # generous: the machine is shared


def node_config(net: str, etcd: str) -> str:
    return f"""
listeners = [{{ name = "web", bind = "0.0.0.0:8080" }}]
routes = [{{ backend = "app" }}]
backends = {{ app = {{ servers = ["127.0.0.1:1"] }} }}

[node]
name = "n1"
address = "{net}.11"
interface = "eth0"

[cluster]
name = "metrics-node"

[etcd]
endpoints = ["{etcd}"]

[agent]
proxy_admin_url = "http://{ADMIN}"
metrics_bind = "{net}.11:9732"
allowed_vips = ["{net}.100"]

[admin]
bind = "{ADMIN}"
"""


def controller_config(etcd: str, port: int) -> str:
    return f"""
[cluster]
name = "metrics-controller"
vips = ["198.18.255.1"]

[etcd]
endpoints = ["{etcd}"]

[controller]
id = "c1"
metrics = "127.0.0.1:{port}"
"""


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def test_every_queried_metric_is_exported_by_a_daemon_or_etcd(tmp_path: Path) -> None:
    with plumbing(tmp_path, "hvm") as (lab, net):
        lab.bridge(f"{net}.1/24")
        host = lab.add_host("n1", f"{net}.11/24")
        etcd = bridge_etcd(f"{net}.1", tmp_path / "etcd")
        etcd.spawn()
        try:
            etcd.wait_healthy()
            node = tmp_path / "n1.toml"
            node.write_text(node_config(net, etcd.endpoint))
            (port,) = free_ports(1)
            ctl = tmp_path / "c1.toml"
            ctl.write_text(controller_config(etcd.endpoint, port))
            for label, argv in (
                ("proxy", [str(BIN / "haproxy-py"), "run", "--config", str(node)]),
                ("agent", [str(BIN / "ha-agent"), "--config", str(node)]),
            ):
                lab.spawn(host.netns, argv, label=label, log=tmp_path / f"{label}.log")
            lab.spawn(
                None,
                [sys.executable, "-m", "controller", "--config", str(ctl)],
                label="controller",
                log=tmp_path / "controller.log",
            )
            texts = {
                "proxy": eventually(
                    lambda: in_netns(host.netns, lambda: scrape(f"http://{ADMIN}/metrics")),
                    WAIT,
                    "the proxy",
                    every=0.2,
                ),
                "agent": eventually(
                    lambda: scrape(f"http://{net}.11:9732/metrics"), WAIT, "agent", every=0.2
                ),
                "controller": eventually(
                    lambda: scrape(f"http://127.0.0.1:{port}/metrics"),
                    WAIT,
                    "the controller",
                    every=0.2,
                ),
                "etcd": eventually(lambda: scrape(f"{etcd.url}/metrics"), WAIT, "etcd", every=0.2),
            }
        finally:
            etcd.kill()
    names = set().union(*(exposed(text) for text in texts.values()))
    assert "haproxy_py_certificate_expiry_timestamp_seconds" in exposed(texts["proxy"])
    assert "haproxy_py_agent_certificate_expiry_timestamp_seconds" in exposed(texts["agent"])
    assert "haproxy_py_controller_etcd_alarm" in exposed(texts["controller"])
    missing = []
    for query in [*dashboard_queries(), *rule_queries()]:
        plain, regexes = metric_names(query)
        missing += [f"{name} (in {query!r})" for name in sorted(plain - names)]
        missing += [
            f"{regex.pattern} (in {query!r})"
            for regex in regexes
            if not any(regex.fullmatch(name) for name in names)
        ]
    assert missing == []
