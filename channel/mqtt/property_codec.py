"""Reading and writing MQTT 5 properties by the table in ``channel.mqtt.properties``.

Decoding enforces the table: an identifier unknown or not allowed in the
packet is a Malformed Packet (section 2.2.2.2), a second copy of anything but
User Property and (in PUBLISH) Subscription Identifier is a Protocol Error,
and so are the values the specification forbids (0 for Receive Maximum,
Topic Alias, Maximum Packet Size and Subscription Identifier; anything but 0
or 1 in the one-byte flags; a wildcard in a Response Topic). Encoding refuses
the same with ``LocalMqttError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from channel.mqtt.errors import LocalMqttError, MalformedPacket, MqttProtocolError
from channel.mqtt.primitives import Buffer, read_varint, varint_bytes
from channel.mqtt.properties import (
    NO_PROPERTIES,
    PROPERTY_BY_ID,
    PROPERTY_SPECS,
    WILL_PROPERTIES,
    Properties,
    PropertyId,
    PropertySpec,
    PropertyType,
)
from channel.mqtt.reasons import PacketType
from channel.mqtt.topics import check_topic_name

_SUBSCRIPTION_IDS = "subscription_identifiers"


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
        spec = PROPERTY_BY_ID.get(identifier)
        if spec is None or where not in spec.allowed_in:
            raise MalformedPacket(f"property 0x{identifier:02x} is not allowed here")
        value, pos = spec.read(section, pos)
        _check_value(spec, value)
        if spec.repeatable:
            lists.setdefault(spec.field, []).append(value)
        elif spec.field in found:
            raise MqttProtocolError(f"property {spec.property_id.name} appears twice")
        else:
            found[spec.field] = value if spec.kind is not PropertyType.BOOL else bool(value)
    for name, values in lists.items():
        if name == _SUBSCRIPTION_IDS and len(values) > 1 and where != PacketType.PUBLISH:
            raise MqttProtocolError("SUBSCRIBE carries more than one subscription identifier")
        found[name] = tuple(values)
    return Properties(**found), end


def _check_value(spec: PropertySpec, value: Any) -> None:
    if spec.kind is PropertyType.BOOL and value > 1:
        raise MqttProtocolError(f"property {spec.property_id.name} must be 0 or 1, got {value}")
    if spec.valid is not None and not spec.valid(value):
        raise MqttProtocolError(f"property {spec.property_id.name} may not be {value}")
    if spec.property_id is PropertyId.RESPONSE_TOPIC:
        check_topic_name(value)


# ---------------------------------------------------------------- encoding


def _reader(fields: list[str]) -> Callable[[Properties], tuple[Any, ...]]:
    if not fields:  # PINGREQ, PINGRESP
        return lambda props: ()
    getter = attrgetter(*fields)
    if len(fields) == 1:
        return lambda props: (getter(props),)
    return getter  # several names: attrgetter gives a tuple


@dataclass(frozen=True, slots=True)
class _Layout:
    """How to encode properties for one packet: read the allowed fields at once, and
    check the others are all absent with one tuple comparison."""

    specs: tuple[PropertySpec, ...]
    read: Callable[[Properties], tuple[Any, ...]]
    read_others: Callable[[Properties], tuple[Any, ...]]
    others_absent: tuple[Any, ...]


def _layout(where: int) -> _Layout:
    allowed = [spec for spec in PROPERTY_SPECS if where in spec.allowed_in]
    others = _reader([spec.field for spec in PROPERTY_SPECS if where not in spec.allowed_in])
    return _Layout(
        tuple(allowed), _reader([spec.field for spec in allowed]), others, others(NO_PROPERTIES)
    )


_LAYOUTS = {where: _layout(where) for where in (*PacketType, WILL_PROPERTIES)}


def encode_properties(props: Properties, where: int) -> bytes:
    """Property Length and properties, in identifier order, for packet ``where``."""
    if props is NO_PROPERTIES:
        return b"\x00"
    layout = _LAYOUTS[where]
    if layout.read_others(props) != layout.others_absent:
        raise LocalMqttError(f"properties not allowed in this packet: {_misplaced(props, where)}")
    out = []
    for spec, value in zip(layout.specs, layout.read(props), strict=True):
        if value is None or value == ():
            continue
        if not spec.repeatable:
            out.append(spec.write(value))
            continue
        if spec.field == _SUBSCRIPTION_IDS and len(value) > 1 and where != PacketType.PUBLISH:
            raise LocalMqttError("only PUBLISH may carry several subscription identifiers")
        out.extend(map(spec.write, value))
    body = b"".join(out)
    return varint_bytes(len(body)) + body


def _misplaced(props: Properties, where: int) -> list[str]:
    return [
        spec.property_id.name
        for spec in PROPERTY_SPECS
        if where not in spec.allowed_in and getattr(props, spec.field) not in (None, ())
    ]
