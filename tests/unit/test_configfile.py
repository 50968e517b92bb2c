"""Config errors name the file, the key path and what was expected."""

from pathlib import Path

import pytest

from haproxy_py.cluster.config import parse_node
from haproxy_py.configfile import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load(tmp_path / "nope.toml")


def test_broken_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: not valid TOML"):
        load(write(tmp_path, "[node\nname = 1"))


def test_unknown_section_is_a_typo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: listners: unknown section"):
        load(write(tmp_path, "[listners]\n"))


def test_wrong_type_names_the_key_path(tmp_path: Path) -> None:
    doc = load(write(tmp_path, '[node]\nname = "a"\npriority = "high"\n'))
    with pytest.raises(ConfigError, match=r"node\.priority: expected an integer, got 'high'"):
        parse_node(doc)


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    doc = load(write(tmp_path, '[node]\nnmae = "a"\n'))
    with pytest.raises(ConfigError, match=r"node\.nmae: unknown key \(allowed: address"):
        parse_node(doc)


def test_node_defaults(tmp_path: Path) -> None:
    node = parse_node(load(write(tmp_path, '[node]\nname = "n1"\naddress = "198.18.0.11"\n')))
    assert (node.name, node.address, node.interface, node.priority) == (
        "n1",
        "198.18.0.11",
        "eth0",
        100,
    )
