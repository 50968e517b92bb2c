"""The stolen-key attack on liveness (#22): one node's agent key keeps another node's lease alive.

etcd does not authorise `LeaseKeepAlive`, so any agent key can do it; the controllers'
authenticated probe (`controller.probes`) is what still moves the victim's VIPs. Used by
the security lab test and the failover benchmark, which both then kill the victim.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from haproxy_py.lab import control
from haproxy_py.lab.layout import ETCD_CLIENT_PORT
from haproxy_py.lab.settle import wait


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


def _readies(lab: control.Lab, node: str) -> int:
    log = lab.paths.log(f"{node}/controller")
    return log.read_text().count('"event": "ready"') if log.exists() else 0


def hand_leadership(lab: control.Lab, leader: str, stop: Callable[[str], object]) -> bool:
    """Make `leader`'s controller lead: `stop` the other node's controller (as the caller
    likes: SIGTERM steps down at once, SIGKILL makes `leader`'s depose it), start it again,
    and wait until it is up (a standby that will probe the leader). False: timed out."""
    other = next(n.name for n in lab.layout.nodes if n.name != leader)

    def leads() -> bool:
        now = lab.view().leader
        return now is not None and now.id == leader

    if leads():
        return True
    readies = _readies(lab, other)
    stop(other)
    if wait(leads, 30, 0.05) is None:
        return False
    lab.start_node(other, ("controller",))
    return wait(lambda: _readies(lab, other) > readies, 60) is not None
