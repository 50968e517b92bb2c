"""etcd RBAC from the role table, on a real TLS etcd: each identity reaches what it needs, no more.

The attacker holds node1's agent certificate (review C1): every write outside
its own record and the VIP keys is refused, so are reads outside the cluster
prefix and every auth change; a revoked certificate no longer connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from haproxy_py import pki
from haproxy_py.cluster import rbac
from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.store import Store, StoreError
from haproxy_py.hactl.cli import cli
from tests.support.etcd import EtcdCluster, EtcdTLS
from tests.support.wait import eventually_async

CLUSTER = "sec"
OTHER = "/haproxy-py/other-cluster/config"
DENIED = "permission denied"


@dataclass(frozen=True)
class Secured:
    etcd: EtcdCluster
    pki: Path

    def config(self, name: str) -> EtcdConfig:
        return EtcdConfig(
            tuple(self.etcd.endpoints),
            2.0,
            self.pki / "ca.crt",
            self.pki / f"{name}.crt",
            self.pki / f"{name}.key",
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("pki")
    pki.init_ca(directory)
    server = pki.issue(directory, "etcd1", ["127.0.0.1"])
    for name in ("root", "agent-node1", "agent-node2", "controller-node1", "operator-alice"):
        pki.issue(directory, name, client=True)
    pki.issue(directory, "operator-mallory", client=True)
    pki.issue(directory, "operator-carol", client=True)
    tls = EtcdTLS(
        directory / "ca.crt",
        server.cert,
        server.key,
        directory / "root.crt",
        directory / "root.key",
        crl=pki.crl_path(directory),
    )
    with EtcdCluster.start(size=1, tls=tls) as etcd:
        yield Secured(etcd, directory)


@pytest.fixture
async def as_root(secured: Secured) -> AsyncIterator[Store]:
    async with Store(secured.config("root"), CLUSTER) as store:
        operators = ["alice", "mallory", "carol"]
        await rbac.apply(store, rbac.plan(CLUSTER, ["node1", "node2"], operators, ["etcd1"]))
        yield store


async def _denied(call: asyncio.Future[object] | object) -> str:
    with pytest.raises(StoreError) as caught:
        await call
    return str(caught.value)


async def test_apply_is_idempotent_and_undoes_tampering(as_root: Store) -> None:
    """A second apply changes nothing; a permission or role added by hand is taken away."""
    desired = rbac.plan(CLUSTER, ["node1", "node2"], ["alice", "mallory", "carol"], ["etcd1"])
    assert await rbac.apply(as_root, desired) == []
    widened = rbac.plan(CLUSTER, ["node1", "node2"], [], admins=["agent-node1"])
    await rbac.apply(as_root, widened)  # agent-node1 made root, as an attacker would
    changes = await rbac.apply(as_root, desired)
    assert "user agent-node1: role root revoked" in changes


async def test_agent_key_reaches_only_its_own_record(secured: Secured, as_root: Store) -> None:
    async with Store(secured.config("agent-node1"), CLUSTER) as agent:
        s = agent.schema
        lease = await agent.grant_lease(5)
        await agent.put(s.node("node1"), b"{}", lease=lease.id)
        assert (await agent.get_prefix(s.vips_prefix))[0] == []
        assert await agent.get(s.config) is None
        for key in (s.node("node2"), s.config, s.epoch, s.event(1), s.request("x"), s.leader):
            assert DENIED in await _denied(agent.put(key, b"{}")), key
        assert DENIED in await _denied(agent.put(OTHER, b"x"))
        # VIP keys are the controller's alone (review C2: node1 made node2 take any address)
        await as_root.put(s.vip("198.18.0.100"), b'{"node":"node2","state":"assigned"}')
        for vip in ("198.18.0.100", "198.18.0.31"):
            assert DENIED in await _denied(agent.put(s.vip(vip), b"{}")), vip
            assert DENIED in await _denied(agent.delete(s.vip(vip))), vip
        assert DENIED in await _denied(agent.delete_if(s.vip("198.18.0.100"), 1))
        assert len((await agent.get_prefix(s.vips_prefix))[0]) == 1  # still readable
        await as_root.delete(s.vip("198.18.0.100"))
        assert DENIED in await _denied(agent.put("/not-haproxy-py/x", b"x"))
        assert DENIED in await _denied(agent.get("/not-haproxy-py/x"))
        assert DENIED in await _denied(agent.get_prefix(s.events_prefix))
        assert DENIED in await _denied(agent.get_prefix("/"))
        # Auth changes (review C1 item 4: lock everyone out) need root.
        grab = rbac.plan(CLUSTER, [], [], admins=["agent-node1"])
        assert DENIED in await _denied(rbac.apply(agent, grab))


async def test_agent_key_cannot_revoke_another_nodes_lease(
    secured: Secured, as_root: Store
) -> None:
    async with (
        Store(secured.config("agent-node2"), CLUSTER) as node2,
        Store(secured.config("agent-node1"), CLUSTER) as node1,
    ):
        lease = await node2.grant_lease(5)
        await node2.put(node2.schema.node("node2"), b"{}", lease=lease.id)
        assert DENIED in await _denied(node1.revoke(lease.id))
        assert DENIED in await _denied(node1.put(node1.schema.node("node1"), b"{}", lease.id))
        await node2.revoke(lease.id)


async def test_controller_and_operator(secured: Secured, as_root: Store) -> None:
    async with (
        Store(secured.config("controller-node1"), CLUSTER) as controller,
        Store(secured.config("operator-alice"), CLUSTER) as operator,
    ):
        s = controller.schema
        await controller.put(s.config, b"{}")
        await controller.put(s.epoch, b"1")
        assert DENIED in await _denied(controller.put(OTHER, b"x"))
        await operator.put(s.request("r1"), b"{}")
        assert (await operator.read_view()).revision > 0
        for key in (s.config, s.epoch, s.node("node1"), s.vip("198.18.0.100")):
            assert DENIED in await _denied(operator.put(key, b"{}")), key


async def test_revoked_certificate_is_refused_on_its_next_connection(
    secured: Secured, as_root: Store
) -> None:
    async with Store(secured.config("operator-mallory"), CLUSTER) as before:
        await before.put(before.schema.request("m1"), b"{}")
    pki.revoke(secured.pki, secured.pki / "operator-mallory.crt")
    async with Store(secured.config("operator-mallory"), CLUSTER) as after:
        await _denied(after.put(after.schema.request("m2"), b"{}"))
    async with Store(secured.config("operator-alice"), CLUSTER) as alice:
        await alice.put(alice.schema.request("a2"), b"{}")
        assert await alice.get(alice.schema.request("m2")) is None


async def test_a_renewed_certificate_is_used_from_the_next_connection(
    secured: Secured, as_root: Store, tmp_path: Path
) -> None:
    """The files are renewed and the old certificate revoked under a running client: once its
    connection breaks (here: etcd restarts), it dials again with the new files."""
    cert = secured.pki / "operator-carol.crt"
    async with Store(secured.config("operator-carol"), CLUSTER) as store:
        await store.put(store.schema.request("c1"), b"{}")
        old = tmp_path / "old.crt"
        old.write_bytes(cert.read_bytes())
        pki.issue(secured.pki, "operator-carol", client=True, force=True)
        pki.revoke(secured.pki, old)
        secured.etcd.members[0].restart()

        async def written() -> bool:
            try:
                await store.put(store.schema.request("c2"), b"{}")
            except StoreError:
                return False
            return True

        await eventually_async(written, within=30)


def _hactl(secured: Secured, identity: str, *args: str) -> Result:
    p = secured.pki
    options = ["--etcd", ",".join(secured.etcd.endpoints), "--cluster", CLUSTER]
    options += ["--cacert", str(p / "ca.crt"), "--cert", str(p / f"{identity}.crt")]
    options += ["--key", str(p / f"{identity}.key"), "--etcd-timeout", "2"]
    return CliRunner().invoke(cli, [*options, *args], prog_name="hactl", env={"HACTL_CONTEXT": ""})


def test_hactl_etcd_auth(secured: Secured, as_root: Store) -> None:
    """`hactl etcd auth` as root adds a node's users idempotently; as an operator it is refused."""
    args = ["etcd", "auth", "--node", "node1", "--node", "node2", "--node", "node3"]
    args += ["--operator", "alice", "--operator", "mallory", "--admin", "etcd1"]
    first = _hactl(secured, "root", *args)
    assert first.exit_code == 0, first.output
    assert "user agent-node3 added" in first.output
    again = _hactl(secured, "root", *args)
    assert again.output.endswith("no changes\n"), again.output
    refused = _hactl(secured, "operator-alice", *args)
    assert refused.exit_code != 0 and DENIED in refused.output
    assert refused.output.count("\n") == 1, refused.output
