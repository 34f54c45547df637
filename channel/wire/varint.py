"""Unsigned LEB128 varints, the only integer encoding MMTP uses outside HPACK.

Seven bits per byte, least significant group first, high bit set on every
byte but the last. Encodings must be minimal (no trailing 0x80 0x00 groups)
and at most ``MAX_VARINT_BYTES`` long, so every value has exactly one
encoding and a hostile peer cannot make the parser loop.
"""

from __future__ import annotations

from channel.wire.errors import ErrorCode, ProtocolError

MAX_VARINT_BYTES = 8
MAX_VARINT = (1 << (7 * MAX_VARINT_BYTES)) - 1


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (0 .. 2**56 - 1) as a minimal LEB128 varint."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"varint must be non-negative, got {value}")
        return bytes((value,))
    if value > MAX_VARINT:
        raise ValueError(f"varint {value} exceeds the maximum {MAX_VARINT}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    """Bytes ``encode_varint(value)`` takes, without encoding it."""
    return max(1, (value.bit_length() + 6) // 7)


class NeedMoreData(Exception):
    """The buffer ends inside a varint; feed more bytes and try again."""


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode one varint at ``offset``; return ``(value, offset after it)``.

    Raises ``NeedMoreData`` if ``data`` ends inside the varint and
    ``ProtocolError(VARINT_ERROR)`` for an overlong or non-minimal one.
    """
    end = len(data)
    if offset < end:
        first = data[offset]
        if first < 0x80:
            return first, offset + 1
    value = 0
    shift = 0
    position = offset
    while True:
        if position >= end:
            if position - offset >= MAX_VARINT_BYTES:
                break
            raise NeedMoreData
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and position - offset > 1:
                raise ProtocolError(ErrorCode.VARINT_ERROR, "non-minimal varint encoding")
            return value, position
        shift += 7
        if position - offset >= MAX_VARINT_BYTES:
            break
    raise ProtocolError(ErrorCode.VARINT_ERROR, f"varint longer than {MAX_VARINT_BYTES} bytes")


def decode_varint_complete(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[int, int]:
    """Like ``decode_varint`` for data known to be complete (a frame payload).

    A varint cut short by the end of the payload is a FIELD_ERROR, not a
    reason to wait for more bytes.
    """
    try:
        return decode_varint(data, offset)
    except NeedMoreData:
        raise ProtocolError(ErrorCode.FIELD_ERROR, "payload ends inside a varint") from None
