"""Reading the node's TOML config file into typed values, with errors that name the spot.

Every daemon and hactl read the same file; each owns some top-level sections
and parses them with `Table`, which keeps the key path so that a mistake reads
`node.toml: backends.app.servers[1]: expected "host:port", got 'x'`.
Runtime code never indexes raw dicts: parsers return frozen dataclasses.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

# Top-level sections of the node config, and which program reads them.
KNOWN_SECTIONS = {
    "node": "this node's name, address, interface and priority (all daemons)",
    "admin": "the proxy's admin API listener (haproxy-py)",
    "proxy": "proxy-wide timeouts and limits (haproxy-py)",
    "listeners": "the proxy's client-facing listeners (haproxy-py)",
    "routes": "host/path routes to backends (haproxy-py)",
    "backends": "backend server pools (haproxy-py)",
    "cluster": "cluster name, mode, VIPs and failover policy (ha-controller, hactl)",
    "etcd": "etcd endpoints and TLS files (ha-agent, ha-controller, hactl)",
    "agent": "lease, health polling and VIP handling (ha-agent)",
    "controller": "controller timings and metrics (ha-controller)",
    "logging": "log level and format (all daemons)",
    "bgp": "this node's BGP speaker in BGP mode: AS, peers, BFD (ha-agent, bird.conf)",
}


class ConfigError(Exception):
    """A config file is missing, unreadable, not TOML, or has a wrong value.

    The message is complete and meant for the operator as it is.
    """


def load(path: str | Path) -> Table:
    """Read a TOML file and check its top-level section names."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    table = Table(data, str(path), "")
    for key in data:
        if key not in KNOWN_SECTIONS:
            known = ", ".join(sorted(KNOWN_SECTIONS))
            table.fail(key, f"unknown section (known: {known})")
    return table


_MISSING: Any = object()


class Table:
    """One TOML table with its location, read through typed getters."""

    def __init__(self, data: dict[str, Any], file: str, path: str) -> None:
        self.data = data
        self.file = file
        self.path = path

    def where(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str | int, message: str) -> NoReturn:
        raise ConfigError(f"{self.file}: {self.where(key)}: {message}")

    def _get(self, key: str, default: Any, types: tuple[type, ...], expected: str) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.fail(key, f"missing; expected {expected}")
            return default
        # bool is an int subclass in Python; a TOML `true` is never a number here.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            self.fail(key, f"expected {expected}, got {value!r}")
        return value

    def string(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, (str,), "a string")

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, (bool,), "true or false")

    def integer(self, key: str, default: Any = _MISSING, *, min: int | None = None) -> Any:
        value = self._get(key, default, (int,), "an integer")
        if value is not None and min is not None and value < min:
            self.fail(key, f"expected an integer >= {min}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, min: float | None = None) -> Any:
        value = self._get(key, default, (int, float), "a number")
        if value is not None and min is not None and value < min:
            self.fail(key, f"expected a number >= {min}, got {value}")
        return None if value is None else float(value)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.string(key, default)
        if value not in choices and value is not default:
            self.fail(key, f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, (list,), "a list of strings")
        if value is default:
            return value
        for i, item in enumerate(value):
            if not isinstance(item, str):
                Table({}, self.file, self.where(key)).fail(i, f"expected a string, got {item!r}")
        return list(value)

    def readable_file(self, key: str) -> Path | None:
        """A file this user can read; a relative path is taken from the config file's
        directory (and made absolute, so that a second parse never re-anchors it)."""
        value = self.string(key, None)
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute():
            path = (Path(self.file).parent / path).absolute()
        if not path.is_file():
            self.fail(key, f"{path}: no such file")
        if not os.access(path, os.R_OK):
            self.fail(key, f"{path}: not readable by this user")
        return path

    def table(self, key: str, default: Any = _MISSING) -> Table:
        value = self._get(key, default if default is _MISSING else {}, (dict,), "a table")
        return Table(value, self.file, self.where(key))

    def tables(self, key: str) -> Iterator[tuple[str, Table]]:
        """The sub-tables of a table of tables, e.g. `[backends.app]`."""
        outer = self.table(key, {})
        for name, value in outer.data.items():
            if not isinstance(value, dict):
                outer.fail(name, f"expected a table, got {value!r}")
            yield name, Table(value, self.file, outer.where(name))

    def array(self, key: str) -> Iterator[Table]:
        """The entries of an array of tables, e.g. `[[listeners]]`."""
        value = self._get(key, [], (list,), "an array of tables")
        where = self.where(key)
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                Table({}, self.file, where).fail(i, f"expected a table, got {item!r}")
            yield Table(item, self.file, f"{where}[{i}]")

    def reject_unknown(self, allowed: set[str] | frozenset[str]) -> None:
        """Typos are errors: a key nobody reads would silently do nothing."""
        for key in self.data:
            if key not in allowed:
                self.fail(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")
