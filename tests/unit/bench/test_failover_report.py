"""The failover result summary and its Markdown table, side by side per stack."""

from __future__ import annotations

from typing import Any

from bench.failover import stacks
from bench.failover.__main__ import _origins
from bench.failover.report import render, summarize_trials


def trial(stack: str, scenario: str, gap: float | None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stack": stack,
        "scenario": scenario,
        "websockets": 0,
        "gap_ms": gap,
        "new_node_ms": gap,
        "arp_doubles": 0,
        "dual_ms": 0.0,
        "dual_at_end": False,
        "ws_all_back_ms": None,
        "ws_reconnected": None,
        "error": None,
    }
    row.update(extra)
    return row


TRIALS = [
    trial("haproxy-py", "kill", 2000.0, load=3.5),
    trial("haproxy-py", "kill", 2400.0, load=1.25),
    trial("haproxy-py", "kill", 2200.0, websockets=1000, ws_all_back_ms=2600.0, ws_reconnected=990),
    trial("keepalived-nginx", "kill", 3500.0, dual_ms=500.0, dual_at_end=True, arp_doubles=40),
    trial("keepalived-nginx", "kill", None, error="timed out after 30 s"),
]


def test_summary_separates_probe_trials_from_websocket_trials() -> None:
    summary = summarize_trials(TRIALS, ["haproxy-py", "keepalived-nginx"], ["kill"])
    ours = summary["haproxy-py"]["kill"]
    assert ours["trials"] == 2 and ours["ws_trials"] == 1 and ours["all_trials"] == 3
    assert ours["gap_ms"]["p50"] == 2200.0 and ours["gap_ms"]["max"] == 2400.0
    assert ours["ws_all_back_ms"]["max"] == 2600.0
    assert ours["dual_ms_total"] == 0 and ours["dual_trials"] == 0
    theirs = summary["keepalived-nginx"]["kill"]
    assert theirs["gap_ms"]["missing"] == 1
    assert (theirs["dual_ms_total"], theirs["dual_trials"], theirs["dual_at_end"]) == (500.0, 1, 1)
    assert theirs["errors"] == ["timed out after 30 s"]


def test_table_has_one_column_per_stack_and_names_failures() -> None:
    stacks = {"haproxy-py": "haproxy-py (TTL 2 s)", "keepalived-nginx": "keepalived (NGINX)"}
    doc = {
        "meta": {
            "started": "2026-01-01 00:00 UTC",
            "host": "lab",
            "cpus": 2,
            "load": "1.0",
            "repeats": 2,
            "ws_repeats": 1,
            "ws_clients": 1000,
            "probe_interval_ms": 5.0,
            "hold_s": 0.5,
            "stack_s": {"haproxy-py": 300, "keepalived-nginx": 480},
            "wall_s": 810,
            "load_end": "2.0",
        },
        "stacks": stacks,
        "trials": TRIALS,
        "scenarios": ["kill"],
        "summary": summarize_trials(TRIALS, list(stacks), ["kill"]),
    }
    text = render(doc)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| scenario"))
    assert header == "| scenario | measure | haproxy-py (TTL 2 s) | keepalived (NGINX) |"
    gap_row = next(line for line in lines if "client gap" in line)
    assert gap_row.startswith("| SIGKILL of the active node |")
    assert "| 2200 / 2380 / 2400 |" in gap_row and "(1 never)" in gap_row
    arp_row = next(line for line in lines if "answering ARP" in line)
    assert "| 0 (0/3 trials) | 40 (1/2 trials) |" in arp_row
    dual_row = next(line for line in lines if "address on two nodes" in line)
    assert "| 0 (0/3 trials) |" in dual_row
    assert "500 (1/2 trials), still on two nodes at the end in 1" in dual_row
    ws_row = next(line for line in lines if "WebSocket" in line and line.startswith("|"))
    assert "2.60 / 2.60 (0.40 / 0.40 after the move), 990 of 1000 reconnected, n=1" in ws_row
    assert "- keepalived-nginx / kill: timed out after 30 s" in lines
    load = "load average 1.0 at the start, at the faults median (range): haproxy-py 3.5 (1.2-3.5)"
    assert load + "; 2.0 at the end" in text
    assert "Wall time: 13.5 min in all: haproxy-py 5.0 min, keepalived-nginx 8.0 min" in text


def test_haproxy_py_runs_once_per_timing_profile_keepalived_in_any_lab() -> None:
    assert [stacks.name_of(p) for p in ("default", "fast")] == ["haproxy-py", "haproxy-py-fast"]
    assert stacks.profile_of("haproxy-py-fast") == "fast"
    assert stacks.profile_of("keepalived-nginx") is None
    assert stacks.STACKS[:2] == ("haproxy-py", "haproxy-py-fast")


def test_trials_from_before_the_arp_watcher_show_no_answerer_count() -> None:
    old = [
        {k: v for k, v in trial("keepalived-nginx", "kill", 3000.0).items() if k != "arp_doubles"}
    ]
    summary = summarize_trials(old, ["keepalived-nginx"], ["kill"])
    assert summary["keepalived-nginx"]["kill"]["arp_doubles"] is None


def test_a_column_kept_twice_still_names_the_run_it_came_from() -> None:
    first = "run 2026-11-25 19:55 UTC, load average 0.3 at its start"
    earlier = f"planned, kill: {first}"
    now = "run 2026-12-03 18:14 UTC, load average 79.2 at its start"
    assert _origins(["planned", "kill"], now, earlier) == f"planned, kill: {first}"
    assert _origins(["kill", "stolen"], now, earlier) == f"kill: {first}; stolen: {now}"
    assert _origins(["kill"], now, "") == f"kill: {now}"
