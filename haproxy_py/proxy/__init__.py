"""The proxy data plane (`haproxy-py`): HTTP and WebSocket reverse proxy with load balancing.

The hot path is plain asyncio Protocols, not aiohttp's server or client:
`frontend.ClientConnection` (built on `requestparse`, `exchange` and `clientstate`) parses
requests with httptools, refuses heads it must not forward (`requestcheck`),
applies per-address limits (`iplimits`), routes them (`routing`), picks a
server (`balancer`) and forwards over pooled keep-alive
`upstream.UpstreamConnection`s, the heads rewritten with framing and Host from
the parsed facts (`headers`), streaming bodies both ways. `docs/proxy-edge.md`
has the rules for hostile input. After a backend's 101 the two sockets become
a byte relay (`relay`). aiohttp serves the admin API (`admin`) and runs the
active health checks (`health`). Access log lines are rendered cheaply and
written by a thread (`accesslog`). `listeners` binds the sockets;
`server.ProxyServer` ties one process's data plane together.

`haproxy-py run` (`cli`) starts a `master.Master`: it binds each listener once
per worker (SO_REUSEPORT), runs the admin API and health checks, and
supervises `worker` processes, each a `ProxyServer` fed over a `control`
socketpair; connection counts live in a shared-memory `shared.CountTable`,
and each process's counters are one `report.TrafficReport` that the master
sums for `/status` and `/metrics` (`stats`).

The hot modules are compiled to C by mypyc when the package is built
(`setup.py`); `compiled` refuses, in a checkout, a build older than its source.
"""

from haproxy_py.proxy.compiled import check_fresh

check_fresh()
