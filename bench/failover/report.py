"""The failover benchmark's result document and its Markdown table (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.failover.stacks import SCENARIO_TITLES
from bench.failover.stats import summarize


def summarize_trials(
    trials: Sequence[Mapping[str, Any]], stacks: Sequence[str], scenarios: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per stack and scenario: gap statistics from the probe-only trials, split-brain totals
    from every trial, and the WebSocket fleet's return times from the fleet trials."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for stack in stacks:
        out[stack] = {}
        for scenario in scenarios:
            mine = [t for t in trials if t["stack"] == stack and t["scenario"] == scenario]
            plain = [t for t in mine if not t["websockets"]]
            fleet = [t for t in mine if t["websockets"]]
            out[stack][scenario] = {
                "trials": len(plain),
                "gap_ms": summarize(t["gap_ms"] for t in plain).as_dict(),
                "new_node_ms": summarize(t["new_node_ms"] for t in plain).as_dict(),
                # None: trials from before the ARP watcher (addresses only)
                "arp_doubles": (
                    sum(t["arp_doubles"] for t in mine)
                    if all("arp_doubles" in t for t in mine)
                    else None
                ),
                "arp_trials": sum(1 for t in mine if t.get("arp_doubles", 0)),
                "dual_ms_total": round(sum(t["dual_ms"] for t in mine), 1),
                "dual_trials": sum(1 for t in mine if t["dual_ms"] > 0),
                "dual_at_end": sum(1 for t in mine if t["dual_at_end"]),
                "all_trials": len(mine),
                "errors": [t["error"] for t in mine if t["error"]],
                "ws_trials": len(fleet),
                "ws_all_back_ms": summarize(t["ws_all_back_ms"] for t in fleet).as_dict(),
                "ws_after_move_ms": summarize(_after_move(t) for t in fleet).as_dict(),
                "ws_reconnected": [t["ws_reconnected"] for t in fleet],
                "ws_clients": max((t["websockets"] for t in fleet), default=0),
            }
    return out


def _after_move(trial: Mapping[str, Any]) -> float | None:
    """Fleet back, counted from the new node's first answer instead of from the fault."""
    back, moved = trial["ws_all_back_ms"], trial["new_node_ms"]
    return None if back is None or moved is None else max(0.0, back - moved)


def _n(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value / scale:.{digits}f}"


def _triple(s: Mapping[str, Any]) -> str:
    if not s["count"]:
        return "–"
    text = f"{_n(s['p50'])} / {_n(s['p95'])} / {_n(s['max'])}"
    return text + (f" ({s['missing']} never)" if s["missing"] else "")


def _dual(cell: Mapping[str, Any]) -> str:
    if not cell["all_trials"]:
        return "–"
    text = f"{_n(cell['dual_ms_total'])} ({cell['dual_trials']}/{cell['all_trials']} trials)"
    if cell["dual_at_end"]:
        text += f", still on two nodes at the end in {cell['dual_at_end']}"
    return text


def _answerers(cell: Mapping[str, Any]) -> str:
    if not cell["all_trials"] or cell["arp_doubles"] is None:
        return "–"
    return f"{cell['arp_doubles']} ({cell['arp_trials']}/{cell['all_trials']} trials)"


def _ws(cell: Mapping[str, Any]) -> str:
    s, moved = cell["ws_all_back_ms"], cell["ws_after_move_ms"]
    if not s["count"]:
        return "–"
    text = f"{_n(s['p50'], 1000, 2)} / {_n(s['max'], 1000, 2)}"
    if moved["count"] > moved["missing"]:
        text += f" ({_n(moved['p50'], 1000, 2)} / {_n(moved['max'], 1000, 2)} after the move)"
    again = [d for d in cell["ws_reconnected"] if d is not None]
    if again:
        low, high = min(again), max(again)
        count = str(low) if low == high else f"{low}-{high}"
        text += f", {count} of {cell['ws_clients']} reconnected"
    text += f", n={s['count']}"
    return text + (f", {s['missing']} never all back" if s["missing"] else "")


def _load(doc: Mapping[str, Any]) -> str:
    """The 1-minute load average at the start, at each fault (median and range) and the end."""
    meta = doc["meta"]
    text = f"load average {meta['load']} at the start"
    at_faults = []
    for stack in doc["stacks"]:
        during = sorted(t["load"] for t in doc["trials"] if t["stack"] == stack and t.get("load"))
        if during:
            median = during[len(during) // 2]
            at_faults.append(f"{stack} {median:.1f} ({during[0]:.1f}-{during[-1]:.1f})")
    if at_faults:
        text += ", at the faults median (range): " + ", ".join(at_faults)
    return text + (f"; {meta['load_end']} at the end" if "load_end" in meta else "")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


ROWS = (
    ("client gap p50 / p95 / max, ms", lambda c: _triple(c["gap_ms"])),
    ("fault → new node p50 / p95 / max, ms", lambda c: _triple(c["new_node_ms"])),
    ("two nodes answering ARP: instants (trials)", _answerers),
    ("VIP address on two nodes: total ms (trials)", _dual),
    ("WebSocket clients all back p50 / max, s", _ws),
)


def render(doc: Mapping[str, Any]) -> str:
    """The Markdown page: one row per scenario and measure, one column per stack."""
    meta = doc["meta"]
    stacks: list[str] = list(doc["stacks"])
    titles = [doc["stacks"][s] for s in stacks]
    summary = doc["summary"]
    lines = [
        "# Failover: haproxy-py against keepalived",
        "",
        f"Run {meta['started']} on {meta['host']} ({meta['cpus']} CPUs, {_load(doc)}), "
        f"{meta['repeats']} trials per scenario and stack, "
        f"{meta['ws_repeats']} more with {meta['ws_clients']} WebSocket clients. Probe: a new "
        f"connection to the VIP every {meta['probe_interval_ms']:g} ms from the client "
        "namespace; watcher: every node namespace's addresses every 3 ms.",
        "",
        "| scenario | measure | " + " | ".join(titles) + " |",
        "|---|---|" + "---|" * len(stacks),
    ]
    for scenario in doc["scenarios"]:
        for i, (label, cell) in enumerate(ROWS):
            name = SCENARIO_TITLES.get(scenario, scenario) if i == 0 else ""
            values = [cell(summary[s][scenario]) for s in stacks]
            lines.append(f"| {name} | {label} | " + " | ".join(values) + " |")
    lines += ["", NOTES.format(hold=meta.get("hold_s", 0.5))]
    if meta.get("jitter_s"):
        lines[-1] += (
            f" Each fault came after a random wait of 0-{meta['jitter_s']:g} s in the steady "
            f"state (seed {meta['seed']}), so that faults hit every phase of etcd's 500 ms "
            "lease-expiry sweep and of the keepalives."
        )
    if meta.get("stack_s"):
        each = ", ".join(f"{s} {_minutes(t)}" for s, t in meta["stack_s"].items())
        total = f"{_minutes(meta['wall_s'])} in all: " if "wall_s" in meta else ""
        lines += ["", f"Wall time: {total}{each} (lab set-up and removal not per stack)."]
    errors = [
        f"- {s} / {sc}: {e}"
        for s in stacks
        for sc in doc["scenarios"]
        for e in summary[s][sc]["errors"]
    ]
    if errors:
        lines += ["", "Trials that did not complete:", *errors]
    kept = [f"- {doc['stacks'].get(s, s)}: {what}" for s, what in meta.get("kept", {}).items()]
    if kept:
        lines += ["", "Columns kept from earlier runs of this benchmark:", *kept]
    aborted = [f"- {doc['stacks'].get(s, s)}: {why}" for s, why in doc.get("aborted", {}).items()]
    if aborted:
        lines += ["", "Stacks whose remaining trials were given up:", *aborted]
    return "\n".join(lines) + "\n"


NOTES = (
    "Client gap: from the last answer before the move (or the fault, if later) to the first "
    "answer from the new node; fault → new node: from the fault to that first answer (for a "
    "planned move this includes starting `hactl` or reloading keepalived). "
    "Two nodes answering ARP: what clients see, from the client namespace (a who-has for the "
    "VIP every 2 ms): pairs of ARP claims for the VIP (replies or gratuitous ARP) by two MACs "
    "less than 10 ms apart after the fault; an address left on a fenced node answers nothing. "
    "VIP address on two nodes: time within each trial's window (fault until {hold:g} s after "
    "the new node answered) during which the VIP was configured on two node namespaces at "
    "once (fenced or not), confirmed by a re-read. "
    "WebSocket clients: from the fault (in parentheses: from the new node's first answer) until "
    "every client was connected through a node serving the VIP after the fault (one the probe "
    "reached after the move; a connection that survived there counts as back, and the count "
    "says how many clients had to reconnect); each client learns its node from the `Via` header "
    "of its handshake, pings every second (no pong within 0.5 s ends the connection) and "
    "reconnects after 50-100 ms. Every fault hits the node holding the VIP; the other node "
    "alternates: under keepalived the node recovering from a fault rejoins as the backup "
    "(priority 100, the survivor becoming the primary at 101), so no trial waits for a "
    "preempt back."
)
