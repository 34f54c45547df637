"""HELLO and HELLO_ACK: the handshake frames and their tagged fields."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.fields import (
    KIND_BYTES,
    KIND_VARINT,
    FieldSpec,
    FieldValue,
    decode_fields,
    encode_fields,
    one_bytes,
    one_int,
    one_text,
)
from channel.wire.limits import INITIAL_HEADER_TABLE_SIZE, Limits

PROTOCOL_VERSION = 1
ALPN_PROTOCOL = "mmtp/1"
#: Most dictionary ids one HELLO may list (a client holding more lists its newest).
MAX_HELLO_DICTIONARIES = 32


@dataclass(frozen=True, slots=True)
class Hello:
    """What a device says about itself in its first frame."""

    #: Empty only with a token and no resume ticket: the token names the device (7.2).
    device_id: str = ""
    app_id: str = ""
    token: bytes = b""
    resume_ticket: bytes = b""
    dictionaries: tuple[int, ...] = ()
    preset_id: int = 0
    heartbeat_s: int = 0
    header_table_size: int = INITIAL_HEADER_TABLE_SIZE
    max_frame_size: int = Limits.max_frame_size
    app_version: str = ""
    platform: str = ""
    #: The client's clock at HELLO: the epoch of typed timestamps it sends.
    client_time_ms: int = 0
    max_header_list_size: int = Limits.max_header_list_size
    max_body_size: int = Limits.max_body_size
    max_concurrent_streams: int = Limits.max_concurrent_streams
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class HelloAck:
    """The server's answer: the session, the ticket to resume it, and its limits."""

    session_id: bytes = b""
    resume_ticket: bytes = b""
    heartbeat_s: int = 0
    preset_id: int = 0
    newest_dictionary: int = 0
    header_table_size: int = INITIAL_HEADER_TABLE_SIZE
    max_frame_size: int = Limits.max_frame_size
    max_concurrent_streams: int = Limits.max_concurrent_streams
    max_header_list_size: int = Limits.max_header_list_size
    max_body_size: int = Limits.max_body_size
    server_time_ms: int = 0
    resumed: bool = False
    #: Largest connection-scoped header list the server holds for a client (spec 9.11).
    max_connection_header_list_size: int = Limits.max_connection_header_list_size
    version: int = PROTOCOL_VERSION


_H = {
    "version": FieldSpec(1, "version", KIND_VARINT),
    "device_id": FieldSpec(2, "device_id", KIND_BYTES),
    "app_id": FieldSpec(3, "app_id", KIND_BYTES),
    "token": FieldSpec(4, "token", KIND_BYTES),
    "resume_ticket": FieldSpec(5, "resume_ticket", KIND_BYTES),
    "dictionary": FieldSpec(
        6, "dictionary", KIND_VARINT, repeated=True, max_count=MAX_HELLO_DICTIONARIES
    ),
    "preset_id": FieldSpec(7, "preset_id", KIND_VARINT),
    "heartbeat_s": FieldSpec(8, "heartbeat_s", KIND_VARINT),
    "header_table_size": FieldSpec(9, "header_table_size", KIND_VARINT),
    "max_frame_size": FieldSpec(10, "max_frame_size", KIND_VARINT),
    "app_version": FieldSpec(11, "app_version", KIND_BYTES),
    "platform": FieldSpec(12, "platform", KIND_BYTES),
    "client_time_ms": FieldSpec(13, "client_time_ms", KIND_VARINT),
    "max_header_list_size": FieldSpec(14, "max_header_list_size", KIND_VARINT),
    "max_body_size": FieldSpec(15, "max_body_size", KIND_VARINT),
    "max_concurrent_streams": FieldSpec(16, "max_concurrent_streams", KIND_VARINT),
}
_HELLO_SPECS = {spec.number: spec for spec in _H.values()}

_A = {
    "version": FieldSpec(1, "version", KIND_VARINT),
    "session_id": FieldSpec(2, "session_id", KIND_BYTES),
    "resume_ticket": FieldSpec(3, "resume_ticket", KIND_BYTES),
    "heartbeat_s": FieldSpec(4, "heartbeat_s", KIND_VARINT),
    "preset_id": FieldSpec(5, "preset_id", KIND_VARINT),
    "newest_dictionary": FieldSpec(6, "newest_dictionary", KIND_VARINT),
    "header_table_size": FieldSpec(7, "header_table_size", KIND_VARINT),
    "max_frame_size": FieldSpec(8, "max_frame_size", KIND_VARINT),
    "max_concurrent_streams": FieldSpec(9, "max_concurrent_streams", KIND_VARINT),
    "max_header_list_size": FieldSpec(10, "max_header_list_size", KIND_VARINT),
    "max_body_size": FieldSpec(11, "max_body_size", KIND_VARINT),
    "server_time_ms": FieldSpec(12, "server_time_ms", KIND_VARINT),
    "resumed": FieldSpec(13, "resumed", KIND_VARINT),
    "max_connection_header_list_size": FieldSpec(
        14, "max_connection_header_list_size", KIND_VARINT
    ),
}
_ACK_SPECS = {spec.number: spec for spec in _A.values()}

_HELLO_DEFAULTS = Hello(device_id="")
_ACK_DEFAULTS = HelloAck()


def encode_hello(hello: Hello) -> bytes:
    """HELLO payload; fields equal to their default are left out to save bytes."""
    items: list[tuple[FieldSpec, FieldValue]] = [(_H["version"], hello.version)]
    for name in ("device_id", "app_id", "app_version", "platform"):
        text: str = getattr(hello, name)
        if text:
            items.append((_H[name], text.encode()))
    for name in ("token", "resume_ticket"):
        raw: bytes = getattr(hello, name)
        if raw:
            items.append((_H[name], raw))
    items.extend((_H["dictionary"], dict_id) for dict_id in hello.dictionaries)
    for name in (
        "preset_id",
        "heartbeat_s",
        "header_table_size",
        "max_frame_size",
        "client_time_ms",
        "max_header_list_size",
        "max_body_size",
        "max_concurrent_streams",
    ):
        number: int = getattr(hello, name)
        if number != getattr(_HELLO_DEFAULTS, name):
            items.append((_H[name], number))
    items.sort(key=lambda item: item[0].number)
    return encode_fields(items)


def _common_text(values: dict[str, list[FieldValue]], name: str) -> str:
    """A HELLO string most devices share (app id, version, platform), interned.

    A server holds one HELLO per connection: a million devices on three app
    versions then hold three strings, not a million copies.
    """
    return sys.intern(one_text(values, name, "HELLO"))


def _common_int(values: dict[str, list[FieldValue]], name: str, default: int) -> int:
    """A HELLO limit, as the shared ``default`` object when it has the default value."""
    value = one_int(values, name, default)
    return default if value == default else value


def decode_hello(payload: bytes, limits: Limits) -> Hello:
    values = decode_fields(payload, _HELLO_SPECS, "HELLO")
    version = one_int(values, "version", 0)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"HELLO asks for version {version}; this peer speaks {PROTOCOL_VERSION}",
        )
    for name in ("device_id", "app_id", "app_version", "platform"):
        if len(one_bytes(values, name)) > limits.max_identity_length:
            raise ProtocolError(
                ErrorCode.FIELD_ERROR,
                f"HELLO field {name} exceeds max_identity_length {limits.max_identity_length}",
            )
    for name in ("token", "resume_ticket"):
        if len(one_bytes(values, name)) > limits.max_credential_length:
            raise ProtocolError(
                ErrorCode.FIELD_ERROR,
                f"HELLO field {name} exceeds max_credential_length {limits.max_credential_length}",
            )
    device_id = one_text(values, "device_id", "HELLO")
    if not device_id and (not one_bytes(values, "token") or one_bytes(values, "resume_ticket")):
        # Spec 7.2: only a HELLO with a token and no resume ticket may leave the device
        # id (and app id) to its credential; a ticket is bound to the device id it names.
        raise ProtocolError(
            ErrorCode.FIELD_ERROR,
            "HELLO field device_id is missing or empty (only a HELLO with a token and no "
            "resume_ticket may leave it to the token)",
        )
    dictionaries = tuple(int(v) for v in values.get("dictionary", ()))
    hello = Hello(
        device_id=device_id,
        app_id=_common_text(values, "app_id"),
        token=one_bytes(values, "token"),
        resume_ticket=one_bytes(values, "resume_ticket"),
        dictionaries=dictionaries,
        preset_id=one_int(values, "preset_id", 0),
        heartbeat_s=one_int(values, "heartbeat_s", 0),
        header_table_size=_common_int(values, "header_table_size", INITIAL_HEADER_TABLE_SIZE),
        max_frame_size=_common_int(values, "max_frame_size", _HELLO_DEFAULTS.max_frame_size),
        app_version=_common_text(values, "app_version"),
        platform=_common_text(values, "platform"),
        client_time_ms=one_int(values, "client_time_ms", 0),
        max_header_list_size=_common_int(
            values, "max_header_list_size", _HELLO_DEFAULTS.max_header_list_size
        ),
        max_body_size=_common_int(values, "max_body_size", _HELLO_DEFAULTS.max_body_size),
        max_concurrent_streams=one_int(
            values, "max_concurrent_streams", _HELLO_DEFAULTS.max_concurrent_streams
        ),
        version=version,
    )
    if hello.max_concurrent_streams < 1:
        raise ProtocolError(ErrorCode.FIELD_ERROR, "HELLO max_concurrent_streams must be >= 1")
    _check_header_list_size("HELLO", hello.max_header_list_size)
    _check_announced_sizes("HELLO", hello.header_table_size, hello.max_frame_size)
    return hello


def encode_hello_ack(ack: HelloAck) -> bytes:
    items: list[tuple[FieldSpec, FieldValue]] = [(_A["version"], ack.version)]
    for name in ("session_id", "resume_ticket"):
        raw: bytes = getattr(ack, name)
        if raw:
            items.append((_A[name], raw))
    for name in (
        "heartbeat_s",
        "preset_id",
        "newest_dictionary",
        "header_table_size",
        "max_frame_size",
        "max_concurrent_streams",
        "max_header_list_size",
        "max_body_size",
        "server_time_ms",
        "max_connection_header_list_size",
    ):
        number: int = getattr(ack, name)
        if number != getattr(_ACK_DEFAULTS, name):
            items.append((_A[name], number))
    if ack.resumed:
        items.append((_A["resumed"], 1))
    items.sort(key=lambda item: item[0].number)
    return encode_fields(items)


def decode_hello_ack(payload: bytes) -> HelloAck:
    values = decode_fields(payload, _ACK_SPECS, "HELLO_ACK")
    version = one_int(values, "version", 0)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"HELLO_ACK chose version {version}; this peer speaks {PROTOCOL_VERSION}",
        )
    d = _ACK_DEFAULTS
    ack = HelloAck(
        session_id=one_bytes(values, "session_id"),
        resume_ticket=one_bytes(values, "resume_ticket"),
        heartbeat_s=one_int(values, "heartbeat_s", d.heartbeat_s),
        preset_id=one_int(values, "preset_id", d.preset_id),
        newest_dictionary=one_int(values, "newest_dictionary", d.newest_dictionary),
        header_table_size=one_int(values, "header_table_size", d.header_table_size),
        max_frame_size=one_int(values, "max_frame_size", d.max_frame_size),
        max_concurrent_streams=one_int(values, "max_concurrent_streams", d.max_concurrent_streams),
        max_header_list_size=one_int(values, "max_header_list_size", d.max_header_list_size),
        max_body_size=one_int(values, "max_body_size", d.max_body_size),
        server_time_ms=one_int(values, "server_time_ms", d.server_time_ms),
        resumed=bool(one_int(values, "resumed", 0)),
        max_connection_header_list_size=one_int(
            values, "max_connection_header_list_size", d.max_connection_header_list_size
        ),
        version=version,
    )
    _check_announced_sizes("HELLO_ACK", ack.header_table_size, ack.max_frame_size)
    if ack.max_concurrent_streams < 1:
        raise ProtocolError(ErrorCode.FIELD_ERROR, "HELLO_ACK max_concurrent_streams must be >= 1")
    _check_header_list_size("HELLO_ACK", ack.max_header_list_size)
    return ack


def _check_announced_sizes(frame_name: str, header_table_size: int, max_frame_size: int) -> None:
    if header_table_size < INITIAL_HEADER_TABLE_SIZE:
        raise ProtocolError(
            ErrorCode.FIELD_ERROR,
            f"{frame_name} header_table_size {header_table_size} is below the initial "
            f"{INITIAL_HEADER_TABLE_SIZE}",
        )
    if max_frame_size < 1024:
        raise ProtocolError(
            ErrorCode.FIELD_ERROR, f"{frame_name} max_frame_size {max_frame_size} is below 1024"
        )


def _check_header_list_size(frame_name: str, value: int) -> None:
    # The same floor as SETTINGS MAX_HEADER_LIST_SIZE and Limits.
    if value < 256:
        raise ProtocolError(
            ErrorCode.FIELD_ERROR, f"{frame_name} max_header_list_size {value} is below 256"
        )
