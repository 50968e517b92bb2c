"""The planned-move measurement's summary: 1001s, resets and reconnect times per class."""

from __future__ import annotations

from bench.failover.handover import summarize_events


def ev(at: float, client: int, kind: str, event: str, **fields: object) -> dict[str, object]:
    return {"at": at, "client": client, "class": kind, "event": event, **fields}


def test_counts_1001s_and_resets_and_times_the_reconnect_per_class() -> None:
    events = [
        ev(0.0, 0, "idle", "connected", via="a"),
        ev(1.0, 0, "idle", "closed", code=1001),
        ev(1.02, 0, "idle", "connected", via="b"),
        ev(0.0, 1, "continuous", "connected", via="a"),
        ev(0.01, 1, "continuous", "echo", via="a"),
        ev(1.0, 1, "continuous", "closed", code=1001),
        ev(1.01, 1, "continuous", "connected", via="b"),
        ev(1.05, 1, "continuous", "echo", via="b"),
        ev(2.0, 1, "continuous", "error", error="ClientConnectionResetError"),
    ]
    summary = summarize_events(events)
    assert summary["idle"]["closed_1001"] == 1 and summary["idle"]["reset"] == 0
    assert summary["idle"]["reconnect_ms"]["max"] == 20.0
    assert summary["continuous"]["closed_1001"] == 1 and summary["continuous"]["reset"] == 1
    assert summary["continuous"]["reconnect_ms"]["max"] == 50.0
    assert summary["periodic"]["closed_1001"] == 0


def test_splits_each_reconnect_into_client_loop_tcp_and_upgrade() -> None:
    events = [
        ev(0.0, 0, "periodic", "connected", via="a"),
        ev(1.0, 0, "periodic", "closed", code=1001),
        ev(1.03, 0, "periodic", "connected", via="b", started=1.002, tcp=1.012),
        ev(1.04, 0, "periodic", "echo", via="b"),
    ]
    phases = summarize_events(events)["periodic"]["phases_ms"]
    assert phases["loop"]["max"] == 2.0
    assert phases["tcp"]["max"] == 10.0
    assert phases["upgrade"]["max"] == 18.0
