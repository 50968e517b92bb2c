"""The failover benchmark: haproxy-py's cluster against keepalived, in the one-machine lab.

`python -m bench.failover` (or `make bench-failover`) builds the lab's
topology once (3 etcd members, two proxy nodes, two app backends, a client
namespace), runs every fault scenario against each stack in turn, and writes
bench/results/failover.json and bench/results/failover.md.
"""
