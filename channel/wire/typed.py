"""Typed header fields: compact binary forms for ids and timestamps.

Unique per-message values are HPACK's worst case: a 32-hex-digit trace id
costs ~24 bytes as a Huffman literal and can never be indexed. MMTP sends a
few well-known headers, when their value is in canonical form, in a *typed
section* instead (frame flag ``FLAG_TYPED``)::

    typed section = varint length, then entries: varint key, value

===  ==============  ==========================================================
key  header          value
===  ==============  ==========================================================
1    trace-id        HEX: varint n, n bytes (the value is 2n lowercase hex digits)
2    ts              TIME: zigzag varint of (value - epoch), value in decimal ms
3    server-time     TIME
4    sign            HEX
5    trace-id        ECHO (RESPONSE only): no value; equals the request's trace-id
6    request-id      HEX
===  ==============  ==========================================================

The *epoch* of a direction is the time its sender announced in its handshake
frame (HELLO ``client_time_ms`` for client to server, HELLO_ACK
``server_time_ms`` for server to client; 0 if absent), so both ends know it
before the first typed field. Values not in canonical form (uppercase hex,
odd length, leading zeros) travel through HPACK unchanged. Decoded typed
headers follow the HPACK-coded ones, in section order.
"""

from __future__ import annotations

from collections.abc import Sequence

from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.varint import decode_varint_complete, encode_varint

Header = tuple[str, str]

KEY_TRACE_ID = 1
KEY_TS = 2
KEY_SERVER_TIME = 3
KEY_SIGN = 4
KEY_TRACE_ID_ECHO = 5
KEY_REQUEST_ID = 6

TRACE_ID = "trace-id"
_HEX_KEYS = {"trace-id": KEY_TRACE_ID, "sign": KEY_SIGN, "request-id": KEY_REQUEST_ID}
_TIME_KEYS = {"ts": KEY_TS, "server-time": KEY_SERVER_TIME}
_NAMES = {key: name for name, key in (_HEX_KEYS | _TIME_KEYS).items()}
_HEX_DIGITS = frozenset("0123456789abcdef")
MAX_HEX_BYTES = 64
_MAX_TIME = 10**16


def _canonical_hex(value: str) -> bool:
    return (
        0 < len(value) <= 2 * MAX_HEX_BYTES
        and len(value) % 2 == 0
        and _HEX_DIGITS.issuperset(value)
    )


def _canonical_time(value: str) -> bool:
    return (
        value.isascii()
        and value.isdigit()
        and (value == "0" or value[0] != "0")
        and int(value) < _MAX_TIME
    )


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def split_typed(
    headers: Sequence[Header], epoch_ms: int, echo_trace_id: str | None = None
) -> tuple[tuple[Header, ...], bytes]:
    """Separate headers that have a typed form; return (rest for HPACK, typed section body)."""
    rest: list[Header] = []
    typed = bytearray()
    for header in headers:
        name, value = header
        key = _HEX_KEYS.get(name)
        if key is not None and _canonical_hex(value):
            if key == KEY_TRACE_ID and value == echo_trace_id:
                typed += encode_varint(KEY_TRACE_ID_ECHO)
                continue
            raw = bytes.fromhex(value)
            typed += encode_varint(key) + encode_varint(len(raw)) + raw
            continue
        key = _TIME_KEYS.get(name)
        if key is not None and _canonical_time(value):
            typed += encode_varint(key) + encode_varint(_zigzag(int(value) - epoch_ms))
            continue
        rest.append(header)
    return tuple(rest), bytes(typed)


def decode_typed(
    section: bytes, epoch_ms: int, echo_trace_id: str | None, max_list_size: int
) -> list[Header]:
    """Decode a typed section body into headers; unknown keys are a FIELD_ERROR.

    Decoded headers count against ``max_list_size`` (RFC 7541 sizes) like
    HPACK ones: a one-byte echo entry expands to a whole trace-id.
    """
    headers: list[Header] = []
    offset = 0
    end = len(section)
    list_size = 0
    while offset < end:
        if headers:
            last_name, last_value = headers[-1]
            list_size += len(last_name) + len(last_value) + 32
            if list_size > max_list_size:
                raise ProtocolError(
                    ErrorCode.HEADER_LIST_TOO_LARGE,
                    f"typed fields exceed max_header_list_size {max_list_size}",
                )
        key, offset = decode_varint_complete(section, offset)
        if key in (KEY_TRACE_ID, KEY_SIGN, KEY_REQUEST_ID):
            length, offset = decode_varint_complete(section, offset)
            if not 0 < length <= MAX_HEX_BYTES or offset + length > end:
                raise ProtocolError(ErrorCode.FIELD_ERROR, f"typed field {key} length {length}")
            headers.append((_NAMES[key], section[offset : offset + length].hex()))
            offset += length
        elif key in (KEY_TS, KEY_SERVER_TIME):
            delta, offset = decode_varint_complete(section, offset)
            value = epoch_ms + _unzigzag(delta)
            if not 0 <= value < _MAX_TIME:
                raise ProtocolError(ErrorCode.FIELD_ERROR, f"typed time {value} out of range")
            headers.append((_NAMES[key], str(value)))
        elif key == KEY_TRACE_ID_ECHO:
            if echo_trace_id is None:
                raise ProtocolError(
                    ErrorCode.FIELD_ERROR, "trace-id echo with no trace-id on the request"
                )
            headers.append((TRACE_ID, echo_trace_id))
        else:
            raise ProtocolError(ErrorCode.FIELD_ERROR, f"unknown typed field key {key}")
    if headers:
        last_name, last_value = headers[-1]
        if list_size + len(last_name) + len(last_value) + 32 > max_list_size:
            raise ProtocolError(
                ErrorCode.HEADER_LIST_TOO_LARGE,
                f"typed fields exceed max_header_list_size {max_list_size}",
            )
    return headers


def trace_id_of(headers: Sequence[Header]) -> str | None:
    for name, value in headers:
        if name == TRACE_ID:
            return value
    return None
