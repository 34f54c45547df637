"""Tagged fields, HELLO and HELLO_ACK: round trips, defaults, extensibility, limits."""

from __future__ import annotations

import pytest
from helpers import connection_error
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.wire import (
    Connection,
    ErrorCode,
    Hello,
    HelloAck,
    Limits,
    LocalProtocolError,
    ProtocolError,
    Role,
)
from channel.wire.fields import (
    KIND_BYTES,
    KIND_VARINT,
    FieldSpec,
    decode_fields,
    encode_fields,
)
from channel.wire.frames import FrameType, encode_frame
from channel.wire.hello import decode_hello, decode_hello_ack, encode_hello, encode_hello_ack
from channel.wire.varint import encode_varint

LIMITS = Limits()


def vfield(number: int, value: int) -> bytes:
    """A varint field as raw bytes."""
    return encode_varint(number << 1 | KIND_VARINT) + encode_varint(value)


def bfield(number: int, value: bytes) -> bytes:
    """A byte-string field as raw bytes."""
    return encode_varint(number << 1 | KIND_BYTES) + encode_varint(len(value)) + value


VERSION = vfield(1, 1)
DEVICE = bfield(2, b"dev")


def _hello_code(payload: bytes, limits: Limits = LIMITS) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_hello(payload, limits)
    return info.value.code


def _ack_code(payload: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_hello_ack(payload)
    return info.value.code


# ------------------------------------------------------------------ fields


SPECS = {
    1: FieldSpec(1, "n", KIND_VARINT),
    2: FieldSpec(2, "s", KIND_BYTES, max_length=4),
    3: FieldSpec(3, "r", KIND_VARINT, repeated=True),
}


def test_fields_encode_layout() -> None:
    items = [(SPECS[1], 300), (SPECS[2], b"ab"), (SPECS[3], 1), (SPECS[3], 2)]
    assert encode_fields(items) == b"\x02\xac\x02" + b"\x05\x02ab" + b"\x06\x01" + b"\x06\x02"
    assert decode_fields(encode_fields(items), SPECS, "T") == {
        "n": [300],
        "s": [b"ab"],
        "r": [1, 2],
    }


def test_fields_max_length() -> None:
    assert decode_fields(bfield(2, b"abcd"), SPECS, "T") == {"s": [b"abcd"]}
    with pytest.raises(ProtocolError) as info:
        decode_fields(bfield(2, b"abcde"), SPECS, "T")
    assert info.value.code is ErrorCode.FIELD_ERROR


def test_fields_empty_payload() -> None:
    assert decode_fields(b"", SPECS, "T") == {}


@pytest.mark.parametrize(
    "payload",
    [
        bfield(1, b"x"),  # wrong kind
        vfield(2, 5),  # wrong kind
        vfield(1, 1) + vfield(1, 1),  # duplicate
        b"\x05\x05ab",  # runs past the end
        b"\x02",  # value missing
        b"\x02\x80",  # value truncated
        b"\x80",  # key truncated
    ],
)
def test_fields_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_fields(payload, SPECS, "T")
    assert info.value.code is ErrorCode.FIELD_ERROR


def test_fields_bad_varint_is_varint_error() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_fields(b"\x02\x80\x00", SPECS, "T")
    assert info.value.code is ErrorCode.VARINT_ERROR


def test_fields_unknown_numbers_are_skipped_whatever_their_kind() -> None:
    payload = vfield(9, 2**50) + bfield(10, b"z" * 300) + vfield(1, 7) + bfield(99999, b"")
    assert decode_fields(payload, SPECS, "T") == {"n": [7]}


# ------------------------------------------------------------------ HELLO


def test_hello_defaults_are_omitted() -> None:
    assert encode_hello(Hello(device_id="d")) == VERSION + bfield(2, b"d")
    assert encode_hello_ack(HelloAck()) == VERSION


def test_hello_fields_in_number_order() -> None:
    hello = Hello(
        device_id="d",
        app_id="a",
        token=b"t",
        resume_ticket=b"r",
        dictionaries=(3, 1),
        preset_id=1,
        heartbeat_s=30,
        header_table_size=8192,
        max_frame_size=4096,
        app_version="1.0",
        platform="ios",
    )
    expected = (
        VERSION
        + bfield(2, b"d")
        + bfield(3, b"a")
        + bfield(4, b"t")
        + bfield(5, b"r")
        + vfield(6, 3)
        + vfield(6, 1)
        + vfield(7, 1)
        + vfield(8, 30)
        + vfield(9, 8192)
        + vfield(10, 4096)
        + bfield(11, b"1.0")
        + bfield(12, b"ios")
    )
    assert encode_hello(hello) == expected
    assert decode_hello(expected, LIMITS) == hello


def test_non_default_values_cost_bytes() -> None:
    base = len(encode_hello(Hello(device_id="d")))
    assert len(encode_hello(Hello(device_id="d", heartbeat_s=1))) == base + 2
    assert len(encode_hello(Hello(device_id="d", header_table_size=8192))) == base + 3
    ack_base = len(encode_hello_ack(HelloAck()))
    assert len(encode_hello_ack(HelloAck(resumed=True))) == ack_base + 2
    assert len(encode_hello_ack(HelloAck(max_concurrent_streams=64))) == ack_base  # default


_identity = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 128)
_optional_identity = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 128)


@settings(max_examples=150, deadline=None)
@given(
    device_id=_identity,
    app_id=_optional_identity,
    token=st.binary(max_size=2048),
    resume_ticket=st.binary(max_size=300),
    dictionaries=st.lists(st.integers(0, 2**32 - 1), max_size=32),  # spec 7.1: at most 32
    preset_id=st.integers(0, 2**20),
    heartbeat_s=st.integers(0, 2**32),
    header_table_size=st.integers(4096, 2**32),
    max_frame_size=st.integers(1024, 2**32),
    app_version=_optional_identity,
    platform=_optional_identity,
)
def test_hello_round_trip(
    device_id: str,
    app_id: str,
    token: bytes,
    resume_ticket: bytes,
    dictionaries: list[int],
    preset_id: int,
    heartbeat_s: int,
    header_table_size: int,
    max_frame_size: int,
    app_version: str,
    platform: str,
) -> None:
    hello = Hello(
        device_id=device_id,
        app_id=app_id,
        token=token,
        resume_ticket=resume_ticket,
        dictionaries=tuple(dictionaries),
        preset_id=preset_id,
        heartbeat_s=heartbeat_s,
        header_table_size=header_table_size,
        max_frame_size=max_frame_size,
        app_version=app_version,
        platform=platform,
    )
    assert decode_hello(encode_hello(hello), LIMITS) == hello


@settings(max_examples=150, deadline=None)
@given(
    session_id=st.binary(max_size=64),
    resume_ticket=st.binary(max_size=300),
    numbers=st.tuples(
        st.integers(0, 2**32),  # heartbeat_s
        st.integers(0, 2**20),  # preset_id
        st.integers(0, 2**32 - 1),  # newest_dictionary
        st.integers(4096, 2**32),  # header_table_size
        st.integers(1024, 2**32),  # max_frame_size
        st.integers(1, 2**32),  # max_concurrent_streams
        st.integers(256, 2**32),  # max_header_list_size (>= 256)
        st.integers(0, 2**40),  # max_body_size
        st.integers(0, 2**56 - 1),  # server_time_ms
    ),
    resumed=st.booleans(),
)
def test_hello_ack_round_trip(
    session_id: bytes,
    resume_ticket: bytes,
    numbers: tuple[int, int, int, int, int, int, int, int, int],
    resumed: bool,
) -> None:
    ack = HelloAck(session_id, resume_ticket, *numbers, resumed=resumed)
    assert decode_hello_ack(encode_hello_ack(ack)) == ack


def test_unknown_fields_skipped_in_hello_and_ack() -> None:
    extra = vfield(40, 5) + bfield(41, b"future") + vfield(400, 1) + bfield(2**20, b"x" * 10)
    assert decode_hello(VERSION + extra + DEVICE + extra, LIMITS) == Hello(device_id="dev")
    assert decode_hello_ack(extra + VERSION + vfield(99, 1)) == HelloAck()


@pytest.mark.parametrize(
    "payload",
    [
        VERSION + vfield(2, 5),  # device_id as a varint
        bfield(1, b"\x01") + DEVICE,  # version as bytes
        VERSION + DEVICE + bfield(6, b"\x01"),  # dictionary as bytes
        VERSION + DEVICE + bfield(9, b"\x10\x00"),  # header_table_size as bytes
        VERSION + DEVICE + vfield(4, 1),  # token as a varint
    ],
)
def test_hello_wrong_kind(payload: bytes) -> None:
    assert _hello_code(payload) is ErrorCode.FIELD_ERROR


@pytest.mark.parametrize(
    "payload",
    [
        VERSION + DEVICE + DEVICE,
        VERSION + VERSION + DEVICE,
        VERSION + DEVICE + vfield(7, 0) + vfield(7, 0),
        VERSION + DEVICE + bfield(4, b"t") + bfield(4, b"t"),
    ],
)
def test_hello_duplicate_field(payload: bytes) -> None:
    assert _hello_code(payload) is ErrorCode.FIELD_ERROR


def test_hello_repeated_dictionary_field_is_fine() -> None:
    payload = VERSION + DEVICE + vfield(6, 1) + vfield(6, 2) + vfield(6, 2)
    assert decode_hello(payload, LIMITS).dictionaries == (1, 2, 2)


@pytest.mark.parametrize(
    "payload",
    [
        VERSION + DEVICE + b"\x07\x05ab",  # app_id length past the end
        VERSION + DEVICE[:-1],  # device_id cut short
        VERSION + DEVICE + b"\x10",  # preset_id key without value
        VERSION + DEVICE + b"\x10\xff",  # preset_id value truncated
    ],
)
def test_hello_field_past_end(payload: bytes) -> None:
    assert _hello_code(payload) is ErrorCode.FIELD_ERROR


@pytest.mark.parametrize("number", [2, 3, 11, 12])
def test_hello_invalid_utf8(number: int) -> None:
    fields = {2: DEVICE}
    fields[number] = bfield(number, b"ok\xff\xfe")
    payload = VERSION + b"".join(fields[n] for n in sorted(fields))
    assert _hello_code(payload) is ErrorCode.FIELD_ERROR


@pytest.mark.parametrize("payload", [VERSION, VERSION + bfield(2, b""), VERSION + vfield(8, 3)])
def test_hello_missing_device_id(payload: bytes) -> None:
    assert _hello_code(payload) is ErrorCode.FIELD_ERROR


@pytest.mark.parametrize("version_field", [vfield(1, 2), vfield(1, 0), b"", vfield(1, 2**40)])
def test_hello_unsupported_version(version_field: bytes) -> None:
    assert _hello_code(version_field + DEVICE) is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("version_field", [vfield(1, 2), vfield(1, 0), b""])
def test_hello_ack_unsupported_version(version_field: bytes) -> None:
    assert _ack_code(version_field) is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("number", [2, 3, 11, 12])
def test_identity_length_limit_counts_utf8_bytes(number: int) -> None:
    limits = Limits(max_identity_length=10)
    at_limit = "é" * 5  # 10 bytes
    over = "é" * 5 + "x"  # 11 bytes, 6 characters
    for text, ok in ((at_limit, True), (over, False)):
        fields = {2: DEVICE, number: bfield(number, text.encode())}
        payload = VERSION + b"".join(fields[n] for n in sorted(fields))
        if ok:
            decode_hello(payload, limits)
        else:
            assert _hello_code(payload, limits) is ErrorCode.FIELD_ERROR


@pytest.mark.parametrize("number", [4, 5])
def test_credential_length_limit(number: int) -> None:
    limits = Limits(max_credential_length=2048)
    decode_hello(VERSION + DEVICE + bfield(number, b"t" * 2048), limits)
    assert _hello_code(VERSION + DEVICE + bfield(number, b"t" * 2049)) is ErrorCode.FIELD_ERROR


def test_default_identity_limit() -> None:
    decode_hello(VERSION + bfield(2, b"d" * 128), LIMITS)
    assert _hello_code(VERSION + bfield(2, b"d" * 129)) is ErrorCode.FIELD_ERROR


@pytest.mark.parametrize(
    "extra",
    [vfield(9, 4095), vfield(9, 0), vfield(10, 1023), vfield(10, 0)],
)
def test_hello_announced_sizes_too_small(extra: bytes) -> None:
    assert _hello_code(VERSION + DEVICE + extra) is ErrorCode.FIELD_ERROR


def test_hello_announced_sizes_at_minimum() -> None:
    hello = decode_hello(VERSION + DEVICE + vfield(9, 4096) + vfield(10, 1024), LIMITS)
    assert (hello.header_table_size, hello.max_frame_size) == (4096, 1024)


@pytest.mark.parametrize("extra", [vfield(7, 4095), vfield(8, 1023), vfield(9, 0)])
def test_hello_ack_announced_sizes_too_small(extra: bytes) -> None:
    assert _ack_code(VERSION + extra) is ErrorCode.FIELD_ERROR


def test_hello_ack_resumed_any_nonzero_is_true() -> None:
    assert decode_hello_ack(VERSION + vfield(13, 7)).resumed is True
    assert decode_hello_ack(VERSION + vfield(13, 0)).resumed is False


# ------------------------------------------------- through a server Connection


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (vfield(1, 2) + DEVICE, ErrorCode.UNSUPPORTED_VERSION),
        (VERSION, ErrorCode.FIELD_ERROR),
        (VERSION + DEVICE + vfield(9, 1024), ErrorCode.FIELD_ERROR),
        (VERSION + DEVICE + vfield(7, 99), ErrorCode.UNKNOWN_PRESET),
        (VERSION + bfield(2, b"\xc3\x28"), ErrorCode.FIELD_ERROR),
    ],
)
def test_bad_hello_ends_the_connection(payload: bytes, code: ErrorCode) -> None:
    server = Connection(Role.SERVER)
    with pytest.raises(ProtocolError) as info:
        server.receive_data(encode_frame(FrameType.HELLO, 0, payload))
    assert info.value.code is code
    assert connection_error(server.data_to_send()).code == code
    assert server.closed
    assert server.receive_data(b"anything") == []


def test_unknown_preset_refused_locally_by_the_client() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send_hello(Hello(device_id="d", preset_id=42))
    assert client.data_to_send() == b""
