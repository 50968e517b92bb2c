"""Reconnects as the client's network interface sees them: where a reconnect's time goes.

`python -m bench.failover.wire ADDRESS PORT SECONDS OUT` runs in a namespace
(the client's, for VIP:PORT; a demo backend's, for its own address and port)
and writes one JSON line per TCP segment to or from ADDRESS:PORT (time,
direction, client port, flags, payload length and first bytes), read from an
AF_PACKET socket: timestamps of the wire, not of a process's event loop.
`summarize_wire` (pure) turns them into, per new connection: SYNs sent (more
than one is a SYN retransmit, a reconnect that found nobody answering), SYN to
SYN-ACK (the new owner's kernel), SYN-ACK to the upgrade request (the client
process) and the request to the `101` (the proxy, its upstream connect and the
backend's handshake). On a backend's wire, the last span is the backend's
own share of it (health checks, answered 200, have none).

Flows are keyed by the client's address and port (clients from many addresses
reuse each other's ports). SIGTERM ends a capture cleanly: what it read is
written, and a last line gives the frames the kernel dropped because the
capture fell behind (`dropped`), so a count that falls short says so.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

from bench.failover.stats import summarize

ETH_P_ALL = 3
SOL_PACKET, PACKET_STATISTICS, SO_RCVBUFFORCE = 263, 6, 33
BUFFER = 16 << 20  # bytes of frames the kernel holds for the capture while it catches up
DRAIN = 10.0  # seconds a stopped capture may take to read what is queued (a starved one is slow)
SYN, RST, ACK = 0x02, 0x04, 0x10
GOING_AWAY = b"\x88\x02\x03\xe9"  # a server's close frame, code 1001
RETRANSMIT_WINDOW = 3.5
SPANS = (("kernel", "syn", "synack"), ("client", "synack", "request"), ("server", "request", "101"))


def capture(vip: str, port: int, seconds: float, out: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER)
    sock.bind(("eth0", 0))
    sock.settimeout(0.2)
    target = socket.inet_aton(vip)
    opened: dict[str, set[bool]] = {}  # connections whose SYN was seen: directions with data
    end = time.monotonic() + seconds
    stop: list[float] = []  # when SIGTERM came: read what is queued (DRAIN s at most), end
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(time.monotonic()))
    with open(out, "w") as sink:
        while time.monotonic() < min(end, stop[0] + DRAIN if stop else end):
            try:
                frame = sock.recv(65535)
            except TimeoutError:
                if stop:
                    break
                continue
            at = time.monotonic()
            if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
                continue
            src, dst = frame[26:30], frame[30:34]
            if target not in (src, dst):
                continue
            tcp = 14 + (frame[14] & 15) * 4
            sport, dport, _, _, offset, flags = struct.unpack("!HHIIBB", frame[tcp : tcp + 14])
            inbound = src == target
            if (sport if inbound else dport) != port:
                continue
            payload = frame[tcp + (offset >> 4) * 4 :]
            client_port = dport if inbound else sport
            client = f"{socket.inet_ntoa(dst if inbound else src)}:{client_port}"
            if flags & SYN and not inbound:
                opened[client] = set()
            seen = opened.get(client)
            ending = inbound and (flags & RST or payload[:4] == GOING_AWAY)
            # Only what the summary reads: handshakes, and each direction's first data of a
            # connection opened during the capture (continuous echoes would be gigabytes);
            # and the ends sent to the client, 1001 or reset, with the node that sent them.
            first = seen is not None and (flags & SYN or (payload and inbound not in seen))
            if not (first or ending):
                continue
            if payload and seen is not None:
                seen.add(inbound)
            segment = {
                "at": at,
                "out": not inbound,
                "client": client,
                "client_port": client_port,
                "flags": flags,
                "len": len(payload),
                "head": payload[:12].decode("latin-1"),
            }
            if ending:
                segment["sender"] = frame[6:12].hex(":")
            sink.write(json.dumps(segment) + "\n")
        # tpacket_stats: frames received, frames dropped (both since the last read)
        dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        sink.write(json.dumps({"dropped": dropped}) + "\n")


def summarize_wire(segments: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """SYN retransmits and the wire-time split of every connection opened in the capture
    (pure)."""
    flows: list[list[dict[str, Any]]] = []
    current: dict[str, list[dict[str, Any]]] = {}  # client -> its latest connection
    dropped = 0
    for segment in sorted(segments, key=lambda s: s.get("at", 0.0)):
        if "dropped" in segment:  # a capture's last line
            dropped += int(segment["dropped"])
            continue
        client = str(segment.get("client", segment["client_port"]))
        flow = current.get(client)
        if _is_syn(segment) and (flow is None or not _retransmit(flow, segment)):
            flow = current[client] = []  # a new connection (ports are reused)
            flows.append(flow)
        if flow is not None:
            flow.append(segment)
    spans: dict[str, list[float]] = {name: [] for name, _, _ in SPANS}
    connections = retransmits = unanswered = 0
    for flow in flows:
        syns = [s for s in flow if _is_syn(s)]
        connections += 1
        retransmits += len(syns) - 1
        unanswered += not any(not s["out"] for s in flow)
        times = {"syn": syns[0]["at"]}
        for name, found in (
            ("synack", lambda s: not s["out"] and s["flags"] & (SYN | ACK) == SYN | ACK),
            ("request", lambda s: s["out"] and s["len"] > 0),
            ("101", lambda s: not s["out"] and s["head"].startswith("HTTP/1.1 101")),
        ):
            times[name] = next((s["at"] for s in flow if found(s)), float("nan"))
        for name, start, end in SPANS:
            span = times[end] - times[start]
            if span == span:  # not NaN: both ends seen
                spans[name].append(round(span * 1000, 1))
    return {
        "connections": connections,
        "syn_retransmits": retransmits,
        "unanswered": unanswered,  # connection attempts that got no answer at all
        "capture_dropped": dropped,
        "ms": {name: summarize(values).as_dict() for name, values in spans.items()},
    }


def reset_by_closer(segments: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The resets a client got from the very node that had sent it its 1001 (pure): that node
    had closed its socket before the client's answer to the 1001 reached it."""
    closer: dict[str, str] = {}  # client -> the node (MAC) that sent its latest 1001
    found = []
    for segment in sorted(segments, key=lambda s: s.get("at", 0.0)):
        sender = segment.get("sender")
        if sender is None:
            continue
        if segment["flags"] & RST:
            if closer.get(segment["client"]) == sender:
                found.append(segment)
        else:
            closer[segment["client"]] = sender
    return found


def _is_syn(segment: dict[str, Any]) -> bool:
    return bool(segment["out"]) and segment["flags"] & (SYN | ACK) == SYN


def _retransmit(flow: list[dict[str, Any]], syn: dict[str, Any]) -> bool:
    """A SYN again on a port whose last SYN had no answer yet, within the 3 s a connect tries
    (Linux: 1 s, then 2 s later): the same connection, retransmitted."""
    answered = any(not s["out"] for s in flow)
    return not answered and syn["at"] - flow[0]["at"] < RETRANSMIT_WINDOW


if __name__ == "__main__":
    vip, port, seconds, out = sys.argv[1:]
    capture(vip, int(port), float(seconds), out)
