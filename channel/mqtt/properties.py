"""MQTT 5 properties (section 2.2.2): one typed ``Properties`` value, one table of rules.

``PROPERTY_SPECS`` says, for every property identifier, its data type, the
packets (or the Will Properties of CONNECT) it may appear in and the values
it may take. Decoding enforces the table: an identifier unknown or not
allowed in the packet is a Malformed Packet (section 2.2.2.2), a second copy
of anything but User Property and (in PUBLISH) Subscription Identifier is a
Protocol Error, and so are the values the specification forbids (0 for
Receive Maximum, Topic Alias, Maximum Packet Size and Subscription
Identifier; anything but 0 or 1 in the one-byte flags).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from channel.mqtt.errors import LocalMqttError, MalformedPacket, MqttProtocolError
from channel.mqtt.primitives import (
    MAX_VARINT,
    Buffer,
    binary_bytes,
    read_binary,
    read_byte,
    read_string,
    read_uint16,
    read_uint32,
    read_varint,
    string_bytes,
    varint_bytes,
)
from channel.mqtt.reasons import PacketType
from channel.mqtt.topics import check_topic_name


class PropertyId(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertyType(Enum):
    BYTE = "byte"
    BOOL = "byte 0/1"
    UINT16 = "two byte integer"
    UINT32 = "four byte integer"
    VARINT = "variable byte integer"
    STRING = "UTF-8 encoded string"
    BINARY = "binary data"
    STRING_PAIR = "UTF-8 string pair"


#: Where a property may appear besides packet types: the Will Properties of CONNECT.
WILL_PROPERTIES = 0


@dataclass(frozen=True, slots=True, repr=False)
class Properties:
    """Every MQTT 5 property; ``None`` / ``()`` means absent. Intervals are seconds."""

    payload_format_indicator: int | None = None
    message_expiry_interval_s: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    #: Several only in a server's PUBLISH (one per matching subscription).
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval_s: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive_s: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: bool | None = None
    will_delay_interval_s: int | None = None
    request_response_information: bool | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: bool | None = None
    #: In the order they came; names may repeat.
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: bool | None = None
    subscription_identifier_available: bool | None = None
    shared_subscription_available: bool | None = None

    def __repr__(self) -> str:
        present = [
            f"{name}={value!r}"
            for name in self.__slots__
            if (value := getattr(self, name)) is not None and value != ()
        ]
        return f"Properties({', '.join(present)})"


#: The empty property set; encoders test for it by identity first.
NO_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class PropertySpec:
    property_id: PropertyId
    field: str
    kind: PropertyType
    allowed_in: frozenset[int]
    #: A value rule beyond the type's range; ``None`` means any value of the type.
    valid: Callable[[int], bool] | None = None
    repeatable: bool = False


_P = PacketType
_W = WILL_PROPERTIES
_MESSAGE = frozenset({_P.PUBLISH, _W})
_ACKS = frozenset({_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP})
_CONNECTS = frozenset({_P.CONNECT, _P.CONNACK})
_AUTHS = frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH})
_REPLIES = frozenset({_P.CONNACK, *_ACKS, _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH})
_ALL = frozenset({*_P, _W}) - {_P.PINGREQ, _P.PINGRESP}
_CONNACK = frozenset({_P.CONNACK})


def _nonzero(value: int) -> bool:
    return value != 0


def _zero_or_one(value: int) -> bool:
    return value in (0, 1)


_I, _T, _S = PropertyId, PropertyType, PropertySpec
PROPERTY_SPECS: tuple[PropertySpec, ...] = (
    _S(_I.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", _T.BYTE, _MESSAGE, _zero_or_one),
    _S(_I.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval_s", _T.UINT32, _MESSAGE),
    _S(_I.CONTENT_TYPE, "content_type", _T.STRING, _MESSAGE),
    _S(_I.RESPONSE_TOPIC, "response_topic", _T.STRING, _MESSAGE),
    _S(_I.CORRELATION_DATA, "correlation_data", _T.BINARY, _MESSAGE),
    _S(
        _I.SUBSCRIPTION_IDENTIFIER,
        "subscription_identifiers",
        _T.VARINT,
        frozenset({_P.PUBLISH, _P.SUBSCRIBE}),
        _nonzero,
        repeatable=True,
    ),
    _S(
        _I.SESSION_EXPIRY_INTERVAL,
        "session_expiry_interval_s",
        _T.UINT32,
        frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT}),
    ),
    _S(_I.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier", _T.STRING, _CONNACK),
    _S(_I.SERVER_KEEP_ALIVE, "server_keep_alive_s", _T.UINT16, _CONNACK),
    _S(_I.AUTHENTICATION_METHOD, "authentication_method", _T.STRING, _AUTHS),
    _S(_I.AUTHENTICATION_DATA, "authentication_data", _T.BINARY, _AUTHS),
    _S(
        _I.REQUEST_PROBLEM_INFORMATION,
        "request_problem_information",
        _T.BOOL,
        frozenset({_P.CONNECT}),
    ),
    _S(_I.WILL_DELAY_INTERVAL, "will_delay_interval_s", _T.UINT32, frozenset({_W})),
    _S(
        _I.REQUEST_RESPONSE_INFORMATION,
        "request_response_information",
        _T.BOOL,
        frozenset({_P.CONNECT}),
    ),
    _S(_I.RESPONSE_INFORMATION, "response_information", _T.STRING, _CONNACK),
    _S(
        _I.SERVER_REFERENCE,
        "server_reference",
        _T.STRING,
        frozenset({_P.CONNACK, _P.DISCONNECT}),
    ),
    _S(_I.REASON_STRING, "reason_string", _T.STRING, _REPLIES),
    _S(_I.RECEIVE_MAXIMUM, "receive_maximum", _T.UINT16, _CONNECTS, _nonzero),
    _S(_I.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", _T.UINT16, _CONNECTS),
    _S(_I.TOPIC_ALIAS, "topic_alias", _T.UINT16, frozenset({_P.PUBLISH}), _nonzero),
    _S(_I.MAXIMUM_QOS, "maximum_qos", _T.BYTE, _CONNACK, _zero_or_one),
    _S(_I.RETAIN_AVAILABLE, "retain_available", _T.BOOL, _CONNACK),
    _S(_I.USER_PROPERTY, "user_properties", _T.STRING_PAIR, _ALL, repeatable=True),
    _S(_I.MAXIMUM_PACKET_SIZE, "maximum_packet_size", _T.UINT32, _CONNECTS, _nonzero),
    _S(
        _I.WILDCARD_SUBSCRIPTION_AVAILABLE,
        "wildcard_subscription_available",
        _T.BOOL,
        _CONNACK,
    ),
    _S(
        _I.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        "subscription_identifier_available",
        _T.BOOL,
        _CONNACK,
    ),
    _S(_I.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available", _T.BOOL, _CONNACK),
)
_BY_ID: dict[int, PropertySpec] = {spec.property_id: spec for spec in PROPERTY_SPECS}


# ---------------------------------------------------------------- decoding


def _read_value(kind: PropertyType, buf: Buffer, pos: int) -> tuple[Any, int]:
    if kind is PropertyType.STRING:
        return read_string(buf, pos)
    if kind is PropertyType.UINT32:
        return read_uint32(buf, pos)
    if kind is PropertyType.UINT16:
        return read_uint16(buf, pos)
    if kind is PropertyType.BYTE or kind is PropertyType.BOOL:
        return read_byte(buf, pos)
    if kind is PropertyType.VARINT:
        return read_varint(buf, pos)
    if kind is PropertyType.BINARY:
        return read_binary(buf, pos)
    name, pos = read_string(buf, pos)
    value, pos = read_string(buf, pos)
    return (name, value), pos


def decode_properties(buf: Buffer, pos: int, where: int) -> tuple[Properties, int]:
    """Read a Property Length and the properties after it, for packet ``where``."""
    if pos < len(buf) and buf[pos] == 0:
        return NO_PROPERTIES, pos + 1
    length, pos = read_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedPacket(f"property length {length} runs past the packet end")
    found: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    section = memoryview(buf)[:end]  # reads inside the properties cannot run past ``end``
    while pos < end:
        identifier, pos = read_varint(section, pos)
        spec = _BY_ID.get(identifier)
        if spec is None or where not in spec.allowed_in:
            raise MalformedPacket(f"property 0x{identifier:02x} is not allowed here")
        value, pos = _read_value(spec.kind, section, pos)
        _check_value(spec, value)
        if spec.repeatable:
            lists.setdefault(spec.field, []).append(value)
        elif spec.field in found:
            raise MqttProtocolError(f"property {spec.property_id.name} appears twice")
        else:
            found[spec.field] = value if spec.kind is not PropertyType.BOOL else bool(value)
    for field, values in lists.items():
        if field == "subscription_identifiers" and len(values) > 1 and where != PacketType.PUBLISH:
            raise MqttProtocolError("SUBSCRIBE carries more than one subscription identifier")
        found[field] = tuple(values)
    return Properties(**found), end


def _check_value(spec: PropertySpec, value: Any) -> None:
    if spec.kind is PropertyType.BOOL and value > 1:
        raise MqttProtocolError(f"property {spec.property_id.name} must be 0 or 1, got {value}")
    if spec.valid is not None and not spec.valid(value):
        raise MqttProtocolError(f"property {spec.property_id.name} may not be {value}")
    if spec.property_id is PropertyId.RESPONSE_TOPIC:
        check_topic_name(value)


# ---------------------------------------------------------------- encoding

_LIMITS = {
    PropertyType.BYTE: 0xFF,
    PropertyType.UINT16: 0xFFFF,
    PropertyType.UINT32: 0xFFFF_FFFF,
    PropertyType.VARINT: MAX_VARINT,
}


def _value_bytes(spec: PropertySpec, value: Any) -> bytes:
    kind = spec.kind
    if kind is PropertyType.STRING:
        return string_bytes(value)
    if kind is PropertyType.BINARY:
        return binary_bytes(value)
    if kind is PropertyType.STRING_PAIR:
        return string_bytes(value[0]) + string_bytes(value[1])
    if kind is PropertyType.BOOL:
        return b"\x01" if value else b"\x00"
    if not 0 <= value <= _LIMITS[kind] or (spec.valid is not None and not spec.valid(value)):
        raise LocalMqttError(f"property {spec.property_id.name} may not be {value}")
    if kind is PropertyType.VARINT:
        return varint_bytes(value)
    return int(value).to_bytes({0xFF: 1, 0xFFFF: 2}.get(_LIMITS[kind], 4), "big")


def encode_properties(props: Properties, where: int) -> bytes:
    """Property Length and properties, in identifier order, for packet ``where``."""
    if props is NO_PROPERTIES:
        return b"\x00"
    out = bytearray()
    for spec in PROPERTY_SPECS:
        value = getattr(props, spec.field)
        if value is None or value == ():
            continue
        if where not in spec.allowed_in:
            raise LocalMqttError(f"property {spec.property_id.name} is not allowed here")
        prefix = bytes((spec.property_id,))
        if spec.repeatable:
            if spec.kind is PropertyType.VARINT and len(value) > 1 and where != PacketType.PUBLISH:
                raise LocalMqttError("only PUBLISH may carry several subscription identifiers")
            for item in value:
                out += prefix + _value_bytes(spec, item)
        else:
            out += prefix + _value_bytes(spec, value)
    return varint_bytes(len(out)) + bytes(out)
