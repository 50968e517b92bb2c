"""The stolen-key attack on liveness (#22): one node's agent key keeps another node's lease alive.

etcd does not authorise `LeaseKeepAlive`, so any agent key can do it; the controllers'
authenticated probe (`controller.probes`) is what still moves the victim's VIPs. Used by
the security lab test and the failover benchmark, which both then kill the victim.
"""

from __future__ import annotations

import subprocess

from haproxy_py.lab import control
from haproxy_py.lab.layout import ETCD_CLIENT_PORT


def keep_alive(lab: control.Lab, thief: str, lease: int) -> subprocess.Popen[str]:
    """`etcdctl lease keep-alive` of `lease` with `thief`'s agent key, from its namespace;
    terminate it to stop. Its output says "keepalived with TTL" for every refresh."""
    p = lab.paths.pki
    endpoints = ",".join(f"https://{m.address}:{ETCD_CLIENT_PORT}" for m in lab.layout.etcd)
    argv = ["ip", "netns", "exec", lab.layout.node(thief).netns, "etcdctl"]
    argv += [f"--endpoints={endpoints}", f"--cacert={p / 'ca.crt'}"]
    argv += [f"--cert={p / f'agent-{thief}.crt'}", f"--key={p / f'agent-{thief}.key'}"]
    argv += ["lease", "keep-alive", f"{lease:x}"]
    return subprocess.Popen(
        argv,
        env={"ETCDCTL_API": "3", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(keeper: subprocess.Popen[str]) -> str:
    """End the keeper; what it printed."""
    keeper.terminate()
    output, _ = keeper.communicate(timeout=10)
    return output
