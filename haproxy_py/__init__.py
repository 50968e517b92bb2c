"""haproxy_py: a highly available WebSocket/HTTP proxy cluster.

Packages: `proxy` (the data plane), `cluster` (the etcd model and the store),
`hactl` (the operator CLI), `lab` (the cluster in network namespaces; no
daemon imports it). Shared by the daemons: `daemon` (their command-line
convention), `configfile`, `logging`, `metrics`, `systemd`, `pki`,
`certmetrics`. The agent and the controller are the top-level packages
`agent` and `controller`.
"""

__version__ = "0.1.0"
