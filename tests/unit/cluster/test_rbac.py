"""The role table turned into etcd permissions (pure): each identity gets its keys, no more."""

from __future__ import annotations

import pytest

from haproxy_py.cluster import rbac

P = b"/haproxy-py/c/"


def test_prefix_end_is_the_next_key_after_every_key_with_the_prefix() -> None:
    assert rbac.prefix_end(b"/haproxy-py/c/") == b"/haproxy-py/c0"
    assert rbac.prefix_end(b"a\xff\xff") == b"b"
    assert rbac.prefix_end(b"\xff") == b"\0"


def test_plan_gives_each_node_its_own_agent_role() -> None:
    desired = rbac.plan("c", ["n1", "n2"], ["alice"], admins=["etcd-m1"])
    assert desired.users == {
        "root": {"root"},
        "agent-n1": {"c-agent-n1"},
        "agent-n2": {"c-agent-n2"},
        "controller-n1": {"c-controller"},
        "controller-n2": {"c-controller"},
        "operator-alice": {"c-operator"},
        "etcd-m1": {"root"},
    }
    agent = desired.roles["c-agent-n1"]
    own = rbac.Permission(rbac.READWRITE, P + b"nodes/n1")
    assert own in agent
    assert all(p.key.startswith(P) for role in desired.roles.values() for p in role)
    writable = {p.key for p in agent if p.access != rbac.READ}
    assert writable == {P + b"nodes/n1"}  # its own record only: VIP keys are read-only
    assert rbac.Permission(rbac.READ, P, rbac.prefix_end(P)) in desired.roles["c-operator"]
    assert {p.key for p in desired.roles["c-operator"] if p.access != rbac.READ} == {
        P + b"requests/"
    }


@pytest.mark.parametrize("name", ["", "a/b", " n1", "n\x1b1"])
def test_names_that_would_widen_a_key_are_refused(name: str) -> None:
    with pytest.raises(rbac.RbacError, match="expected a non-empty name"):
        rbac.plan("c", [name], [])
