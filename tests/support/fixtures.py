"""pytest fixtures shared by the whole suite (loaded from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import EtcdCluster


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    """A fresh single-member etcd on loopback; `etcd.endpoints` is a one-item list."""
    with EtcdCluster.start(size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster on loopback; `etcd_cluster.members[i]` can be killed/frozen."""
    with EtcdCluster.start(size=3) as cluster:
        yield cluster
