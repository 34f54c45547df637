"""Frame layer: incremental parsing, limits checked early, bounded buffering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.wire import ErrorCode, ProtocolError
from channel.wire.frames import (
    ALLOWED_FLAGS,
    FLAG_DICT_LAST,
    FLAG_HEADERS,
    FLAG_SETTINGS_ACK,
    FLAG_ZSTD,
    FrameParser,
    FrameType,
    RawFrame,
    encode_frame,
)
from channel.wire.varint import encode_varint, varint_size

MAX = 1024

SAMPLE_FRAMES: list[RawFrame] = [
    RawFrame(FrameType.HELLO, 0, b"\x02\x01\x04\x02d1"),
    RawFrame(FrameType.PING, 0, b""),
    RawFrame(FrameType.PING, 0, b"12345678"),
    RawFrame(FrameType.REQUEST, FLAG_HEADERS, b"\x01\x02\x82\x84payload"),
    RawFrame(FrameType.RESPONSE, FLAG_HEADERS | FLAG_ZSTD, bytes(range(200))),
    RawFrame(FrameType.PUSH, FLAG_ZSTD, b"x" * 300),
    RawFrame(FrameType.SETTINGS, FLAG_SETTINGS_ACK, b""),
    RawFrame(FrameType.DICT, FLAG_DICT_LAST, b"\x07\x03\x00abc"),
    RawFrame(FrameType.ERROR, 0, b"\x00\x01\x00bye"),
    RawFrame(FrameType.ACK, 0, b"\x01"),
    RawFrame(FrameType.RESPONSE, 0, b"y" * MAX),  # exactly max_frame_size
]


def _allowed_flags(frame_type: FrameType) -> int:
    return ALLOWED_FLAGS.get(frame_type, 0)


def test_encode_layout() -> None:
    assert encode_frame(FrameType.PING, 0, b"") == b"\x60\x00"
    assert encode_frame(FrameType.REQUEST, FLAG_HEADERS | FLAG_ZSTD, b"ab") == b"\x23\x02ab"
    payload = b"z" * 200
    assert encode_frame(FrameType.PUSH, 0, payload) == b"\x40\xc8\x01" + payload


@pytest.mark.parametrize("frame", SAMPLE_FRAMES, ids=lambda f: f.frame_type.name)
def test_every_split_point_yields_the_same_frame(frame: RawFrame) -> None:
    data = encode_frame(frame.frame_type, frame.flags, frame.payload)
    for cut in range(len(data) + 1):
        parser = FrameParser(MAX)
        first = parser.feed(data[:cut])
        second = parser.feed(data[cut:])
        assert first + second == [frame], cut
        assert parser.buffered_bytes == 0
        # Nothing is returned before the last byte arrives.
        if cut < len(data):
            assert first == []


def test_byte_at_a_time_stream_of_many_frames() -> None:
    data = b"".join(encode_frame(f.frame_type, f.flags, f.payload) for f in SAMPLE_FRAMES)
    parser = FrameParser(MAX)
    out: list[RawFrame] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert out == SAMPLE_FRAMES
    assert parser.buffered_bytes == 0


def test_many_frames_in_one_chunk() -> None:
    frames = SAMPLE_FRAMES * 20
    data = b"".join(encode_frame(f.frame_type, f.flags, f.payload) for f in frames)
    parser = FrameParser(MAX)
    assert parser.feed(data) == frames
    assert parser.buffered_bytes == 0


def test_frames_then_partial_frame_in_one_chunk() -> None:
    whole = encode_frame(FrameType.PING, 0, b"abc")
    partial = encode_frame(FrameType.PUSH, 0, b"x" * 50)[:20]
    parser = FrameParser(MAX)
    assert parser.feed(whole * 3 + partial) == [RawFrame(FrameType.PING, 0, b"abc")] * 3
    assert parser.buffered_bytes == 20


def test_payload_is_bytes_and_accepts_any_buffer_type() -> None:
    data = encode_frame(FrameType.PONG, 0, b"pong")
    for chunk in (data, bytearray(data), memoryview(data)):
        (frame,) = FrameParser(MAX).feed(chunk)
        assert type(frame.payload) is bytes and frame.payload == b"pong"


@pytest.mark.parametrize("type_nibble", [0xD, 0xE, 0xF])
def test_unknown_frame_type(type_nibble: int) -> None:
    parser = FrameParser(MAX)
    with pytest.raises(ProtocolError) as info:
        parser.feed(bytes([type_nibble << 4]))  # the type byte alone is enough
    assert info.value.code is ErrorCode.UNKNOWN_FRAME_TYPE


def test_unknown_frame_type_after_valid_frames() -> None:
    parser = FrameParser(MAX)
    with pytest.raises(ProtocolError) as info:
        parser.feed(encode_frame(FrameType.PING, 0, b"") + b"\xe0\x00")
    assert info.value.code is ErrorCode.UNKNOWN_FRAME_TYPE


@pytest.mark.parametrize(
    ("frame_type", "flags"),
    [
        (frame_type, flags)
        for frame_type in FrameType
        for flags in range(1, 16)
        if flags & ~_allowed_flags(frame_type)
    ],
)
def test_undefined_flags_are_protocol_error(frame_type: FrameType, flags: int) -> None:
    parser = FrameParser(MAX)
    with pytest.raises(ProtocolError) as info:
        parser.feed(bytes([frame_type << 4 | flags]))
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("frame_type", list(FrameType))
def test_allowed_flags_parse(frame_type: FrameType) -> None:
    flags = _allowed_flags(frame_type)
    (frame,) = FrameParser(MAX).feed(encode_frame(frame_type, flags, b"p"))
    assert frame == RawFrame(frame_type, flags, b"p")


@pytest.mark.parametrize("length", [MAX + 1, MAX * 4, 2**21, 2**56 - 1])
def test_oversized_length_refused_from_the_header_alone(length: int) -> None:
    parser = FrameParser(MAX)
    header = bytes([FrameType.PUSH << 4]) + encode_varint(length)
    with pytest.raises(ProtocolError) as info:
        parser.feed(header)
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert parser.buffered_bytes == len(header)


def test_oversized_length_refused_when_header_arrives_bytewise() -> None:
    parser = FrameParser(MAX)
    header = bytes([FrameType.RESPONSE << 4]) + encode_varint(MAX + 1)
    for byte in header[:-1]:
        assert parser.feed(bytes([byte])) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed(header[-1:])
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR


@pytest.mark.parametrize("length_bytes", [b"\x80\x00", b"\x80" * 8 + b"\x01", b"\xff" * 9])
def test_bad_length_varint(length_bytes: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameParser(MAX).feed(b"\x60" + length_bytes)
    assert info.value.code is ErrorCode.VARINT_ERROR


def _random_frame(rng: random.Random, max_size: int) -> RawFrame:
    frame_type = rng.choice(list(FrameType))
    allowed = _allowed_flags(frame_type)
    flags = rng.randrange(16) & allowed
    size = rng.choice([0, 1, rng.randrange(max_size + 1), max_size])
    return RawFrame(frame_type, flags, rng.randbytes(size))


@pytest.mark.parametrize("seed", range(5))
def test_bounded_buffering_over_a_long_random_stream(seed: int) -> None:
    rng = random.Random(seed)
    frames = [_random_frame(rng, MAX) for _ in range(400)]
    data = b"".join(encode_frame(f.frame_type, f.flags, f.payload) for f in frames)
    parser = FrameParser(MAX)
    bound = MAX + 1 + varint_size(MAX)
    out: list[RawFrame] = []
    position = 0
    while position < len(data):
        step = rng.choice([1, 2, 3, 7, rng.randrange(1, 2 * MAX)])
        out += parser.feed(data[position : position + step])
        position += step
        assert parser.buffered_bytes <= bound
    assert out == frames
    assert parser.buffered_bytes == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(FrameType)), st.integers(0, 15), st.binary(max_size=300)),
        max_size=8,
    ),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20),
)
def test_chunking_never_changes_the_result(
    specs: list[tuple[FrameType, int, bytes]], chunk_sizes: list[int]
) -> None:
    frames = [RawFrame(t, flags & _allowed_flags(t), payload) for t, flags, payload in specs]
    data = b"".join(encode_frame(f.frame_type, f.flags, f.payload) for f in frames)
    parser = FrameParser(MAX)
    out: list[RawFrame] = []
    position = 0
    i = 0
    while position < len(data):
        size = chunk_sizes[i % len(chunk_sizes)]
        out += parser.feed(data[position : position + size])
        position += size
        i += 1
    assert out == frames


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=32))
def test_arbitrary_bytes_only_raise_protocol_error(data: bytes, chunk: int) -> None:
    small = 16  # a small limit so the bound is actually exercised
    parser = FrameParser(small)
    try:
        for position in range(0, len(data), chunk):
            parser.feed(data[position : position + chunk])
            assert parser.buffered_bytes <= small + 1 + varint_size(small)
    except ProtocolError as exc:
        assert exc.code in {
            ErrorCode.UNKNOWN_FRAME_TYPE,
            ErrorCode.PROTOCOL_ERROR,
            ErrorCode.FRAME_SIZE_ERROR,
            ErrorCode.VARINT_ERROR,
        }
