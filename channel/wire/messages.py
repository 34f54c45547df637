"""Payload layouts of the non-handshake frames.

Message frames (REQUEST, RESPONSE, PUSH) share one tail::

    [header block length varint, header block]   if FLAG_HEADERS
    [connection block length varint, block]      if FLAG_CONN (REQUEST from a client)
    [typed section length varint, typed section] if FLAG_TYPED (see typed.py)
    body                                        rest of the payload
                                                (if FLAG_ZSTD: varint dictionary id + zstd frame)

and differ in their prefix: REQUEST ``stream id``; RESPONSE ``stream id,
status``; PUSH ``delivery id, message id length, message id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.frames import FLAG_CONN, FLAG_HEADERS, FLAG_TYPED, FLAG_ZSTD
from channel.wire.varint import MAX_VARINT_BYTES, decode_varint_complete, encode_varint


@dataclass(frozen=True, slots=True)
class MessageTail:
    """Header block and body of a message frame, both still encoded."""

    header_block: bytes
    typed_section: bytes
    body: bytes
    compressed: bool
    conn_block: bytes = b""


def encode_tail(
    header_block: bytes,
    body: bytes,
    compressed: bool,
    typed_section: bytes = b"",
    conn_block: bytes = b"",
) -> tuple[int, bytes]:
    """Return ``(flags, tail bytes)`` for a header block, connection block, typed
    section and encoded body."""
    flags = FLAG_ZSTD if compressed else 0
    parts: list[bytes] = []
    if header_block:
        flags |= FLAG_HEADERS
        parts += (encode_varint(len(header_block)), header_block)
    if conn_block:
        flags |= FLAG_CONN
        parts += (encode_varint(len(conn_block)), conn_block)
    if typed_section:
        flags |= FLAG_TYPED
        parts += (encode_varint(len(typed_section)), typed_section)
    parts.append(body)
    return flags, b"".join(parts)


def _section(payload: bytes, offset: int, what: str) -> tuple[bytes, int]:
    length, offset = decode_varint_complete(payload, offset)
    if length == 0 or offset + length > len(payload):
        raise ProtocolError(ErrorCode.FIELD_ERROR, f"{what} length is 0 or past the frame")
    return payload[offset : offset + length], offset + length


def decode_tail(payload: bytes, offset: int, flags: int) -> MessageTail:
    header_block = typed_section = conn_block = b""
    if flags & FLAG_HEADERS:
        header_block, offset = _section(payload, offset, "header block")
    if flags & FLAG_CONN:
        conn_block, offset = _section(payload, offset, "connection header block")
    if flags & FLAG_TYPED:
        typed_section, offset = _section(payload, offset, "typed section")
    compressed = bool(flags & FLAG_ZSTD)
    return MessageTail(header_block, typed_section, payload[offset:], compressed, conn_block)


def decode_stream_id(payload: bytes) -> tuple[int, int]:
    stream_id, offset = decode_varint_complete(payload, 0)
    if stream_id == 0:
        raise ProtocolError(ErrorCode.STREAM_ID_ERROR, "stream id 0 is reserved")
    return stream_id, offset


def encode_ack(delivery_ids: tuple[int, ...]) -> bytes:
    return b"".join(encode_varint(delivery_id) for delivery_id in delivery_ids)


def decode_ack(payload: bytes, max_ids: int) -> tuple[int, ...]:
    ids: list[int] = []
    offset = 0
    while offset < len(payload):
        delivery_id, offset = decode_varint_complete(payload, offset)
        ids.append(delivery_id)
        if len(ids) > max_ids:
            raise ProtocolError(ErrorCode.FIELD_ERROR, f"ACK carries more than {max_ids} ids")
    if not ids:
        raise ProtocolError(ErrorCode.FIELD_ERROR, "ACK carries no delivery id")
    return tuple(ids)


@dataclass(frozen=True, slots=True)
class ErrorPayload:
    stream_id: int
    code: int
    retry_after_ms: int
    message: str


def encode_error(stream_id: int, code: int, retry_after_ms: int, message: str) -> bytes:
    return (
        encode_varint(stream_id)
        + encode_varint(code)
        + encode_varint(retry_after_ms)
        + message.encode()
    )


def decode_error(payload: bytes) -> ErrorPayload:
    stream_id, offset = decode_varint_complete(payload, 0)
    code, offset = decode_varint_complete(payload, offset)
    retry_after_ms, offset = decode_varint_complete(payload, offset)
    return ErrorPayload(stream_id, code, retry_after_ms, _text(payload[offset:], "ERROR message"))


@dataclass(frozen=True, slots=True)
class GoAwayPayload:
    code: int
    reconnect_after_ms: int
    alternate_endpoint: str
    message: str


def encode_goaway(
    code: int, reconnect_after_ms: int, alternate_endpoint: str, message: str
) -> bytes:
    endpoint = alternate_endpoint.encode()
    return (
        encode_varint(code)
        + encode_varint(reconnect_after_ms)
        + encode_varint(len(endpoint))
        + endpoint
        + message.encode()
    )


def decode_goaway(payload: bytes) -> GoAwayPayload:
    code, offset = decode_varint_complete(payload, 0)
    reconnect_after_ms, offset = decode_varint_complete(payload, offset)
    length, offset = decode_varint_complete(payload, offset)
    if offset + length > len(payload):
        raise ProtocolError(ErrorCode.FIELD_ERROR, "GOAWAY alternate endpoint runs past the frame")
    endpoint = _text(payload[offset : offset + length], "GOAWAY alternate endpoint")
    message = _text(payload[offset + length :], "GOAWAY message")
    return GoAwayPayload(code, reconnect_after_ms, endpoint, message)


@dataclass(frozen=True, slots=True)
class DictChunk:
    dict_id: int
    total_size: int
    offset: int
    chunk: bytes


def encode_dict_chunk(dict_id: int, total_size: int, offset: int, chunk: bytes) -> bytes:
    return encode_varint(dict_id) + encode_varint(total_size) + encode_varint(offset) + chunk


def decode_dict_chunk(payload: bytes) -> DictChunk:
    dict_id, offset = decode_varint_complete(payload, 0)
    total_size, offset = decode_varint_complete(payload, offset)
    chunk_offset, offset = decode_varint_complete(payload, offset)
    return DictChunk(dict_id, total_size, chunk_offset, payload[offset:])


#: Most pairs one SETTINGS frame may carry, each id at most once: six ids are
#: defined, and without a cap a 256 KiB frame of unknown ids cost ~90 ms to walk.
MAX_SETTINGS_PAIRS = 16
_MAX_SETTINGS_PAYLOAD = MAX_SETTINGS_PAIRS * 2 * MAX_VARINT_BYTES


def settings_problem(settings: tuple[tuple[int, int], ...]) -> str:
    """Why a SETTINGS frame's pairs break the frame rules ("" if they do not)."""
    if len(settings) > MAX_SETTINGS_PAIRS:
        return f"SETTINGS carries more than {MAX_SETTINGS_PAIRS} pairs"
    if len({key for key, _ in settings}) != len(settings):
        return "SETTINGS carries an id twice"
    return ""


def encode_settings(settings: tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(encode_varint(key) + encode_varint(value) for key, value in settings)


def decode_settings(payload: bytes) -> tuple[tuple[int, int], ...]:
    # Refused from its length alone when it cannot be at most MAX_SETTINGS_PAIRS pairs.
    if len(payload) > _MAX_SETTINGS_PAYLOAD:
        raise ProtocolError(
            ErrorCode.FIELD_ERROR,
            f"SETTINGS payload of {len(payload)} bytes is longer than "
            f"{MAX_SETTINGS_PAIRS} pairs can be",
        )
    pairs: list[tuple[int, int]] = []
    offset = 0
    while offset < len(payload):
        key, offset = decode_varint_complete(payload, offset)
        value, offset = decode_varint_complete(payload, offset)
        pairs.append((key, value))
    settings = tuple(pairs)
    problem = settings_problem(settings)
    if problem:
        raise ProtocolError(ErrorCode.FIELD_ERROR, problem)
    return settings


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.FIELD_ERROR, f"{what} is not valid UTF-8") from None
