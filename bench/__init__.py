"""Side-by-side proxy benchmark: direct, nginx, haproxy and haproxy-py on the same load.

Run with `make bench` (or `python -m bench`). The load generator and the echo
backend are Go programs in `bench/go/`; this package starts the proxies pinned to
their own core, drives the load, accounts CPU per message from /proc and writes
`bench/results/latest.json` and `latest.md`.
"""
