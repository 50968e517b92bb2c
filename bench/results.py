"""Result records and their arithmetic: CPU per message, outside load, medians, ratios, goals.

Everything here is pure so that it can be unit tested; `runner` feeds it the
load generator's JSON and `report` renders what it returns.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SUBJECT = "haproxy-py"


@dataclass(frozen=True)
class LoadRun:
    """One measurement window of one test through one target."""

    target: str
    test: str
    rep: int
    messages: int
    payload_bytes: int
    window_s: float
    p50_us: float
    p99_us: float
    errors: int
    first_error: str
    proxy_user_ticks: int | None  # None when there is no proxy (direct)
    proxy_sys_ticks: int | None
    outside_cores: float  # CPU used by processes outside the test, whole machine
    outside_proxy_core: float  # the same, on the proxy's core only
    tick_us: float = 10_000.0
    attempts: int = 1

    @property
    def rate(self) -> float:
        return self.messages / self.window_s if self.window_s > 0 else 0.0

    @property
    def mb_s(self) -> float:
        """Echoed payload per second, one way, in MB (10^6 bytes)."""
        return self.payload_bytes / self.window_s / 1e6 if self.window_s > 0 else 0.0

    def _per_message(self, ticks: int | None) -> float | None:
        if ticks is None or self.messages == 0:
            return None
        return ticks * self.tick_us / self.messages

    @property
    def proxy_cpu_us(self) -> float | None:
        if self.proxy_user_ticks is None or self.proxy_sys_ticks is None:
            return None
        return self._per_message(self.proxy_user_ticks + self.proxy_sys_ticks)

    @property
    def proxy_user_us(self) -> float | None:
        return self._per_message(self.proxy_user_ticks)

    @property
    def proxy_sys_us(self) -> float | None:
        return self._per_message(self.proxy_sys_ticks)

    @property
    def failed(self) -> bool:
        return self.messages == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "rate": self.rate,
            "mb_s": self.mb_s,
            "proxy_cpu_us": self.proxy_cpu_us,
            "proxy_user_us": self.proxy_user_us,
            "proxy_sys_us": self.proxy_sys_us,
        }


def _delta(start: Mapping[str, Any], end: Mapping[str, Any], key: str) -> int:
    return int(end.get(key, 0)) - int(start.get(key, 0))


def load_run_from(
    raw: Mapping[str, Any], *, target: str, test: str, rep: int, proxy_cpu: str, has_proxy: bool
) -> LoadRun:
    """Turn the load generator's JSON into a LoadRun.

    Outside load is the machine's busy time minus every process of the test
    (proxy, backend, load generator), over the same window; on the proxy's core
    everything but the proxy is outside load, as the others are pinned elsewhere.
    """
    tck = int(raw.get("clk_tck", 100))
    window = float(raw.get("window_s", 0.0))
    start, end = raw.get("start") or {}, raw.get("end") or {}
    groups_a, groups_b = start.get("groups", {}), end.get("groups", {})
    cpu = {
        name: (
            _delta(groups_a.get(name, {}), times, "utime"),
            _delta(groups_a.get(name, {}), times, "stime"),
        )
        for name, times in groups_b.items()
    }
    ours = sum(u + s for u, s in cpu.values())
    machine_a, machine_b = start.get("machine", {}), end.get("machine", {})
    busy = _delta(machine_a.get("cpu", {}), machine_b.get("cpu", {}), "busy")
    core_busy = _delta(machine_a.get(proxy_cpu, {}), machine_b.get(proxy_cpu, {}), "busy")
    proxy = cpu.get("proxy") if has_proxy else None
    scale = window * tck if window > 0 else 1.0
    return LoadRun(
        target=target,
        test=test,
        rep=rep,
        messages=int(raw.get("messages", 0)),
        payload_bytes=int(raw.get("bytes", 0)),
        window_s=window,
        p50_us=float(raw.get("p50_us", 0.0)),
        p99_us=float(raw.get("p99_us", 0.0)),
        errors=int(raw.get("errors", 0)),
        first_error=str(raw.get("first_error", "")),
        proxy_user_ticks=proxy[0] if proxy else None,
        proxy_sys_ticks=proxy[1] if proxy else None,
        outside_cores=max(0.0, (busy - ours) / scale),
        outside_proxy_core=max(0.0, (core_busy - (sum(proxy) if proxy else 0)) / scale),
        tick_us=1e6 / tck,
    )


@dataclass(frozen=True)
class IdleRun:
    """Proxy memory with N idle WebSocket connections open through it."""

    target: str
    connections: int
    errors: int
    first_error: str
    rss_before_kib: int
    rss_after_kib: int
    checked: int = 0
    checked_ok: int = 0
    open_s: float = 0.0

    @property
    def kib_per_conn(self) -> float | None:
        if self.connections == 0:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.connections

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "kib_per_conn": self.kib_per_conn,
        }


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int


def stat(values: Iterable[float | None]) -> Stat | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Stat(statistics.median(present), min(present), max(present), len(present))


LOAD_METRICS = ("proxy_cpu_us", "proxy_user_us", "proxy_sys_us", "p50_us", "p99_us", "rate", "mb_s")


def summarise(runs: Iterable[LoadRun]) -> dict[str, dict[str, dict[str, Stat]]]:
    """test -> target -> metric -> Stat over the repetitions that produced messages."""
    grouped: dict[tuple[str, str], list[LoadRun]] = {}
    for run in runs:
        if not run.failed:
            grouped.setdefault((run.test, run.target), []).append(run)
    out: dict[str, dict[str, dict[str, Stat]]] = {}
    for (test, target), group in grouped.items():
        stats = {m: stat(getattr(r, m) for r in group) for m in LOAD_METRICS}
        out.setdefault(test, {})[target] = {m: s for m, s in stats.items() if s is not None}
    return out


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


@dataclass(frozen=True)
class Goal:
    """A target of the performance issue: SUBJECT's figure ≤ limit × reference's."""

    title: str
    test: str
    metric: str
    reference: str
    limit: float


GOALS = (
    Goal(
        "WebSocket 64 B at a fixed rate: proxy CPU per message",
        "ws-small",
        "proxy_cpu_us",
        "nginx",
        1.0,
    ),
    Goal(
        "WebSocket 64 KiB: proxy CPU per message", "ws-large", "proxy_cpu_us", "nginx-buf64k", 1.0
    ),
    Goal(  # access logs on both sides (bench/configs.py)
        "HTTP GET keep-alive: proxy CPU per request", "http", "proxy_cpu_us", "nginx", 1.5
    ),
    Goal("Idle WebSocket: proxy RSS per connection", "idle", "kib_per_conn", "haproxy", 1.0),
)


@dataclass(frozen=True)
class GoalResult:
    goal: Goal
    value: float | None
    reference_value: float | None

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.reference_value)

    @property
    def met(self) -> bool | None:
        r = self.ratio
        return None if r is None else r <= self.goal.limit


def figures(
    summary: Mapping[str, Mapping[str, Mapping[str, Stat]]], idle: Iterable[IdleRun]
) -> dict[str, dict[str, dict[str, float]]]:
    """test -> target -> metric -> the median figure goals and ratios are computed from."""
    out = {
        test: {
            target: {m: s.median for m, s in metrics.items()} for target, metrics in targets.items()
        }
        for test, targets in summary.items()
    }
    for run in idle:
        per_conn = run.kib_per_conn
        if per_conn is not None:
            out.setdefault("idle", {})[run.target] = {"kib_per_conn": per_conn}
    return out


def evaluate(
    goals: Iterable[Goal], figs: Mapping[str, Mapping[str, Mapping[str, float]]]
) -> list[GoalResult]:
    def value(test: str, target: str, metric: str) -> float | None:
        return figs.get(test, {}).get(target, {}).get(metric)

    return [
        GoalResult(g, value(g.test, SUBJECT, g.metric), value(g.test, g.reference, g.metric))
        for g in goals
    ]
