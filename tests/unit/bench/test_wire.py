"""The wire-level split of reconnects: SYN retransmits, kernel, client and server time."""

from __future__ import annotations

from bench.failover.wire import reset_by_closer, summarize_wire


def seg(at: float, out: bool, port: int, flags: int, head: str = "", length: int = 0) -> dict:
    return {"at": at, "out": out, "client_port": port, "flags": flags, "len": length, "head": head}


def test_splits_each_new_connection_and_counts_syn_retransmits() -> None:
    segments = [
        seg(0.0, False, 40000, 0x18, "abc", 3),  # a connection older than the capture
        seg(1.000, True, 40001, 0x02),
        seg(1.001, False, 40001, 0x12),
        seg(1.011, True, 40001, 0x18, "GET ", 200),
        seg(1.041, False, 40001, 0x18, "HTTP/1.1 101", 129),
        seg(2.000, True, 40002, 0x02),
        seg(3.000, True, 40002, 0x02),  # retransmitted: nobody answered the first
        seg(3.001, False, 40002, 0x12),
        seg(3.002, True, 40002, 0x18, "GET ", 90),
        seg(3.004, False, 40002, 0x18, "HTTP/1.1 200", 90),  # a health check: no upgrade
        seg(9.000, True, 40001, 0x02),  # the port used again: a new connection
        seg(9.001, False, 40001, 0x12),
    ]
    summary = summarize_wire(segments)
    assert summary["connections"] == 3 and summary["syn_retransmits"] == 1
    assert summary["ms"]["kernel"]["max"] == 1001.0  # the retransmit wait shows here
    assert summary["ms"]["client"]["count"] == 2 and summary["ms"]["client"]["max"] == 10.0
    assert summary["ms"]["server"]["count"] == 1 and summary["ms"]["server"]["max"] == 30.0


def test_clients_on_other_addresses_with_the_same_port_are_other_connections() -> None:
    def at(client: str, when: float, out: bool, flags: int) -> dict:
        return {**seg(when, out, 40001, flags), "client": f"{client}:40001"}

    segments = [
        at("198.18.0.150", 1.000, True, 0x02),
        at("198.18.0.151", 1.010, True, 0x02),  # not a retransmit: another client
        at("198.18.0.151", 1.011, False, 0x12),
        at("198.18.0.150", 2.000, True, 0x02),  # a retransmit: the first SYN had no answer
        {"dropped": 2},  # the capture's last line
    ]
    summary = summarize_wire(segments)
    assert summary["connections"] == 2 and summary["syn_retransmits"] == 1
    assert summary["unanswered"] == 1 and summary["capture_dropped"] == 2


def test_a_reset_from_the_node_that_sent_the_1001_is_found_one_from_another_is_not() -> None:
    def end(client: str, when: float, flags: int, sender: str) -> dict:
        going_away = "" if flags & 0x04 else "\x88\x02\x03\xe9"
        return {**seg(when, False, 40001, flags, going_away), "client": client, "sender": sender}

    old, new = "aa:00:00:00:00:01", "aa:00:00:00:00:02"
    segments = [
        end("c1", 1.0, 0x19, old),  # 1001 and FIN from the old owner
        end("c1", 7.0, 0x04, new),  # the new owner's reset after its grace: not the closer's
        end("c2", 1.0, 0x19, old),
        end("c2", 2.0, 0x04, old),  # the old owner reset it: the answer came back to it
        end("c3", 0.5, 0x04, old),  # a reset with no 1001 before it: not this check's
    ]
    assert [(s["client"], s["at"]) for s in reset_by_closer(segments)] == [("c2", 2.0)]
