"""Reading and writing the JSON objects stored in etcd: helpers that never raise.

A field of the wrong type reads as its default, so one bad value never stops
a daemon and versions with different fields can mix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar, cast


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def loads(raw: bytes | str) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def text(obj: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else default


def integer(obj: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def number(obj: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    value = obj.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def flag(obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = obj.get(key)
    return value if isinstance(value, bool) else default


def texts(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str) and item)


L = TypeVar("L", bound=str)


def choice(obj: Mapping[str, Any], key: str, choices: tuple[L, ...]) -> L | None:
    value = obj.get(key)
    return cast(L, value) if value in choices else None


def revisions(obj: Mapping[str, Any], key: str) -> dict[str, int]:
    """A JSON object of name -> positive integer (other entries dropped)."""
    value = obj.get(key)
    if not isinstance(value, dict):
        return {}
    return {
        k: v
        for k, v in value.items()
        if isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v > 0
    }
