"""The anchors' configs (`bench.anchorconf`) and their router, checked by the programs that
read them (BIRD and HAProxy, both in the test dependencies; ExaBGP and FRR are bench-only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench import anchorconf
from haproxy_py.lab import bgplab
from haproxy_py.lab.layout import plan


def test_bird_accepts_the_router_without_bfd_and_hold_time(tmp_path: Path) -> None:
    text = bgplab.router_config(plan("hax-", "198.18.5.0/24", 4, "bgp", None), hold=None, bfd=False)
    conf = tmp_path / "router.conf"
    conf.write_text(text)
    done = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_haproxy_names_the_node_in_via_and_haproxy_accepts_the_config(tmp_path: Path) -> None:
    text = anchorconf.haproxy_config("node3", ["198.18.5.31:8000", "198.18.5.32:8000"])
    assert 'http-response set-header Via "1.1 node3"' in text
    assert "server app2 198.18.5.32:8000" in text
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    done = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
