"""The member list, the one etcd call whose gRPC errors aetcd passes on raw, fails in the
store's words like every other call (a lab's etcd-leader fault crashed on it)."""

from __future__ import annotations

import socket

import pytest

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.maintenance import members
from haproxy_py.cluster.store import Store, StoreUnavailable


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_member_list_is_a_store_error() -> None:
    config = EtcdConfig((f"127.0.0.1:{closed_port()}",), timeout=1.0)
    async with Store(config, "t") as store:
        with pytest.raises(StoreUnavailable, match=r"^etcd unreachable .*connection refused"):
            await members(store)
