"""`[bgp]` of the node config: parsed with [node]'s defaults, mistakes named by key, and the
bird.conf made from it accepted by BIRD."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from haproxy_py.cluster import bgp_config
from haproxy_py.configfile import ConfigError, load

NODE = """
[node]
name = "node1"
address = "198.18.5.21"
interface = "eth1"
"""
BGP = """
[bgp]
asn = 64513
peers = [{ name = "tor1", address = "198.18.5.2", asn = 64512 }]
announce_file = "%s"
"""


def parse(tmp_path: Path, text: str) -> bgp_config.BgpConfig | None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return bgp_config.parse_bgp(load(path))


def test_a_minimal_section_takes_address_interface_and_defaults_from_node(tmp_path: Path) -> None:
    found = parse(tmp_path, NODE + BGP % (tmp_path / "a.conf"))
    assert found is not None
    s = found.node
    assert (s.router_id, s.address, s.interface) == ("198.18.5.21", "198.18.5.21", "eth1")
    assert s.bfd is not None and (s.bfd.interval_ms, s.bfd.multiplier) == (100, 3)
    assert s.hold_time == 9 and s.live_link == "havips"
    assert found.control_socket == "/run/bird/bird.ctl"
    assert found.drain_timeout == 30.0


def test_drain_timeout_is_read_in_seconds(tmp_path: Path) -> None:
    found = parse(tmp_path, NODE + BGP % (tmp_path / "a.conf") + "drain_timeout = 12.5\n")
    assert found is not None and found.drain_timeout == 12.5


def test_no_section_means_no_bgp(tmp_path: Path) -> None:
    assert parse(tmp_path, NODE) is None


def test_bfd_false_turns_it_off(tmp_path: Path) -> None:
    found = parse(tmp_path, NODE + BGP % (tmp_path / "a.conf") + "bfd = false\n")
    assert found is not None and found.node.bfd is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("asn = 64513", "asn = 0", "bgp.asn: an AS number"),
        ("asn = 64513", "asn = 64513\ntypo = 1", "bgp.typo: unknown key"),
        ("asn = 64513", "asn = 64513\nhold_time = 1", "bgp.hold_time: 3-65535"),
        ("asn = 64513", "asn = 64513\ndrain_timeout = -1", "bgp.drain_timeout: expected a num"),
        ('address = "198.18.5.2"', 'address = "tor1.ex"', "bgp.peers.tor1.address: an IPv4"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = (NODE + BGP % (tmp_path / "a.conf")).replace(old, new)
    with pytest.raises(ConfigError, match=re.escape(f"node.toml: {message}")):
        parse(tmp_path, text)


def test_the_printed_bird_conf_is_accepted_by_bird(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("")
    config = tmp_path / "node.toml"
    config.write_text(NODE + BGP % (tmp_path / "a.conf"))
    printed = subprocess.run(
        [sys.executable, "-m", "haproxy_py.cluster.bgp_config", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    ).stdout
    (tmp_path / "bird.conf").write_text(printed)
    done = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_printing_without_a_section_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(NODE)
    done = subprocess.run(
        [sys.executable, "-m", "haproxy_py.cluster.bgp_config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith("no [bgp] section: this node does not speak BGP")
