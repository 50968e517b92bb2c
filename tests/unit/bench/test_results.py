"""Result arithmetic: CPU per message, outside load, medians and goal verdicts."""

from __future__ import annotations

from typing import Any

from bench.results import GOALS, IdleRun, LoadRun, evaluate, figures, load_run_from, summarise


def loadgen_json(
    *,
    messages: int,
    proxy: tuple[int, int],
    backend: int,
    loadgen: int,
    busy: int,
    core_busy: int,
    window: float = 2.0,
) -> dict[str, Any]:
    """A load generator answer whose counters moved by the given ticks over the window."""
    start = {
        "groups": {
            "proxy": {"utime": 1000, "stime": 2000},
            "backend": {"utime": 10, "stime": 10},
            "loadgen": {"utime": 5, "stime": 5},
        },
        "machine": {
            "cpu": {"busy": 50_000, "total": 90_000},
            "cpu1": {"busy": 20_000, "total": 45_000},
        },
    }
    end = {
        "groups": {
            "proxy": {"utime": 1000 + proxy[0], "stime": 2000 + proxy[1]},
            "backend": {"utime": 10 + backend, "stime": 10},
            "loadgen": {"utime": 5 + loadgen, "stime": 5},
        },
        "machine": {
            "cpu": {"busy": 50_000 + busy, "total": 90_400},
            "cpu1": {"busy": 20_000 + core_busy, "total": 45_200},
        },
    }
    return {
        "messages": messages,
        "bytes": messages * 64,
        "window_s": window,
        "p50_us": 250.0,
        "p99_us": 900.0,
        "errors": 0,
        "clk_tck": 100,
        "start": start,
        "end": end,
    }


def run_from(raw: dict[str, Any], *, has_proxy: bool = True, target: str = "nginx") -> LoadRun:
    return load_run_from(
        raw, target=target, test="ws-small", rep=1, proxy_cpu="cpu1", has_proxy=has_proxy
    )


def test_cpu_per_message_from_proxy_ticks() -> None:
    """8000 messages for 10 user + 26 sys ticks (10 ms each) is 45 µs per message."""
    run = run_from(
        loadgen_json(messages=8000, proxy=(10, 26), backend=40, loadgen=40, busy=116, core_busy=36)
    )
    assert run.proxy_cpu_us == 45.0
    assert run.proxy_user_us == 12.5
    assert run.proxy_sys_us == 32.5
    assert run.rate == 4000.0
    assert run.mb_s == 8000 * 64 / 2.0 / 1e6


def test_outside_load_is_busy_time_not_ours() -> None:
    """Machine busy 156 ticks, ours 116, over 2 s at 100 Hz: 0.2 cores outside."""
    run = run_from(
        loadgen_json(messages=8000, proxy=(10, 26), backend=40, loadgen=40, busy=156, core_busy=66)
    )
    assert abs(run.outside_cores - 0.2) < 1e-9
    assert abs(run.outside_proxy_core - 0.15) < 1e-9


def test_outside_load_never_negative() -> None:
    """Counters sampled a hair apart can make ours exceed the machine's; that is zero, not less."""
    run = run_from(
        loadgen_json(messages=10, proxy=(10, 26), backend=40, loadgen=40, busy=100, core_busy=30)
    )
    assert run.outside_cores == 0.0
    assert run.outside_proxy_core == 0.0


def test_direct_has_no_proxy_figures() -> None:
    run = run_from(
        loadgen_json(messages=8000, proxy=(0, 0), backend=40, loadgen=40, busy=80, core_busy=0),
        has_proxy=False,
        target="direct",
    )
    assert run.proxy_cpu_us is None
    assert run.outside_proxy_core == 0.0


def test_a_failed_run_has_no_figures_and_stays_out_of_medians() -> None:
    failed = run_from({"messages": 0, "first_error": "connect: refused"})
    assert (
        failed.failed and failed.proxy_cpu_us is None and failed.first_error == "connect: refused"
    )
    assert summarise([failed]) == {}


def make(target: str, test: str, rep: int, ticks: int, messages: int = 10_000) -> LoadRun:
    return LoadRun(
        target, test, rep, messages, messages * 64, 2.0, 200.0, 800.0, 0, "", ticks, 0, 0.0, 0.0
    )


def test_summary_is_median_with_range() -> None:
    runs = [make("nginx", "ws-small", r, t) for r, t in ((1, 45), (2, 50), (3, 41))]
    s = summarise(runs)["ws-small"]["nginx"]["proxy_cpu_us"]
    assert (s.median, s.low, s.high, s.n) == (45.0, 41.0, 50.0, 3)


def test_goals_compare_the_subject_with_its_reference() -> None:
    runs = [
        make("nginx", "ws-small", 1, 45),
        make("haproxy-py", "ws-small", 1, 54),
        make("nginx-buf64k", "ws-large", 1, 133, 1000),
        make("haproxy-py", "ws-large", 1, 124, 1000),
        make("nginx", "http", 1, 44),
    ]
    idle = [
        IdleRun("haproxy", 10_000, 0, "", 15_000, 61_000),
        IdleRun("haproxy-py", 10_000, 0, "", 40_000, 66_000),
    ]
    results = {r.goal.test: r for r in evaluate(GOALS, figures(summarise(runs), idle))}
    assert results["ws-small"].ratio == 1.2 and results["ws-small"].met is False
    assert results["ws-large"].met is True
    assert results["http"].met is None  # haproxy-py was not measured
    assert results["idle"].value == 2.6 and results["idle"].met is True


def test_idle_per_connection() -> None:
    assert IdleRun("nginx", 5000, 0, "", 11_780, 100_776).kib_per_conn == (100_776 - 11_780) / 5000
    assert IdleRun("nginx", 0, 5000, "refused", 11_780, 11_780).kib_per_conn is None
