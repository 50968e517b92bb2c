"""hactl, the operator's CLI: a thin shell over the cluster store that records intent.

It reads the cluster (`status`, `history`) and writes requests that the active
controller carries out (`failover`, `pause`/`resume`, `drain`/`undrain`); it
never moves an IP itself. `certs` makes the cluster PKI (haproxy_py.pki);
`etcd` compacts, defragments and disarms etcd (haproxy_py.cluster.maintenance).

Modules: `cli` (the click group, entry point `main`; commands are imported
only when run), `options` and `connection` (options, environment and files ->
etcd settings), `session` (the Store edge and error translation), `intent`
(request checks, pure), `view` and `etcdview` (status/history rendering,
pure), `status`, `actions`, `etcd`, `certs`, `errors`.

JSON output (stable keys; new keys may be added, none renamed):

    status -o json   {cluster, mode, paused, epoch, controller, controller_since,
                      nodes: [{name, address, role, healthy, registered, vips,
                               priority, backends_up, backends_total, ready, pools,
                               lease_left, version}],
                      vips: [{address, owner, state, since, cause, move_to}],
                      problems: [str],
                      etcd: {leader, quota, usage,
                             members: [{name, endpoint, role, reachable, db_size,
                                        db_in_use, raft_index, raft_lag, quota, error}],
                             alarms: [{member, alarm}], warnings: [str]}}
    history -o json  [{seq, time, vip, from, to, cause, gap_ms, request}]

Times are ISO 8601 UTC strings; `lease_left` is seconds. With `--watch`,
status prints one JSON document per line.

Exit codes: 0 ok, 1 refused by the controller or declined at the prompt,
2 usage error, 3 bad config/context/certificate file, 4 etcd unreachable or
TLS handshake failed, 5 no controller leader, 6 timed out waiting for the
controller, 7 unknown node or VIP.
"""
