"""`hactl status` while etcd does not answer: ask the nodes themselves (their peer endpoint,
`agent.peer`, mutual TLS with the operator's certificate) whether they hold VIPs and since
when the failsafe keeps them.

The nodes' addresses come from the last status that reached etcd, cached per cluster in
`$XDG_CACHE_HOME/haproxy-py/` (default ~/.cache): nothing to configure, and an outage
after one successful `hactl status` is enough.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from haproxy_py.cluster.records import ClusterView
from haproxy_py.hactl.connection import Connection

ASK_TIMEOUT = 2.0


def cache_file(cluster: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "haproxy-py" / f"{cluster}-nodes.json"


def remember(cluster: str, view: ClusterView) -> None:
    """Keep the nodes' addresses for the next outage (best effort: never fails a status)."""
    nodes = {n: r.address for n, r in view.nodes.items() if r.address}
    if not nodes:
        return
    path = cache_file(cluster)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or json.loads(path.read_text()) != nodes:
            path.write_text(json.dumps(nodes))
    except (OSError, ValueError):
        pass


def known_nodes(cluster: str) -> dict[str, str]:
    try:
        nodes = json.loads(cache_file(cluster).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in nodes.items()} if isinstance(nodes, dict) else {}


def ask_nodes(connection: Connection, nodes: dict[str, str]) -> list[dict[str, Any]]:
    """Each node's own account (`POST /status`), or why it gave none."""
    from haproxy_py.cluster.peerlink import PEER_PORT, PeerClient, PeerError, PeerTls

    etcd = connection.etcd
    if etcd.cacert is None or etcd.cert is None or etcd.key is None:
        return [
            {"name": n, "address": a, "error": "no client certificate"} for n, a in nodes.items()
        ]
    client = PeerClient(PeerTls(etcd.cacert, etcd.cert, etcd.key), ASK_TIMEOUT)

    async def one(name: str, address: str) -> dict[str, Any]:
        try:
            answer = await client.post(address, PEER_PORT, f"agent-{name}", "/status", {})
        except PeerError as exc:
            return {"name": name, "address": address, "error": str(exc)}
        return {"name": name, "address": address, **(answer if isinstance(answer, dict) else {})}

    async def every() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(one(n, a) for n, a in sorted(nodes.items()))))

    return asyncio.run(every())
