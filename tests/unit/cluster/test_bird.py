"""BIRD's control-socket replies: framing and the parsers, on text captured from BIRD 2.0.12."""

from __future__ import annotations

import asyncio

from haproxy_py.cluster import bird

PROTOCOLS = (
    b"2002-Name       Proto      Table      State  Since         Info\n"
    b"1002-device1    Device     ---        up     11:09:05.985  \n"
    b" bfd1       BFD        ---        up     11:09:05.985  \n"
    b" vips       Static     master4    up     11:09:05.985  \n"
    b" uplink     BGP        ---        up     11:09:09.557  Established   \n"
    b"0000 \n"
)
STATIC = b"1009-198.19.250.100/32\n \tdev hbxv (dormant)\n 198.19.250.101/32\n \tdev hbxv\n0000 \n"
BFD = (
    b"1020-bfd1:\n"
    b" IP address                Interface  State      Since         Interval  Timeout\n"
    b" 198.19.250.2              eth0       Up         11:09:06.322    0.100    0.300\n"
    b" 198.19.250.3              eth0       Down       11:09:06.322    1.000    0.000\n"
    b"0000 \n"
)


def read(raw: bytes) -> bird.Reply:
    async def go() -> bird.Reply:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await bird._read_reply(reader)

    return asyncio.run(go())


def test_a_reply_ends_at_the_first_line_whose_code_is_followed_by_a_space() -> None:
    reply = read(b"0002-Reading configuration from x.conf\n0003 Reconfigured\n0001 next\n")
    assert reply.code == 3
    assert reply.lines == ("Reading configuration from x.conf", "Reconfigured")


def test_protocols_give_state_and_session_info() -> None:
    found = bird.protocols(read(PROTOCOLS))
    assert set(found) == {"device1", "bfd1", "vips", "uplink"}
    assert found["uplink"].kind == "BGP"
    assert found["uplink"].state == "up"
    assert found["uplink"].info == "Established"
    assert found["uplink"].since == "11:09:09.557"
    assert found["vips"].info == ""


def test_static_routes_tell_active_from_dormant() -> None:
    assert bird.static_routes(read(STATIC)) == {
        "198.19.250.100/32": False,
        "198.19.250.101/32": True,
    }


def test_an_empty_static_protocol_has_no_routes() -> None:
    assert bird.static_routes(read(b"0000 \n")) == {}


def test_bfd_sessions_by_peer_address() -> None:
    assert bird.bfd_sessions(read(BFD)) == {"198.19.250.2": "Up", "198.19.250.3": "Down"}


def test_a_closed_socket_mid_reply_is_an_error_not_a_partial_reply() -> None:
    try:
        read(b"1002-device1 Device\n")
    except EOFError:
        return
    raise AssertionError("a truncated reply was accepted")
