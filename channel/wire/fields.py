"""Tagged fields: the extensible encoding of HELLO, HELLO_ACK and SETTINGS.

Each field is ``key`` then value, where ``key = field_number << 1 | kind``:
kind 0 is a varint value, kind 1 a length-prefixed byte string. Unknown
field numbers are skipped (that is how v1 grows without a new version), up
to ``MAX_UNKNOWN_FIELDS`` of them; a known field with the wrong kind, a
non-repeatable field given twice or a repeated one more than its
``max_count`` times is a FIELD_ERROR. The caps keep a frame's cost to a few
dozen fields whatever its size: a 256 KiB HELLO of unknown fields cost ~50 ms
of CPU to skip, before any credential was checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.varint import decode_varint_complete, encode_varint

KIND_VARINT = 0
KIND_BYTES = 1

#: Fields with numbers a peer does not know, at most, per HELLO or HELLO_ACK.
MAX_UNKNOWN_FIELDS = 32

FieldValue = int | bytes


@dataclass(frozen=True, slots=True)
class FieldSpec:
    number: int
    name: str
    kind: int
    repeated: bool = False
    max_length: int | None = None
    #: Most occurrences of a repeated field.
    max_count: int | None = None


def encode_fields(items: Iterable[tuple[FieldSpec, FieldValue]]) -> bytes:
    """Encode ``(spec, value)`` pairs in the order given."""
    out = bytearray()
    for spec, value in items:
        out += encode_varint(spec.number << 1 | spec.kind)
        if spec.kind == KIND_VARINT:
            assert isinstance(value, int)
            out += encode_varint(value)
        else:
            assert isinstance(value, bytes)
            out += encode_varint(len(value))
            out += value
    return bytes(out)


def decode_fields(
    payload: bytes, specs: dict[int, FieldSpec], frame_name: str
) -> dict[str, list[FieldValue]]:
    """Decode a field list into ``{name: [values]}`` for the known fields."""
    values: dict[str, list[FieldValue]] = {}
    unknown = 0
    offset = 0
    end = len(payload)
    while offset < end:
        key, offset = decode_varint_complete(payload, offset)
        number, kind = key >> 1, key & 1
        if kind == KIND_VARINT:
            value: FieldValue
            value, offset = decode_varint_complete(payload, offset)
        else:
            length, offset = decode_varint_complete(payload, offset)
            if offset + length > end:
                raise ProtocolError(
                    ErrorCode.FIELD_ERROR, f"{frame_name} field {number} runs past the frame"
                )
            value = payload[offset : offset + length]
            offset += length
        spec = specs.get(number)
        if spec is None:
            unknown += 1
            if unknown > MAX_UNKNOWN_FIELDS:
                raise ProtocolError(
                    ErrorCode.FIELD_ERROR,
                    f"{frame_name} has more than {MAX_UNKNOWN_FIELDS} fields of unknown numbers",
                )
            continue
        if spec.kind != kind:
            raise ProtocolError(
                ErrorCode.FIELD_ERROR, f"{frame_name} field {spec.name} has the wrong kind"
            )
        if (
            spec.max_length is not None
            and isinstance(value, bytes)
            and len(value) > spec.max_length
        ):
            raise ProtocolError(
                ErrorCode.FIELD_ERROR,
                f"{frame_name} field {spec.name} is {len(value)} bytes, limit {spec.max_length}",
            )
        seen = values.setdefault(spec.name, [])
        if seen and not spec.repeated:
            raise ProtocolError(
                ErrorCode.FIELD_ERROR, f"{frame_name} field {spec.name} appears twice"
            )
        if spec.max_count is not None and len(seen) >= spec.max_count:
            raise ProtocolError(
                ErrorCode.FIELD_ERROR,
                f"{frame_name} field {spec.name} appears more than {spec.max_count} times",
            )
        seen.append(value)
    return values


def one_int(values: dict[str, list[FieldValue]], name: str, default: int) -> int:
    found = values.get(name)
    if not found:
        return default
    value = found[0]
    assert isinstance(value, int)
    return value


def one_bytes(values: dict[str, list[FieldValue]], name: str, default: bytes = b"") -> bytes:
    found = values.get(name)
    if not found:
        return default
    value = found[0]
    assert isinstance(value, bytes)
    return value


def one_text(values: dict[str, list[FieldValue]], name: str, frame_name: str) -> str:
    raw = one_bytes(values, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(
            ErrorCode.FIELD_ERROR, f"{frame_name} field {name} is not valid UTF-8"
        ) from None
