"""What etcd's members say of themselves (leader, DB size), from their status endpoints."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass

from haproxy_py.lab import control
from haproxy_py.lab.layout import ETCD_CLIENT_PORT


@dataclass(frozen=True)
class EtcdStatus:
    leader: str | None
    db_size: dict[str, int]  # member -> bytes


def etcd_status(lab: control.Lab) -> EtcdStatus:
    """The leading member and each reachable member's DB size, from their status endpoints."""
    pki = lab.paths.pki
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(pki / "hactl.crt", pki / "hactl.key")
    ids, sizes, leader = {}, {}, None
    for m in lab.layout.etcd:
        url = f"https://{m.address}:{ETCD_CLIENT_PORT}/v3/maintenance/status"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                doc = json.loads(response.read())
        except OSError:
            continue
        ids[doc["header"]["member_id"]] = m.name
        sizes[m.name] = int(doc.get("dbSize", 0))
        leader = doc.get("leader")
    return EtcdStatus(ids.get(leader) if leader else None, sizes)
