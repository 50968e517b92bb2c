"""The cluster model shared by the agent, the controller and hactl.

Everything lives in etcd under `/haproxy-py/<cluster>/`; this package owns:

    schema, records, intents, controlkeys   key strings and the typed values under them
    config, agent_config, timing            the node file's cluster sections; the timing rule
    storeapi      the store contract (`KVStore`), its plain values, the guarded writes
    store         the etcd adapter: endpoints, TLS reload, leases, watches, gRPC errors
                  turned into `storeerrors`; with `etcdclient`, `maintenance` and `rbac` the
                  only code that imports aetcd
    memstore      the in-memory twin (revisions, leases on an injected clock, watches)
    requestflow   an operator request's round trip, on any store
    maintenance, etcdmembers, rbac          etcd's members, alarms, compaction, roles
    peerlink, allowlist, tasks, bird*, bgp_config   mutual TLS between nodes, the
                  allow-list, task supervision, BGP mode

The VIP hand-over protocol (the part that must never split-brain):

* `nodes/<node>` is written by that node's agent under the node's own lease
  and carries the lease id. `vips/<vip>` is written by the controller bound to
  the *owner's* lease, so a dead node's VIPs disappear with its lease.
* An agent holds a VIP only while `vips/<vip>` names it with state `assigned`
  and its own last keepalive succeeded; the kernel address lifetime it sets
  runs out before the lease can, so a frozen or killed agent loses the address
  before etcd can hand the VIP on (self-fencing, enforced by the kernel).
* The controller creates `vips/<vip>` only when the key is absent
  (create-if-absent transaction that also bumps `epoch` and appends
  `events/<epoch>`). It never overwrites another owner.
* Planned move: the controller sets `state = releasing` (compare on
  mod_revision); the owner removes the address, then deletes the key
  (compare: still owner, still releasing) as its acknowledgement; the
  controller then assigns the new owner.
* Proxy not live (refused, hung, draining): the agent removes the address and
  deletes its own `vips/<vip>` at once, reporting `healthy = false` in
  `nodes/<node>`. Readiness (pools with a server up) is only published
  (`ready`/`pools`); the controller moves a VIP for it only to a strictly
  readier node, after a hold-down, never away from its last candidate.
* SIGTERM: the agent says `stopping` in `nodes/<node>`, removes its addresses,
  deletes its keys once the kernel shows them gone (the controller reassigns
  them as a planned move), tells each VIP's clients to go once the new owner
  lists it, then revokes its lease.
* `config` holds what the active controller applies (mode, VIPs, failback,
  paused, drained nodes); `requests/<id>` carry hactl's requests and get the
  controller's result written back into the same key (`running` while a
  planned move waits for its release, then `done`, `refused` or `failed`).
* Every controller write compares the create revision of its own
  `controller/leader` key, so a deposed leader's late writes fail; every
  assignment bumps `epoch` and appends `events/<epoch>` in the same transaction.
"""
