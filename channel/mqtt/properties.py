"""MQTT 5 properties (section 2.2.2): one typed ``Properties`` value, one table of rules.

``PROPERTY_SPECS`` says, for every property identifier, its data type, the
packets (or the Will Properties of CONNECT) it may appear in and the values
it may take; ``channel.mqtt.property_codec`` reads and writes properties by it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import Enum, IntEnum
from typing import Any

from channel.mqtt.errors import LocalMqttError
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
from channel.mqtt.slots import fast_init


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


@fast_init
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


Reader = Callable[[Buffer, int], tuple[Any, int]]


def _read_pair(buf: Buffer, pos: int) -> tuple[tuple[str, str], int]:
    name, pos = read_string(buf, pos)
    value, pos = read_string(buf, pos)
    return (name, value), pos


_READERS: dict[PropertyType, Reader] = {
    PropertyType.BYTE: read_byte,
    PropertyType.BOOL: read_byte,
    PropertyType.UINT16: read_uint16,
    PropertyType.UINT32: read_uint32,
    PropertyType.VARINT: read_varint,
    PropertyType.STRING: read_string,
    PropertyType.BINARY: read_binary,
    PropertyType.STRING_PAIR: _read_pair,
}
#: Largest value and width in bytes (0: variable) of the integer types.
_INTEGERS = {
    PropertyType.BYTE: (0xFF, 1),
    PropertyType.UINT16: (0xFFFF, 2),
    PropertyType.UINT32: (0xFFFF_FFFF, 4),
    PropertyType.VARINT: (MAX_VARINT, 0),
}


@dataclass(frozen=True, slots=True)
class PropertySpec:
    property_id: PropertyId
    field: str
    kind: PropertyType
    allowed_in: frozenset[int]
    #: A value rule beyond the type's range; ``None`` means any value of the type.
    valid: Callable[[int], bool] | None = None
    repeatable: bool = False
    #: Reads the value after the identifier: ``(value, position after it)``.
    read: Reader = dataclass_field(init=False, repr=False, compare=False)
    #: Identifier and value as bytes; ``LocalMqttError`` for a value the table forbids.
    write: Callable[[Any], bytes] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "read", _READERS[self.kind])
        object.__setattr__(self, "write", _writer(self))


def _writer(spec: PropertySpec) -> Callable[[Any], bytes]:
    prefix = bytes((spec.property_id,))
    kind, valid, name = spec.kind, spec.valid, spec.property_id.name
    if kind is PropertyType.STRING:
        return lambda value: prefix + string_bytes(value)
    if kind is PropertyType.BINARY:
        return lambda value: prefix + binary_bytes(value)
    if kind is PropertyType.STRING_PAIR:
        return lambda pair: prefix + string_bytes(pair[0]) + string_bytes(pair[1])
    if kind is PropertyType.BOOL:
        return lambda value: prefix + (b"\x01" if value else b"\x00")
    top, width = _INTEGERS[kind]

    def write_integer(value: int) -> bytes:
        if not 0 <= value <= top or (valid is not None and not valid(value)):
            raise LocalMqttError(f"property {name} may not be {value}")
        return prefix + (value.to_bytes(width, "big") if width else varint_bytes(value))

    return write_integer


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
PROPERTY_BY_ID: dict[int, PropertySpec] = {spec.property_id: spec for spec in PROPERTY_SPECS}
