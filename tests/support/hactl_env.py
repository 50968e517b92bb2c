"""hactl tests never pick up a lab running on this machine (their conftests import this)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haproxy_py.hactl import connection


@pytest.fixture(autouse=True)
def _no_lab_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(connection, "LAB_CONTEXT", tmp_path / "no-lab" / "context.toml")
    monkeypatch.delenv("HACTL_CONTEXT", raising=False)
    for name in ("ETCD", "CLUSTER", "CACERT", "CERT", "KEY", "ETCD_TIMEOUT", "CONFIG"):
        monkeypatch.delenv(f"HACTL_{name}", raising=False)
