"""The generated proxy configurations' arithmetic (the real programs check them in
tests/integration/bench)."""

from __future__ import annotations

from bench import configs


def test_limits_leave_two_descriptors_per_client() -> None:
    assert configs.max_clients(20000) * 2 <= 20000 - 200
    assert "maxconn 9900" in configs.haproxy_cfg(listen=1, backend="127.0.0.1:2", fd_limit=20000)
