"""The result document and its Markdown table."""

from __future__ import annotations

import json

from bench.loadgen import WORKLOADS
from bench.report import document, render
from bench.results import IdleRun, LoadRun


def run(target: str, test: str, rep: int, ticks: int | None, messages: int = 12_000) -> LoadRun:
    return LoadRun(
        target,
        test,
        rep,
        messages,
        messages * 64,
        3.0,
        250.0,
        1300.0,
        0,
        "",
        ticks,
        0 if ticks is not None else None,
        0.05,
        0.02,
    )


def sample_doc(more: tuple[LoadRun, ...] = ()) -> dict:
    runs = [run("direct", "ws-small", 1, None), *more]
    for rep, (ngx, hpy) in enumerate(((54, 66), (60, 72), (57, 69)), start=1):
        runs += [run("nginx", "ws-small", rep, ngx), run("haproxy", "ws-small", rep, hpy)]
    idle = [
        IdleRun("nginx", 9800, 0, "", 12_000, 186_000),
        IdleRun("haproxy", 9800, 0, "", 15_000, 60_000),
    ]
    return document(
        runs=runs,
        idle=idle,
        failures={"haproxy-py": "haproxy-py check-config failed: bad key"},
        targets=["direct", "nginx", "haproxy", "haproxy-py"],
        settings={
            "reps": 3,
            "idle_conns": 9800,
            "idle_note": "",
            "outside_limit_cores": 0.1,
            "proxy_cpu": 1,
            "load_cpu": 0,
            "workloads": {"ws-small": vars(WORKLOADS["ws-small"])},
        },
        machine={"cpus": 2, "kernel": "6.1", "versions": {"nginx": "1.22.1"}},
        started="2026-11-25 18:00:00 UTC",
        finished="2026-11-25 18:09:00 UTC",
        duration_s=540.0,
    )


def test_document_is_json_and_carries_ratios_to_nginx() -> None:
    doc = json.loads(json.dumps(sample_doc()))
    assert doc["summary"]["ws-small"]["nginx"]["proxy_cpu_us"]["median"] == 47.5
    assert abs(doc["ratios"]["ws-small"]["haproxy"]["nginx"] - 57.5 / 47.5) < 1e-9
    assert (
        abs(doc["ratios"]["idle"]["nginx"]["haproxy"] - (174_000 / 9800) / (45_000 / 9800)) < 1e-9
    )


def test_table_shows_figures_ratios_and_failures() -> None:
    md = render(json.loads(json.dumps(sample_doc())))
    assert "| **nginx** | 47.5 (45.0–50.0) |" in md
    assert "1.21×" in md  # haproxy / nginx
    assert "| **haproxy-py** | failed (see below) |" in md
    assert "- **haproxy-py**: haproxy-py check-config failed: bad key" in md
    assert "| **haproxy** | 9800 | 15000 → 60000 | 4.59 | 1.00× | 0.26× | 0/0 |" in md
    assert "not measured" in md  # goals without a haproxy-py figure


def test_idle_connections_that_did_not_open_are_listed() -> None:
    doc = sample_doc()
    doc["idle"][0] = IdleRun(
        "nginx", 9330, 470, "connection reset by peer", 12_000, 177_000
    ).as_dict()
    md = render(json.loads(json.dumps(doc)))
    assert "- idle nginx: 470 of 9800 did not open (connection reset by peer)" in md


def test_no_idle_section_when_the_idle_test_was_skipped() -> None:
    doc = sample_doc()
    doc["idle"] = []
    assert "idle WebSocket connections" not in render(json.loads(json.dumps(doc)))


def test_the_floor_under_websocket_64b_is_stated_when_the_bare_relay_ran() -> None:
    assert "The floor under WebSocket 64 B" not in render(sample_doc())
    more = (run("uvloop-relay", "ws-small", 1, 63), run("haproxy-py", "ws-small", 1, 69))
    text = render(sample_doc(more))
    # ticks of 10 ms over 12,000 messages: 63 -> 52.5 µs, 69 -> 57.5; nginx's median 57 -> 47.5
    assert "`uvloop-relay` (bytes relayed on uvloop, no proxy work) costs 52.50 µs" in text
    assert "1.11× nginx; haproxy-py is 1.10× it" in text
