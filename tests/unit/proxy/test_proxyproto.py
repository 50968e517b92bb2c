"""PROXY protocol parser and encoders: known headers, every bad shape, round trips and fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haproxy_py.proxy.proxyproto import (
    NEED_MORE,
    V2_SIGNATURE,
    Invalid,
    ProxyHeader,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse,
)

ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


def invalid(result: object, fragment: str) -> None:
    assert isinstance(result, Invalid), result
    assert fragment in result.reason


class TestV1:
    def test_tcp4(self) -> None:
        data = b"PROXY TCP4 198.18.0.1 198.18.0.2 56324 443\r\nGET / HTTP/1.1\r\n"
        result = parse(data)
        assert result == ProxyHeader(44, 1, ("198.18.0.1", 56324), ("198.18.0.2", 443))
        assert isinstance(result, ProxyHeader)
        assert data[result.length :].startswith(b"GET")
        assert result.family == "tcp4"

    def test_tcp6(self) -> None:
        result = parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")
        assert result == ProxyHeader(36, 1, ("2001:db8::1", 1), ("::1", 65535))
        assert isinstance(result, ProxyHeader)
        assert result.family == "tcp6"

    def test_unknown_ignores_the_rest_of_the_line(self) -> None:
        result = parse(b"PROXY UNKNOWN whatever follows\r\nrest")
        assert result == ProxyHeader(32, 1)
        assert isinstance(result, ProxyHeader)
        assert result.family is None

    @pytest.mark.parametrize(
        ("line", "fragment"),
        [
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 1 2 3\r\n", "6 fields"),
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 1\r\n", "6 fields"),
            (b"PROXY UDP4 198.18.0.1 198.18.0.2 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
            (b"PROXY TCP4 ::1 198.18.0.2 1 2\r\n", "TCP4"),
            (b"PROXY TCP6 198.18.0.1 ::1 1 2\r\n", "TCP6"),
            (b"PROXY TCP4 198.18.0.01 198.18.0.2 1 2\r\n", "TCP4"),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad address"),
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 65536 2\r\n", "out of range"),
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 080 2\r\n", "bad port"),
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 -1 2\r\n", "bad port"),
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 \xd9\xa1 2\r\n", "not ASCII"),
            (b"PROXY  TCP4 198.18.0.1 198.18.0.2 1 2\r\n", "6 fields"),
            (b"PROXY TCP4 198.18.0.1 198.18.0.2 1 2\n", "CRLF"),
            (b"PROXY " + b"x" * 101, "CRLF"),
        ],
    )
    def test_bad_lines(self, line: bytes, fragment: str) -> None:
        invalid(parse(line), fragment)

    def test_line_of_maximum_length_is_accepted(self) -> None:
        addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        line = f"PROXY TCP6 {addr} {addr} 65535 65535\r\n".encode()
        assert len(line) == 104
        assert isinstance(parse(line), ProxyHeader)
        # UNKNOWN may carry anything up to the 107-byte limit.
        longest = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
        assert len(longest) == 107
        assert parse(longest) == ProxyHeader(107, 1)
        invalid(parse(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"), "107")


class TestV2:
    def test_inet(self) -> None:
        body = bytes([198, 18, 0, 1, 198, 18, 0, 2]) + struct.pack("!HH", 4000, 443)
        data = v2(0x21, 0x11, body) + b"GET"
        assert parse(data) == ProxyHeader(28, 2, ("198.18.0.1", 4000), ("198.18.0.2", 443))

    def test_inet6_with_tlvs_skipped(self) -> None:
        src = ipaddress.IPv6Address("2001:db8::7").packed
        dst = ipaddress.IPv6Address("::1").packed
        tlvs = b"\x01\x00\x08http/1.1" + b"\x04\x00\x00"  # ALPN, then a NOOP
        body = src + dst + struct.pack("!HH", 1, 2) + tlvs
        result = parse(v2(0x21, 0x21, body) + b"rest")
        assert result == ProxyHeader(16 + len(body), 2, ("2001:db8::7", 1), ("::1", 2))

    def test_local_has_no_addresses(self) -> None:
        assert parse(encode_v2_local()) == ProxyHeader(16, 2)
        # A LOCAL header may still carry an address block: it is skipped.
        assert parse(v2(0x20, 0x11, bytes(12))) == ProxyHeader(28, 2)

    @pytest.mark.parametrize("fam", [0x00, 0x31, 0x32])
    def test_unspec_and_unix_mean_use_the_connection(self, fam: int) -> None:
        assert parse(v2(0x21, fam, bytes(216))) == ProxyHeader(232, 2)

    @pytest.mark.parametrize(
        ("data", "fragment"),
        [
            (v2(0x11, 0x11, bytes(12)), "version 1"),
            (v2(0x22, 0x11, bytes(12)), "unknown command 2"),
            (v2(0x21, 0x41, bytes(12)), "unknown address family 4"),
            (v2(0x21, 0x12, bytes(12)), "non-stream"),
            (v2(0x21, 0x10, bytes(12)), "non-stream"),
            (v2(0x21, 0x11, bytes(11)), "11 bytes, need 12"),
            (v2(0x21, 0x21, bytes(35)), "35 bytes, need 36"),
            (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "no PROXY"),
            (b"\r\nGET", "no PROXY"),
        ],
    )
    def test_bad_headers(self, data: bytes, fragment: str) -> None:
        invalid(parse(data), fragment)

    def test_waits_for_the_whole_body(self) -> None:
        data = v2(0x21, 0x11, bytes(12) + b"\x04\x00\x00")
        for cut in range(len(data)):
            assert parse(data[:cut]) is NEED_MORE, cut
        assert isinstance(parse(data), ProxyHeader)


class TestNotProxyProtocol:
    @pytest.mark.parametrize(
        "data",
        [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"PROXX", b"proxy TCP4", b"\x00"],
    )
    def test_other_protocols_are_refused_at_once(self, data: bytes) -> None:
        invalid(parse(data), "no PROXY protocol header")

    def test_empty_needs_more(self) -> None:
        assert parse(b"") is NEED_MORE


class TestEncoders:
    def test_mixed_families_are_written_v4_mapped(self) -> None:
        result = parse(encode_v2(("198.18.0.1", 5), ("::1", 6)))
        assert result == ProxyHeader(52, 2, ("::ffff:c612:1", 5), ("::1", 6))
        line = encode_v1(("::1", 5), ("198.18.0.1", 6))
        assert line == b"PROXY TCP6 ::1 ::ffff:c612:1 5 6\r\n"

    @given(addresses, ports, ports, st.binary(max_size=64))
    def test_v2_round_trip(
        self, addrs: tuple[str, str], sport: int, dport: int, rest: bytes
    ) -> None:
        header = encode_v2((addrs[0], sport), (addrs[1], dport))
        result = parse(header + rest)
        assert result == ProxyHeader(len(header), 2, (addrs[0], sport), (addrs[1], dport))

    @given(addresses, ports, ports, st.binary(max_size=64))
    def test_v1_round_trip(
        self, addrs: tuple[str, str], sport: int, dport: int, rest: bytes
    ) -> None:
        header = encode_v1((addrs[0], sport), (addrs[1], dport))
        result = parse(header + rest)
        assert result == ProxyHeader(len(header), 1, (addrs[0], sport), (addrs[1], dport))

    @given(addresses, ports, ports, st.data())
    def test_every_prefix_needs_more(
        self, addrs: tuple[str, str], sport: int, dport: int, data: st.DataObject
    ) -> None:
        encode = data.draw(st.sampled_from([encode_v1, encode_v2]))
        header = encode((addrs[0], sport), (addrs[1], dport))
        cut = data.draw(st.integers(min_value=0, max_value=len(header) - 1))
        assert parse(header[:cut]) is NEED_MORE


class TestFuzz:
    @given(st.binary(max_size=300))
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        result = parse(data)
        if isinstance(result, ProxyHeader):
            assert 0 < result.length <= len(data)
        else:
            assert result is NEED_MORE or isinstance(result, Invalid)

    @given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=300))
    def test_random_bytes_after_a_signature_never_raise(self, prefix: bytes, data: bytes) -> None:
        result = parse(prefix + data)
        if isinstance(result, ProxyHeader):
            assert result.length <= len(prefix + data)
            if result.source is not None:
                assert result.destination is not None
                assert 0 <= result.source[1] <= 65535
                ipaddress.ip_address(result.source[0])
        elif isinstance(result, Invalid):
            assert result.reason

    @given(st.binary(min_size=1, max_size=200))
    def test_bytes_after_a_complete_header_change_nothing(self, rest: bytes) -> None:
        header = encode_v2(("198.18.0.9", 1234), ("198.18.0.10", 80))
        assert parse(header + rest) == parse(header)
