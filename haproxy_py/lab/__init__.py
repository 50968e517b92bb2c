"""The one-machine lab: the whole cluster in network namespaces on one Linux host.

layout, netns    the plan (names, 198.18.0.0/15 addresses) and its namespaces and bridge
control          `Lab`: up, down, kill, restart, partition; `cli` is `hactl lab`
activate         proxies started as systemd would, their sockets held across restarts
bgplab, nhmirror, ecmp   BGP mode: BIRD on each node, the router, resilient next hops
client, echoclients, watch, arpwatch   probes, WebSocket clients, two-owner watchers
settle, etcdstatus   when the lab has settled; etcd's members as the lab sees them
chaos/           `hactl lab chaos`: random faults under load, invariants checked
tour, demoapp, forward, stolen   `make demo`, the backends, the host port, the stolen key
"""
