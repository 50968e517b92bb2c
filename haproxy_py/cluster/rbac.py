"""etcd users and roles: one table says what each identity may do, nothing outside the cluster.

etcd runs with `--client-cert-auth`, so a client certificate's common name is
its etcd user. The identities (haproxy_py.pki issues them):

    agent-<node>       the agent of <node>           role <cluster>-agent-<node>
    controller-<node>  the controller on <node>      role <cluster>-controller
    operator-<name>    a person with hactl           role <cluster>-operator
    root, members      etcd administration           role root (auth, members, defrag)

`GRANTS` below is the only place that says what a role may touch. It
follows the keys each daemon writes; a protocol change edits the table. An
agent writes only its own node record (its release acknowledgements and
refused VIPs included) and reads the rest it needs.
etcd applies two rules that shape it: a put or revoke under a lease needs
write access to every key attached to that lease, and `LeaseKeepAlive` is not
authorised at all (any user can keep any lease alive). So an agent can revoke
no lease but its own, while a controller (readwrite on the whole cluster) can
revoke an owner's lease (its `nodes/<node>` key) and another controller's
election lease (`controller/leader`) when they fail their probes
(`controller.probes`), and writes the `revoked/` marker first.

    desired = plan("lab", nodes=["node1"], operators=["alice"], admins=["etcd1"])
    await apply(store, desired)    # store connected as root; idempotent; enables auth
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aetcd.exceptions as aetcd_errors
from aetcd import rpc

from haproxy_py.cluster.etcdclient import Client
from haproxy_py.cluster.schema import Schema
from haproxy_py.cluster.store import Store

READ, WRITE, READWRITE = "read", "write", "readwrite"
ROOT = "root"  # etcd's built-in administrator role, and its user


@dataclass(frozen=True)
class Grant:
    """Access to a key (or, with `prefix`, a key range) relative to the cluster prefix."""

    access: str  # read | write | readwrite
    key: str  # "{node}" is replaced by the node's name; "" with prefix = the whole cluster
    prefix: bool = True


GRANTS: dict[str, tuple[Grant, ...]] = {
    "agent": (
        Grant(READWRITE, "nodes/{node}", prefix=False),  # its own record, under its lease
        Grant(READ, "nodes/"),  # peers' records: who took a VIP over (hand-over)
        Grant(READ, "config", prefix=False),
        # Read only: the controller alone writes assignments; the agent acknowledges a
        # release in its own record, and no VIP key is bound to its lease (etcd: a put or
        # revoke under a lease needs write access to every key attached to it).
        Grant(READ, "vips/"),
        Grant(READ, "announce/{node}/"),  # BGP mode: what it may announce (and its watch)
    ),
    "controller": (Grant(READWRITE, ""),),
    "operator": (Grant(READ, ""), Grant(READWRITE, "requests/")),
}


@dataclass(frozen=True)
class Permission:
    """One etcd permission: `access` on [key, range_end) (range_end empty: the key alone)."""

    access: str
    key: bytes
    range_end: bytes = b""


@dataclass(frozen=True)
class Desired:
    roles: dict[str, frozenset[Permission]] = field(default_factory=dict)
    users: dict[str, frozenset[str]] = field(default_factory=dict)  # user -> its roles


class RbacError(Exception):
    """A name that cannot be an identity; the message says which."""


def prefix_end(key: bytes) -> bytes:
    """etcd's range end for "every key starting with `key`"."""
    end = bytearray(key)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def permissions(schema: Schema, kind: str, node: str = "") -> frozenset[Permission]:
    out = set()
    for grant in GRANTS[kind]:
        key = (schema.prefix + grant.key.format(node=node)).encode()
        out.add(Permission(grant.access, key, prefix_end(key) if grant.prefix else b""))
    return frozenset(out)


def _checked(name: str, what: str) -> str:
    if not name or "/" in name or not name.isprintable() or name.strip() != name:
        raise RbacError(f"{what} {name!r}: expected a non-empty name without '/' or spaces")
    return name


def plan(
    cluster: str, nodes: Iterable[str], operators: Iterable[str], admins: Iterable[str] = ()
) -> Desired:
    """Roles and users for one cluster: an agent and a controller per node, the operators,
    and `admins` (the etcd members' own certificates) as root besides `root` itself."""
    schema = Schema(cluster)
    controller, operator = f"{cluster}-controller", f"{cluster}-operator"
    roles = {
        controller: permissions(schema, "controller"),
        operator: permissions(schema, "operator"),
    }
    users: dict[str, frozenset[str]] = {ROOT: frozenset({ROOT})}
    for node in nodes:
        agent = f"{cluster}-agent-{_checked(node, 'node name')}"
        roles[agent] = permissions(schema, "agent", node)
        users[f"agent-{node}"] = frozenset({agent})
        users[f"controller-{node}"] = frozenset({controller})
    for name in operators:
        users[f"operator-{_checked(name, 'operator name')}"] = frozenset({operator})
    for name in admins:
        users[_checked(name, "admin name")] = frozenset({ROOT})
    return Desired(roles=roles, users=users)


_TYPES = {
    READ: rpc.Permission.READ,
    WRITE: rpc.Permission.WRITE,
    READWRITE: rpc.Permission.READWRITE,
}
_ACCESS = {v: k for k, v in _TYPES.items()}


async def apply(store: Store, desired: Desired) -> list[str]:
    """Make etcd's roles and users match `desired` (extra permissions on these roles are
    revoked; other roles and users are left alone), then enable auth. Returns what changed.

    The store must be connected with the root identity (once auth is on, only root may).
    """

    async def op(client: Client) -> list[str]:
        await client.connect()
        auth = rpc.AuthStub(client.channel)

        async def call(method: str, request: Any) -> Any:
            try:
                return await getattr(auth, method)(
                    request, timeout=store.config.timeout, metadata=client.metadata
                )
            except rpc.AioRpcError as exc:
                aetcd_errors._handle_exception(exc)  # raises aetcd's own error, which _call names

        changes: list[str] = []
        have_roles = set((await call("RoleList", rpc.AuthRoleListRequest())).roles)
        for role in sorted({ROOT, *desired.roles}):
            if role not in have_roles:
                await call("RoleAdd", rpc.AuthRoleAddRequest(name=role))
                changes.append(f"role {role} added")
        for role, wanted in sorted(desired.roles.items()):
            got = await call("RoleGet", rpc.AuthRoleGetRequest(role=role))
            have = {Permission(_ACCESS[p.permType], p.key, p.range_end) for p in got.perm}
            for perm in sorted(have - wanted, key=repr):
                await call(
                    "RoleRevokePermission",
                    rpc.AuthRoleRevokePermissionRequest(
                        role=role, key=perm.key, range_end=perm.range_end
                    ),
                )
                changes.append(f"role {role}: revoked {perm.access} {perm.key!r}")
            for perm in sorted(wanted - have, key=repr):
                grant = rpc.Permission(
                    permType=_TYPES[perm.access], key=perm.key, range_end=perm.range_end
                )
                await call(
                    "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(name=role, perm=grant)
                )
                changes.append(f"role {role}: granted {perm.access} {perm.key.decode()}")
        have_users = set((await call("UserList", rpc.AuthUserListRequest())).users)
        for user, roles in sorted(desired.users.items()):
            if user not in have_users:
                options = rpc.UserAddOptions(no_password=True)
                await call("UserAdd", rpc.AuthUserAddRequest(name=user, options=options))
                changes.append(f"user {user} added")
            got_roles = set((await call("UserGet", rpc.AuthUserGetRequest(name=user))).roles)
            for role in sorted(got_roles - roles):
                await call("UserRevokeRole", rpc.AuthUserRevokeRoleRequest(name=user, role=role))
                changes.append(f"user {user}: role {role} revoked")
            for role in sorted(roles - got_roles):
                await call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=role))
                changes.append(f"user {user}: role {role}")
        await call("AuthEnable", rpc.AuthEnableRequest())
        return changes

    return await store._call("auth setup", op)
