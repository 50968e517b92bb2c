"""What the decision core asks the loop to do: plain values, executed as etcd transactions.

Every action carries the revision it was decided on, so the loop writes it
with a compare-and-set and a stale decision fails instead of overwriting.
"""

from __future__ import annotations

from dataclasses import dataclass

from haproxy_py.cluster.records import Cause, ClusterPolicy, Request


@dataclass(frozen=True)
class AssignVip:
    """Write `vips/<vip>` for `node`, naming its `lease`: only if the key is absent or, with
    `replaces`, still at that mod revision (a vacated key: the release and the new
    assignment are one transaction).

    Bumps the epoch and appends an event naming `source` (the last owner) and `cause`.
    """

    vip: str
    node: str
    lease: int
    cause: Cause
    source: str | None = None
    request: str | None = None
    replaces: int = 0


@dataclass(frozen=True)
class ClearVip:
    """Delete a vacated `vips/<vip>` nobody takes this time (compare on mod_revision)."""

    vip: str
    mod_revision: int


@dataclass(frozen=True)
class ReleaseVip:
    """Ask the owner to let go: set `state = releasing` (compare on mod_revision)."""

    vip: str
    node: str
    cause: Cause
    mod_revision: int
    move_to: str | None = None
    request: str | None = None


@dataclass(frozen=True)
class RestoreVip:
    """The owner never acknowledged a release: set it back to `assigned`."""

    vip: str
    node: str
    mod_revision: int


@dataclass(frozen=True)
class WriteSettings:
    """Store new cluster settings (pause, drain...) in `config`."""

    settings: ClusterPolicy
    mod_revision: int


@dataclass(frozen=True)
class AnswerRequest:
    """Write `request.result` back into its key (compare on mod_revision)."""

    request: Request
    mod_revision: int


@dataclass(frozen=True)
class DeleteRequest:
    """Forget an answered request beyond the kept history."""

    request_id: str
    mod_revision: int


Action = (
    AssignVip | ClearVip | ReleaseVip | RestoreVip | WriteSettings | AnswerRequest | DeleteRequest
)


@dataclass(frozen=True)
class Decision:
    """The actions for one cycle and the sentence the loop logs for it."""

    actions: tuple[Action, ...]
    reason: str
