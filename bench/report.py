"""The result document (latest.json) and its Markdown table (latest.md).

`document()` gathers a run into plain JSON data; `render()` turns such a
document into Markdown, so a table can be rebuilt from any saved JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.results import GOALS, SUBJECT, IdleRun, LoadRun, evaluate, figures, ratio, summarise

FLOOR = "uvloop-relay"  # bench/barerelay.py

# The figure each test is ranked by, and the targets its ratios are taken against.
RANKING = {
    "ws-small": ("proxy_cpu_us", ("nginx",)),
    "ws-large": ("proxy_cpu_us", ("nginx-buf64k", "nginx")),
    "http": ("proxy_cpu_us", ("nginx",)),
    "idle": ("kib_per_conn", ("haproxy", "nginx")),
}


def document(
    *,
    runs: Sequence[LoadRun],
    idle: Sequence[IdleRun],
    failures: Mapping[str, str],
    targets: Sequence[str],
    settings: Mapping[str, Any],
    machine: Mapping[str, Any],
    started: str,
    finished: str,
    duration_s: float,
) -> dict[str, Any]:
    summary = summarise(runs)
    figs = figures(summary, idle)
    ratios = {
        test: {
            target: {
                ref: ratio(values.get(metric), figs.get(test, {}).get(ref, {}).get(metric))
                for ref in refs
            }
            for target, values in figs.get(test, {}).items()
        }
        for test, (metric, refs) in RANKING.items()
    }
    return {
        "started": started,
        "finished": finished,
        "duration_s": round(duration_s, 1),
        "machine": dict(machine),
        "settings": dict(settings),
        "targets": list(targets),
        "failures": dict(failures),
        "summary": {
            test: {
                target: {m: dataclasses.asdict(s) for m, s in metrics.items()}
                for target, metrics in per.items()
            }
            for test, per in summary.items()
        },
        "ratios": ratios,
        "goals": [
            {
                **dataclasses.asdict(g.goal),
                "subject": SUBJECT,
                "value": g.value,
                "reference_value": g.reference_value,
                "ratio": g.ratio,
                "met": g.met,
            }
            for g in evaluate(GOALS, figs)
        ],
        "runs": [r.as_dict() for r in runs],
        "idle": [r.as_dict() for r in idle],
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def _stat(doc: Mapping[str, Any], test: str, target: str, metric: str, digits: int = 1) -> str:
    s = doc["summary"].get(test, {}).get(target, {}).get(metric)
    if s is None:
        return "–"
    if s["n"] == 1 or s["low"] == s["high"]:
        return _num(s["median"], digits)
    return f"{_num(s['median'], digits)} ({_num(s['low'], digits)}–{_num(s['high'], digits)})"


def _ratio(doc: Mapping[str, Any], test: str, target: str, ref: str) -> str:
    r = doc["ratios"].get(test, {}).get(target, {}).get(ref)
    return "–" if r is None else f"{r:.2f}×"


def _floor(doc: Mapping[str, Any]) -> list[str]:
    """WebSocket 64 B against what the event loop alone costs, when that was measured."""
    ws = doc["summary"].get("ws-small", {})
    relay, ours = (ws.get(t, {}).get("proxy_cpu_us") for t in (FLOOR, SUBJECT))
    if relay is None or ours is None:
        return []
    return [
        f"The floor under WebSocket 64 B: `{FLOOR}` (bytes relayed on uvloop, no proxy work) "
        f"costs {_num(relay['median'], 2)} µs per message in this run, "
        f"{_ratio(doc, 'ws-small', FLOOR, 'nginx')} nginx; {SUBJECT} is "
        f"{ours['median'] / relay['median']:.2f}× it (`bench/README.md`).",
        "",
    ]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _outside(doc: Mapping[str, Any], test: str, target: str) -> str:
    values = [
        r["outside_cores"] for r in doc["runs"] if r["test"] == test and r["target"] == target
    ]
    return f"{max(values):.2f}" if values else "–"


def _load_section(
    doc: Mapping[str, Any], test: str, columns: Sequence[tuple[str, Callable[[str], str]]]
) -> list[str]:
    workload = doc["settings"]["workloads"].get(test)
    if workload is None:  # not part of this run
        return []
    rows = []
    for target in doc["targets"]:
        if target in doc["failures"]:
            rows.append([f"**{target}**", "failed (see below)"] + [""] * (len(columns) - 1))
        elif target in doc["summary"].get(test, {}):
            rows.append([f"**{target}**"] + [cell(target) for _, cell in columns])
    return [f"## {workload['title']}", "", *_table(["target", *(h for h, _ in columns)], rows), ""]


def _idle_section(doc: Mapping[str, Any]) -> list[str]:
    if not doc["idle"]:
        return []
    rows = [
        [
            f"**{r['target']}**",
            str(r["connections"]),
            f"{r['rss_before_kib']} → {r['rss_after_kib']}",
            _num(r["kib_per_conn"], 2),
            _ratio(doc, "idle", r["target"], "haproxy"),
            _ratio(doc, "idle", r["target"], "nginx"),
            f"{r['checked_ok']}/{r['checked']}",
        ]
        for r in doc["idle"]
    ]
    headers = ["target", "open", "RSS KiB before → with them", "KiB per connection"]
    headers += ["× haproxy", "× nginx", "sampled still echo"]
    out = [f"## {doc['settings']['idle_conns']} idle WebSocket connections: proxy memory", ""]
    out += [*_table(headers, rows), ""]
    if doc["settings"].get("idle_note"):
        out += [f"Note: {doc['settings']['idle_note']}.", ""]
    return out


def render(doc: Mapping[str, Any]) -> str:
    s = doc["settings"]
    out = [
        "# Proxy benchmark: direct, nginx, haproxy and haproxy-py side by side",
        "",
        f"Run {doc['started']} – {doc['finished']} ({doc['duration_s']:.0f} s), "
        f"{s['reps']} repetitions; figures are the median (min–max). "
        f"Each proxy runs alone on CPU {s['proxy_cpu']}; the backend and the load generator "
        f"share CPU {s['load_cpu']}. Proxy CPU is utime+stime of the proxy's processes over the "
        "measurement window divided by the messages in it. Ratios are to the named target "
        "in this same run. Outside load is the CPU used by other processes on the shared "
        f"machine during the window (a window at or above {s['outside_limit_cores']:.2f} cores "
        "was measured again, at most twice, keeping the quietest).",
        "",
        "## Goals",
        "",
    ]
    goal_rows = []
    for g in doc["goals"]:
        met = {True: "**met**", False: "not met", None: "not measured"}[g["met"]]
        goal_rows.append(
            [
                g["title"],
                _num(g["value"], 2),
                f"{g['reference']}: {_num(g['reference_value'], 2)}",
                "–" if g["ratio"] is None else f"{g['ratio']:.2f}×",
                f"≤ {g['limit']:.1f}×",
                met,
            ]
        )
    out += _table(
        [f"goal ({SUBJECT})", SUBJECT, "reference", "ratio", "target", "verdict"], goal_rows
    )
    out.append("")
    out += _floor(doc)
    if doc.get("profiles"):
        out += [
            f"Where {SUBJECT}'s CPU goes under each workload: `profile.md` beside this file.",
            "",
        ]

    def stat(test: str, metric: str, digits: int = 1) -> Callable[[str], str]:
        return lambda t: _stat(doc, test, t, metric, digits)

    def pair(test: str, a: str, b: str, digits: int = 0) -> Callable[[str], str]:
        return lambda t: f"{stat(test, a, digits)(t)} / {stat(test, b, digits)(t)}"

    def vs(test: str, ref: str) -> Callable[[str], str]:
        return lambda t: _ratio(doc, test, t, ref)

    def outside(test: str) -> Callable[[str], str]:
        return lambda t: _outside(doc, test, t)

    out += _load_section(
        doc,
        "ws-small",
        [
            ("proxy CPU µs/msg", stat("ws-small", "proxy_cpu_us")),
            ("user / sys µs", pair("ws-small", "proxy_user_us", "proxy_sys_us", 1)),
            ("× nginx", vs("ws-small", "nginx")),
            ("p50 / p99 µs", pair("ws-small", "p50_us", "p99_us")),
            ("msg/s", stat("ws-small", "rate", 0)),
            ("max outside load", outside("ws-small")),
        ],
    )
    out += _load_section(
        doc,
        "ws-large",
        [
            ("proxy CPU µs/msg", stat("ws-large", "proxy_cpu_us")),
            ("× nginx-buf64k", vs("ws-large", "nginx-buf64k")),
            ("× nginx", vs("ws-large", "nginx")),
            ("MB/s (one way)", stat("ws-large", "mb_s")),
            ("p50 / p99 µs", pair("ws-large", "p50_us", "p99_us")),
            ("max outside load", outside("ws-large")),
        ],
    )
    out += _load_section(
        doc,
        "http",
        [
            ("proxy CPU µs/req", stat("http", "proxy_cpu_us")),
            ("user / sys µs", pair("http", "proxy_user_us", "proxy_sys_us", 1)),
            ("× nginx", vs("http", "nginx")),
            ("p50 / p99 µs", pair("http", "p50_us", "p99_us")),
            ("req/s", stat("http", "rate", 0)),
            ("max outside load", outside("http")),
        ],
    )
    out += _idle_section(doc)
    out += capacity_section(doc.get("capacity"))
    if doc["failures"]:
        out += ["## Targets that could not be measured", ""]
        out += [f"- **{name}**: {reason}" for name, reason in doc["failures"].items()]
        out.append("")
    errors = [
        f"- rep {r['rep']} {r['target']} {r['test']}: {r['errors']} ({r['first_error']})"
        for r in doc["runs"]
        if r["errors"]
    ] + [
        f"- idle {r['target']}: {r['errors']} of {r['connections'] + r['errors']} did not open "
        f"({r['first_error']})"
        for r in doc["idle"]
        if r["errors"]
    ]
    if errors:
        out += ["## Errors during load", "", *errors, ""]
    reruns = sum(r["attempts"] - 1 for r in doc["runs"])
    versions = ", ".join(f"{k} {v}" for k, v in doc["machine"].get("versions", {}).items())
    out += [
        "## Machine",
        "",
        f"{doc['machine'].get('cpus')} CPUs, kernel {doc['machine'].get('kernel')}; {versions}. "
        f"{reruns} window(s) were measured again because of outside load.",
        "",
    ]
    if doc.get("load_average"):
        start, end = doc["load_average"]
        out += [
            "Load average of the machine (1/5/15 min) at the start: "
            + " / ".join(f"{x:.2f}" for x in start)
            + "; at the end: "
            + " / ".join(f"{x:.2f}" for x in end)
            + ".",
            "",
        ]
    return "\n".join(out)


def capacity_ratio(ours: float | None, nginx: float | None, top: float | None) -> str:
    """haproxy-py's rate over nginx's; a rate at the ladder's top is only a lower bound."""
    if not ours or not nginx:
        return "–"
    ratio = f"{ours / nginx:.2f}×"
    if ours == top and nginx == top:
        return "both at the ladder's top"
    return f"≥ {ratio}" if ours == top else f"≤ {ratio}" if nginx == top else ratio


def capacity_section(cap: Mapping[str, Any] | None) -> list[str]:
    """The unpinned ladders, their ratio, and haproxy-py's spread over its workers."""
    if not cap:
        return []
    out = [
        "## Capacity: every core, workers = auto against nginx `worker_processes auto`",
        "",
        "Unpinned; the highest offered rate completed at ≥ 95 % without errors with "
        "p99 ≤ 10 ms (WebSocket 64 B ping-pong on 100 connections; HTTP keep-alive on 50). "
        "The load generator and the backend share the same cores.",
        "",
    ]
    targets = cap["targets"]
    rows = []
    for mode, label in (("ws", "WebSocket msg/s"), ("http", "HTTP req/s")):
        top = cap.get("tops", {}).get(mode)
        sustained = {name: t["sustained"].get(mode) for name, t in targets.items()}
        rows.append(
            [
                label,
                *(("≥ " if v == top else "") + _num(v, 0) for v in sustained.values()),
                capacity_ratio(sustained.get("haproxy-py-auto"), sustained.get("nginx-auto"), top),
                "≥ 0.85×",
            ]
        )
    out += _table(["load", *targets, "ratio", "goal"], rows)
    out.append("")
    for name, t in targets.items():
        for mode, steps in t["ladders"].items():
            ladder = ", ".join(
                f"{s['offered']:.0f}→{s['achieved']:.0f} (p99 {s['p99_us'] / 1000:.1f} ms)"
                for s in steps
            )
            out.append(f"- {name} {mode}: {ladder}")
    out.append("")
    spread = cap.get("spread")
    if spread:
        counts = ", ".join(f"worker {k}: {v:.0f}" for k, v in spread["connections"].items())
        baseline = ", ".join(f"{v / 1024:.1f} MiB" for v in spread["baseline_kib"].values())
        out += [
            f"1,000 idle WebSockets over the workers: {counts}; max/min "
            f"{spread['ratio']:.2f} (goal ≤ 1.3). RSS before any connection, master then "
            f"workers: {baseline} (the fixed per-process baseline); growth over all processes "
            f"{spread['kib_per_conn']:.2f} KiB per WebSocket."
            + (f" Error: {spread['error']}" if spread.get("error") else ""),
            "",
        ]
    return out
