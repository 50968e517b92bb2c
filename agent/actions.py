"""What the agent's core (`agent.state`) asks the daemon to do, executed in the order returned.

Plain values: the core decides, `agent.effects` carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SetAddress:
    """Add (`new`) or re-arm the address with valid/preferred lifetime `lifetime` seconds.

    `grace`: a VIP taken over in a planned move; mid-stream TCP segments of the
    previous owner's connections are dropped for a while, not answered with a
    reset, so the previous owner's clean close reaches its clients first.
    """

    vip: str
    lifetime: float
    new: bool
    reason: str
    grace: bool = False


@dataclass(frozen=True)
class RemoveAddress:
    """Remove the address; `fenced` when it goes for lack of keepalive success; `lost` when
    it went without a planned release (self-fence, lease lost, an earlier agent's VIP):
    nobody else tells its clients, so the proxy is asked to close them."""

    vip: str
    reason: str
    fenced: bool = False
    lost: bool = False


@dataclass(frozen=True)
class StartGarp:
    vip: str


@dataclass(frozen=True)
class StopGarp:
    vip: str


@dataclass(frozen=True)
class AckRelease:
    """This node let go of the assignment of `vip` at `revision`: say so in the node record
    (`released`), which the controller answers by giving the VIP to its next owner."""

    vip: str
    revision: int
    reason: str


@dataclass(frozen=True)
class Refused:
    """`vips/<vip>` names this node but the local allow-list does not allow the address."""

    vip: str


@dataclass(frozen=True)
class PublishNode:
    """Rewrite `nodes/<name>` (health or held VIPs changed)."""


@dataclass(frozen=True)
class KeepaliveNow:
    """A VIP is waiting for a fresher lease deadline than the last keepalive gave."""


@dataclass(frozen=True)
class Regrant:
    """The lease is gone (or lapsed: `agent.arming`): grant a new one and register again."""

    reason: str = "lease lost"
    revoke: int = 0  # a lapsed lease, given up: revoked first so its VIPs move at once


@dataclass(frozen=True)
class Revoke:
    """Stopping: every address is gone and every VIP key released; the lease may go once
    the VIPs' next owners hold them (etcd then deletes `nodes/<name>`)."""


Action = (
    SetAddress
    | RemoveAddress
    | StartGarp
    | StopGarp
    | AckRelease
    | Refused
    | PublishNode
    | KeepaliveNow
    | Regrant
    | Revoke
)
