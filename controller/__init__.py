"""The controller (`ha-controller --config FILE`): one leads, the others stand by.

It decides which node holds which VIP and carries out operators' requests; all
its state is in etcd (see `haproxy_py.cluster` for the hand-over protocol).

    decide      the pure rules: view + time -> actions and a one-sentence reason
    plan, placement, requests, actions   the working state and vocabulary of `decide`
    memory      what it saw over time (hold-downs), on its own monotonic clock
    election    the leader key under its own lease; every write is fenced by it
    execute     actions as compare-and-set transactions
    expiry      an owner's lease revoked once it has provably run out
    vacancy     when a VIP whose key stays in etcd is nobody's (released, or its lease gone)
    probes      each VIP owner and the leader asked over mutual TLS, by every controller;
                an overdue owner's lease revoked, an overdue leader deposed
    revoke      the `revoked/` marker, then the revoke
    embargo     a revoked owner's VIPs kept from everyone until its fence fell, on any controller
    peer        our own endpoint the standbys probe while we lead
    announce, announcesync   BGP mode: which nodes may announce which VIP, and its writes
    loop        the shell: watch, read, decide, execute, log one line per change
    metrics, cli

It talks to etcd only through `haproxy_py.cluster.storeapi.KVStore`, so its
loop, election and executor also run on the in-memory store with a manual
clock (`tests/unit/controller/test_on_memory.py`).
"""
