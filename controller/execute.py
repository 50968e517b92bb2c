"""Carrying out decided actions as etcd transactions, fenced by our leadership.

Each action is one transaction that compares what the decision was based on
(the key's absence or mod revision) plus our leader key's create revision.
The first compare that fails stops the batch: the view was stale, and the
loop re-reads and decides again rather than forcing anything.

An assignment is the only ownership change: its transaction writes
`vips/<vip>` naming the new owner's lease (no lease is bound to the key: see
`controller.vacancy`) where the key is absent or still the vacated one, bumps
`epoch` and writes `events/<epoch>`, dropping the event that falls out of the
kept history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog

from controller.actions import (
    Action,
    AnswerRequest,
    AssignVip,
    ClearVip,
    DeleteRequest,
    ReleaseVip,
    RestoreVip,
    WriteSettings,
)
from haproxy_py.cluster.records import ClusterView, Event, VipAssignment
from haproxy_py.cluster.storeapi import (
    Compare,
    Delete,
    KVStore,
    Op,
    Put,
    absent,
    mod_revision_is,
    value_is,
)
from haproxy_py.cluster.storeerrors import LeaseLost

log = structlog.get_logger(__name__)


@dataclass
class Outcome:
    """What a batch achieved: how many actions landed, and the ownership changes among them."""

    applied: int = 0
    assignments: int = 0
    conflict: str | None = None


class Executor:
    """Writes one decision's actions for the leader whose fence compares are given."""

    def __init__(
        self,
        store: KVStore,
        fence: Callable[[], list[Compare]],
        event_history: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = store.schema
        self.fence = fence
        self.event_history = event_history
        self.clock = clock

    async def run(
        self, view: ClusterView, actions: Sequence[Action], unowned_since: dict[str, float]
    ) -> Outcome:
        outcome = Outcome()
        epoch = _EpochGuard(self.keys.epoch, view)
        for action in actions:
            ok = await self._apply(view, action, epoch, unowned_since)
            if not ok:
                outcome.conflict = f"{type(action).__name__} for {_subject(action)} lost a race"
                break
            outcome.applied += 1
            if isinstance(action, AssignVip):
                outcome.assignments += 1
        return outcome

    async def _apply(
        self,
        view: ClusterView,
        action: Action,
        epoch: _EpochGuard,
        unowned_since: dict[str, float],
    ) -> bool:
        now = self.clock()
        if isinstance(action, AssignVip):
            return await self._assign(action, epoch, now, unowned_since.get(action.vip))
        if isinstance(action, ReleaseVip | RestoreVip):
            current = view.vips[action.vip]
            key = self.keys.vip(action.vip)
            if isinstance(action, ReleaseVip):
                record = replace(
                    current,
                    state="releasing",
                    move_to=action.move_to,
                    request=action.request,
                    releasing_since=now,
                )
            else:
                record = replace(
                    current, state="assigned", move_to=None, request=None, releasing_since=None
                )
            ok = await self._txn(
                [mod_revision_is(key, action.mod_revision)], [Put(key, record.to_json())]
            )
            if ok and isinstance(action, ReleaseVip):
                unowned_since[action.vip] = now  # the owner may drop the address from now on
            return ok
        if isinstance(action, ClearVip):
            key = self.keys.vip(action.vip)
            return await self._txn([mod_revision_is(key, action.mod_revision)], [Delete(key)])
        if isinstance(action, WriteSettings):
            key = self.keys.config
            guard = (
                mod_revision_is(key, action.mod_revision) if action.mod_revision else absent(key)
            )
            return await self._txn([guard], [Put(key, action.settings.to_json())])
        if isinstance(action, AnswerRequest):
            key = self.keys.request(action.request.id)
            return await self._txn(
                [mod_revision_is(key, action.mod_revision)],
                [Put(key, action.request.to_json())],
            )
        key = self.keys.request(action.request_id)
        return await self._txn([mod_revision_is(key, action.mod_revision)], [Delete(key)])

    async def _assign(
        self, action: AssignVip, epoch: _EpochGuard, now: float, unowned: float | None
    ) -> bool:
        seq = epoch.value + 1
        # A VIP never owned before has no gap to report.
        gap_ms = None
        if unowned is not None and action.source is not None:
            gap_ms = round((now - unowned) * 1000, 3)
        record = VipAssignment(
            vip=action.vip,
            node=action.node,
            epoch=seq,
            since=now,
            cause=action.cause,
            request=action.request,
            lease=action.lease,
        )
        event = Event(
            seq=seq,
            time=now,
            vip=action.vip,
            source=action.source,
            target=action.node,
            cause=action.cause,
            gap_ms=gap_ms,
            request=action.request,
        )
        key = self.keys.vip(action.vip)
        ops: list[Op] = [
            Put(key, record.to_json()),
            Put(self.keys.epoch, str(seq).encode()),
            Put(self.keys.event(seq), event.to_json()),
        ]
        if seq > self.event_history:
            ops.append(Delete(self.keys.event(seq - self.event_history)))
        vacant = mod_revision_is(key, action.replaces) if action.replaces else absent(key)
        ok = await self._txn([vacant, epoch.compare()], ops)
        if ok:
            epoch.advance(seq)
            log.info(
                "vip assigned",
                vip=action.vip,
                to=action.node,
                source=action.source,
                cause=action.cause,
                epoch=seq,
                gap_ms=gap_ms,
                request=action.request,
            )
        return ok

    async def _txn(self, compares: list[Compare], ops: list[Op]) -> bool:
        try:
            return await self.store.txn([*compares, *self.fence()], ops)
        except LeaseLost:
            return False  # the new owner's lease died meanwhile: re-read and decide again


class _EpochGuard:
    """Compare on the epoch we last saw or wrote, so two writers can never reuse a number."""

    def __init__(self, key: str, view: ClusterView) -> None:
        self.key = key
        self.value = view.epoch
        self._mod_revision = view.epoch_mod_revision
        self._written = False

    def compare(self) -> Compare:
        if self._written:
            return value_is(self.key, str(self.value).encode())
        if self._mod_revision == 0:
            return absent(self.key)
        return mod_revision_is(self.key, self._mod_revision)

    def advance(self, value: int) -> None:
        self.value = value
        self._written = True


def _subject(action: Action) -> str:
    if isinstance(action, AnswerRequest):
        return f"request {action.request.id}"
    if isinstance(action, DeleteRequest):
        return f"request {action.request_id}"
    if isinstance(action, WriteSettings):
        return "config"
    return action.vip
