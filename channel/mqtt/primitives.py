"""MQTT data representations (MQTT 5.0 section 1.5): integers, strings, binary data.

Readers take a complete packet body and an offset and return ``(value, offset
after it)``; running off the end of the body is a Malformed Packet, never a
reason to wait for more bytes (the parser only decodes whole packets).
Writers return bytes and raise ``LocalMqttError`` for values the wire cannot
carry.
"""

from __future__ import annotations

from channel.mqtt.errors import LocalMqttError, MalformedPacket

#: Largest Variable Byte Integer: four bytes of seven bits.
MAX_VARINT = 268_435_455
MAX_VARINT_BYTES = 4
#: Strings and binary data carry a two-byte length.
MAX_STRING_BYTES = 65_535

Buffer = bytes | bytearray | memoryview


def read_byte(buf: Buffer, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise MalformedPacket("packet ends inside a one-byte field")
    return buf[pos], pos + 1


def read_uint16(buf: Buffer, pos: int) -> tuple[int, int]:
    if pos + 2 > len(buf):
        raise MalformedPacket("packet ends inside a two-byte integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_uint32(buf: Buffer, pos: int) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise MalformedPacket("packet ends inside a four-byte integer")
    return int.from_bytes(buf[pos : pos + 4], "big"), pos + 4


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """A Variable Byte Integer inside a body: at most 4 bytes, minimally encoded."""
    value = 0
    shift = 0
    end = len(buf)
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            raise MalformedPacket("packet ends inside a variable byte integer")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise MalformedPacket("variable byte integer not in its shortest form")
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def read_binary(buf: Buffer, pos: int) -> tuple[bytes, int]:
    length, pos = read_uint16(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedPacket(f"binary data of {length} bytes runs past the packet end")
    return bytes(buf[pos:end]), end


def read_string(buf: Buffer, pos: int) -> tuple[str, int]:
    """A UTF-8 Encoded String: well-formed UTF-8 (so no surrogates), no U+0000."""
    raw, pos = read_binary(buf, pos)
    if b"\x00" in raw:
        raise MalformedPacket("UTF-8 string contains U+0000")
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"ill-formed UTF-8 string: {exc.reason}") from None


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint_bytes(value: int) -> bytes:
    """Encode ``value`` (0 .. 268,435,455) as a Variable Byte Integer."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if 0x80 <= value < 0x4000:  # most packets: 128 B .. 16 KiB
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0:
        raise LocalMqttError(f"variable byte integer must be non-negative, got {value}")
    if value > MAX_VARINT:
        raise LocalMqttError(f"variable byte integer {value} exceeds {MAX_VARINT}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def binary_bytes(data: bytes) -> bytes:
    if len(data) > MAX_STRING_BYTES:
        raise LocalMqttError(f"binary field of {len(data)} bytes exceeds {MAX_STRING_BYTES}")
    return len(data).to_bytes(2, "big") + data


def string_bytes(text: str) -> bytes:
    if "\x00" in text:
        raise LocalMqttError("UTF-8 strings may not contain U+0000")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalMqttError("UTF-8 strings may not contain surrogates") from None
    if len(raw) > MAX_STRING_BYTES:
        raise LocalMqttError(f"string of {len(raw)} bytes exceeds {MAX_STRING_BYTES}")
    return len(raw).to_bytes(2, "big") + raw
