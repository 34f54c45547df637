"""LEB128 varints: edges, minimality, bounds, truncation and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.wire import ErrorCode, ProtocolError
from channel.wire.varint import (
    MAX_VARINT,
    MAX_VARINT_BYTES,
    NeedMoreData,
    decode_varint,
    decode_varint_complete,
    encode_varint,
    varint_size,
)

EDGES: list[tuple[int, bytes]] = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**21 - 1, b"\xff\xff\x7f"),
    (2**21, b"\x80\x80\x80\x01"),
    (2**56 - 1, b"\xff" * 7 + b"\x7f"),
]


def test_max_constants() -> None:
    assert MAX_VARINT_BYTES == 8
    assert MAX_VARINT == 2**56 - 1


@pytest.mark.parametrize(("value", "encoded"), EDGES)
def test_edges_encode_and_decode(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))
    assert varint_size(value) == len(encoded)


@pytest.mark.parametrize(("value", "encoded"), EDGES)
def test_decode_at_offset_and_followed_by_more(value: int, encoded: bytes) -> None:
    data = b"\xaa\xbb" + encoded + b"\x05\x80"
    assert decode_varint(data, 2) == (value, 2 + len(encoded))
    assert decode_varint(bytearray(data), 2) == (value, 2 + len(encoded))
    assert decode_varint(memoryview(data), 2) == (value, 2 + len(encoded))


@pytest.mark.parametrize("value", [-1, 2**56, 2**64])
def test_encode_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80" * 8 + b"\x01",  # 9 bytes
        b"\xff" * 8 + b"\x00",
        b"\xff" * 8,  # 8 continuation bytes: already too long, no need to wait
        b"\x80" * 20,
    ],
)
def test_overlong_is_varint_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_varint(data)
    assert info.value.code is ErrorCode.VARINT_ERROR


@pytest.mark.parametrize(
    "data",
    [b"\x80\x00", b"\x81\x00", b"\xff\x80\x00", b"\x80\x80\x80\x00", b"\xff" * 7 + b"\x00"],
)
def test_non_minimal_is_varint_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_varint(data)
    assert info.value.code is ErrorCode.VARINT_ERROR


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\xff" * 7])
def test_truncated_needs_more_data(data: bytes) -> None:
    with pytest.raises(NeedMoreData):
        decode_varint(data)
    with pytest.raises(NeedMoreData):
        decode_varint(b"\x00\x00" + data, 2)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff" * 7])
def test_truncated_inside_a_payload_is_field_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_varint_complete(data)
    assert info.value.code is ErrorCode.FIELD_ERROR


def test_complete_decoder_keeps_varint_error() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_varint_complete(b"\x80\x00")
    assert info.value.code is ErrorCode.VARINT_ERROR


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_VARINT), st.binary(max_size=4))
def test_round_trip(value: int, suffix: bytes) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == varint_size(value)
    assert 1 <= len(encoded) <= MAX_VARINT_BYTES
    assert all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80
    assert decode_varint(encoded + suffix) == (value, len(encoded))
    # Every strict prefix asks for more data.
    for cut in range(len(encoded)):
        with pytest.raises(NeedMoreData):
            decode_varint(encoded[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=12))
def test_decode_arbitrary_bytes_is_total(data: bytes) -> None:
    """Any input decodes, asks for more, or is a VARINT_ERROR; a decoded value re-encodes."""
    try:
        value, end = decode_varint(data)
    except NeedMoreData:
        assert len(data) < MAX_VARINT_BYTES and all(b & 0x80 for b in data)
        return
    except ProtocolError as exc:
        assert exc.code is ErrorCode.VARINT_ERROR
        return
    assert encode_varint(value) == data[:end]


@pytest.mark.parametrize("bits", range(0, 57))
def test_varint_size_at_powers_of_two(bits: int) -> None:
    for value in {max(0, 2**bits - 1), min(2**bits, MAX_VARINT)}:
        assert varint_size(value) == len(encode_varint(value))
