"""Frame boundary tracking over streams framed by an independent encoder (websockets)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from haproxy_py.proxy.wsframes import (
    FrameTracker,
    close_frame,
    handshake_problem,
    masked_close_frame,
)

DATA_OPCODES = [Opcode.TEXT, Opcode.BINARY, Opcode.CONT]
CONTROL_OPCODES = [Opcode.PING, Opcode.PONG]

# Lengths that exercise the 7-bit, 16-bit and 64-bit length encodings and their edges.
lengths = st.one_of(
    st.integers(min_value=0, max_value=130),
    st.sampled_from([125, 126, 127, 65535, 65536, 65537]),
    st.integers(min_value=126, max_value=70_000),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    masked = draw(st.booleans())
    kind = draw(st.sampled_from(["data", "control", "close"]))
    if kind == "data":
        size = draw(lengths)
        frame = Frame(draw(st.sampled_from(DATA_OPCODES)), b"\x00" * size, fin=draw(st.booleans()))
    elif kind == "control":
        size = draw(st.integers(min_value=0, max_value=125))
        frame = Frame(draw(st.sampled_from(CONTROL_OPCODES)), b"p" * size)
    else:
        code = draw(st.sampled_from([1000, 1001, 1002, 1011, 3000, 4999]))
        reason = draw(st.text(max_size=20))
        frame = Frame(Opcode.CLOSE, Close(code, reason).serialize())
    return frame.serialize(mask=masked)


def stream_of(frame_list: list[bytes]) -> tuple[bytes, list[int]]:
    """The concatenated frames and the offsets where each one ends."""
    ends = list(itertools.accumulate(len(f) for f in frame_list))
    return b"".join(frame_list), ends


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class TestFeed:
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(frames(), min_size=1, max_size=8), st.lists(st.integers(min_value=0), max_size=12)
    )
    def test_at_boundary_exactly_at_frame_ends(
        self, frame_list: list[bytes], cuts: list[int]
    ) -> None:
        data, ends = stream_of(frame_list)
        tracker = FrameTracker()
        offset = 0
        for chunk in split(data, cuts):
            tracker.feed(chunk)
            offset += len(chunk)
            assert tracker.at_boundary == (offset in ends), offset
        assert tracker.at_boundary

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(frames(), min_size=1, max_size=8), st.lists(st.integers(min_value=0), max_size=12)
    )
    def test_feed_to_boundary_stops_at_the_next_frame_end(
        self, frame_list: list[bytes], cuts: list[int]
    ) -> None:
        data, ends = stream_of(frame_list)
        chunks = split(data, cuts)
        tracker = FrameTracker()
        offset = 0
        for chunk in chunks:
            consumed = tracker.feed_to_boundary(chunk)
            if offset in ends or offset == 0:
                assert consumed == 0
            else:
                following = min(e for e in ends if e > offset)
                assert consumed == min(following, offset + len(chunk)) - offset
                assert tracker.at_boundary == (following <= offset + len(chunk))
            # The rest of the chunk goes through the ordinary path, as the relay would do.
            tracker.feed(chunk[consumed:])
            offset += len(chunk)

    def test_one_byte_at_a_time(self) -> None:
        frame_list = [
            Frame(Opcode.TEXT, b"a" * 70_000, fin=False).serialize(mask=True),
            Frame(Opcode.PING, b"").serialize(mask=True),
            Frame(Opcode.CONT, b"b" * 300).serialize(mask=True),
        ]
        data, ends = stream_of(frame_list)
        tracker = FrameTracker()
        for i in range(len(data)):
            tracker.feed(data[i : i + 1])
            assert tracker.at_boundary == (i + 1 in ends)

    def test_fresh_tracker_and_empty_chunks(self) -> None:
        tracker = FrameTracker()
        assert tracker.at_boundary
        tracker.feed(b"")
        assert tracker.feed_to_boundary(b"\x81") == 0
        tracker.feed(b"\x81")
        assert not tracker.at_boundary
        assert tracker.feed_to_boundary(b"") == 0
        assert not tracker.at_boundary


class TestClose:
    @pytest.mark.parametrize("masked", [False, True])
    @pytest.mark.parametrize("reason", ["", "bye"])
    def test_close_code_seen_whatever_the_split(self, masked: bool, reason: str) -> None:
        text = Frame(Opcode.TEXT, b"hello").serialize(mask=masked)
        close = Frame(Opcode.CLOSE, Close(4321, reason).serialize()).serialize(mask=masked)
        data = text + close
        for cut in range(len(data) + 1):
            tracker = FrameTracker()
            tracker.feed(data[:cut])
            tracker.feed(data[cut:])
            assert tracker.close_seen
            assert tracker.close_code == 4321
            assert tracker.at_boundary

    def test_close_seen_only_once_the_header_is_complete(self) -> None:
        close = Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=True)
        tracker = FrameTracker()
        tracker.feed(close[:-1])
        assert not tracker.close_seen
        assert not tracker.at_boundary
        tracker.feed(close[-1:])
        assert tracker.close_seen
        assert tracker.at_boundary

    def test_empty_close_has_no_code(self) -> None:
        tracker = FrameTracker()
        tracker.feed(Frame(Opcode.CLOSE, b"").serialize(mask=False))
        assert tracker.close_seen
        assert tracker.close_code is None
        assert tracker.at_boundary

    def test_data_frames_are_not_closes(self) -> None:
        tracker = FrameTracker()
        tracker.feed(Frame(Opcode.BINARY, b"\x03\xe9").serialize(mask=False))
        assert not tracker.close_seen


def parse_one(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


class TestBuildClose:
    def test_server_close_is_unmasked_going_away(self) -> None:
        data = close_frame()
        assert data == b"\x88\x02\x03\xe9"
        frame = parse_one(data, mask=False)
        assert Close.parse(frame.data) == Close(1001, "")

    def test_client_close_is_masked(self) -> None:
        data = masked_close_frame(1001, "drain", key=b"\x01\x02\x03\x04")
        assert data[:6] == b"\x88\x87\x01\x02\x03\x04"
        frame = parse_one(data, mask=True)
        assert Close.parse(frame.data) == Close(1001, "drain")

    def test_random_keys_differ(self) -> None:
        keys = {masked_close_frame()[2:6] for _ in range(8)}
        assert len(keys) > 1
        assert Close.parse(parse_one(masked_close_frame(), mask=True).data).code == 1001

    def test_built_frames_are_tracked(self) -> None:
        tracker = FrameTracker()
        tracker.feed(masked_close_frame(1001, "x"))
        assert tracker.at_boundary
        assert tracker.close_code == 1001

    def test_reason_over_125_bytes_is_refused(self) -> None:
        close_frame(1001, "r" * 123)
        with pytest.raises(ValueError, match="too long"):
            close_frame(1001, "r" * 124)


class TestHandshake:
    KEY = (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")
    VERSION = (b"Sec-WebSocket-Version", b"13")

    def test_valid_handshake(self) -> None:
        assert handshake_problem(b"GET", "1.1", [self.KEY, self.VERSION]) is None

    @pytest.mark.parametrize(
        ("method", "version", "headers", "fragment"),
        [
            (b"POST", "1.1", [KEY, VERSION], "GET"),
            (b"GET", "1.0", [KEY, VERSION], "HTTP/1.1"),
            (b"GET", "1.1", [VERSION], "exactly one Sec-WebSocket-Key"),
            (b"GET", "1.1", [KEY, KEY, VERSION], "exactly one Sec-WebSocket-Key"),
            (b"GET", "1.1", [(b"sec-websocket-key", b"!!!"), VERSION], "16 bytes"),
            (b"GET", "1.1", [KEY], "Sec-WebSocket-Version"),
            (b"GET", "1.1", [KEY, (b"Sec-WebSocket-Version", b"8")], "Sec-WebSocket-Version"),
        ],
    )
    def test_invalid_handshakes(
        self, method: bytes, version: str, headers: list[tuple[bytes, bytes]], fragment: str
    ) -> None:
        problem = handshake_problem(method, version, headers)
        assert problem is not None and fragment in problem
