"""PUBLISH encoding for the push hot path, without building a ``Publish`` first.

``encode_publish`` takes the fields as arguments (a frozen dataclass costs
about as much to build as the packet costs to encode); ``prepare_publish``
encodes a message once for many receivers, which differ only in packet id and
DUP flag: a topic fan-out pays one concatenation per subscriber. Both check
what ``encode(Publish(...))`` checks and give the same bytes.

``topic_head`` and ``push_bytes`` are a connection's pushes: the topic (its
device's push topic) is checked and encoded once per connection, and each push
pays one concatenation of the packet's parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from channel.mqtt.errors import LocalMqttError
from channel.mqtt.primitives import string_bytes, varint_bytes
from channel.mqtt.properties import NO_PROPERTIES, Properties, PropertyId
from channel.mqtt.property_codec import encode_properties
from channel.mqtt.reasons import MQTT_3_1_1, MQTT_5, PacketType
from channel.mqtt.topics import topic_name_problem

_FIRST_BYTES = tuple(bytes((0x30 | flags,)) for flags in range(16))


def _check(topic: str, qos: int, version: int, properties: Properties) -> None:
    if qos != 1 and qos != 2 and qos != 0:
        raise LocalMqttError(f"PUBLISH QoS must be 0, 1 or 2, not {qos}")
    if "+" in topic or "#" in topic:
        raise LocalMqttError(f"PUBLISH {topic_name_problem(topic)}")
    if not topic and (version != MQTT_5 or properties.topic_alias is None):
        raise LocalMqttError("PUBLISH topic name is empty and there is no topic alias")
    if version != MQTT_5 and version != MQTT_3_1_1:
        raise LocalMqttError(f"protocol level {version} is neither 4 (3.1.1) nor 5 (5.0)")


def _packet_id(qos: int, packet_id: int, dup: bool) -> bytes:
    if qos == 0:
        if packet_id or dup:
            raise LocalMqttError("a QoS 0 PUBLISH has no packet id and no DUP flag")
        return b""
    if not 0 < packet_id <= 0xFFFF:
        raise LocalMqttError(f"packet id {packet_id} is not in 1..65535")
    return packet_id.to_bytes(2, "big")


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    *,
    version: int,
    retain: bool = False,
    dup: bool = False,
    properties: Properties = NO_PROPERTIES,
) -> bytes:
    """The bytes of ``Publish(topic, payload, qos, retain, packet_id, dup, properties)``."""
    _check(topic, qos, version, properties)
    packet_id_bytes = _packet_id(qos, packet_id, dup)
    topic_bytes = string_bytes(topic)
    props = encode_properties(properties, PacketType.PUBLISH) if version == MQTT_5 else b""
    remaining = len(topic_bytes) + len(packet_id_bytes) + len(props) + len(payload)
    first = _FIRST_BYTES[(qos << 1) | (8 if dup else 0) | (1 if retain else 0)]
    return b"".join((first, varint_bytes(remaining), topic_bytes, packet_id_bytes, props, payload))


def topic_head(topic: str, version: int) -> bytes:
    """``topic`` checked (as ``encode_publish`` checks it with no topic alias) and
    encoded as a UTF-8 string: what ``push_bytes`` takes."""
    _check(topic, 1, version, NO_PROPERTIES)
    return string_bytes(topic)


def push_bytes(head: bytes, payload: bytes, qos: int, packet_id: int, dup: bool,
               props: bytes) -> bytes:  # fmt: skip
    """``encode_publish(topic, payload, qos, packet_id, dup=dup, properties=...)`` for a
    QoS 1 or 2 PUBLISH: ``head`` from ``topic_head(topic, version)``, ``props`` the
    encoded properties (MQTT 5) or b"" (3.1.1), ``packet_id`` in 1..65535."""
    remaining = len(head) + 2 + len(props) + len(payload)
    first = _FIRST_BYTES[(qos << 1) | (8 if dup else 0)]
    return b"".join((first, varint_bytes(remaining), head, packet_id.to_bytes(2, "big"), props,
                     payload))  # fmt: skip


_MESSAGE_ID_PROPERTY = bytes((PropertyId.USER_PROPERTY,)) + string_bytes("message-id")
_USER_PROPERTY = bytes((PropertyId.USER_PROPERTY,))


def push_properties(message_id: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """``encode_properties(Properties(user_properties=(("message-id", message_id),
    *headers)), PUBLISH)``: a push's MQTT 5 properties, without a ``Properties``."""
    parts = [_MESSAGE_ID_PROPERTY, string_bytes(message_id)]
    for name, value in headers:
        parts += (_USER_PROPERTY, string_bytes(name), string_bytes(value))
    body = b"".join(parts)
    return varint_bytes(len(body)) + body


@dataclass(frozen=True, slots=True)
class PreparedPublish:
    """One message encoded for many receivers; ``to_bytes`` adds the packet id and DUP."""

    qos: int
    #: Remaining Length and topic name.
    head: bytes
    #: Properties (MQTT 5) and payload.
    tail: bytes
    retain: bool

    def to_bytes(self, packet_id: int = 0, dup: bool = False) -> bytes:
        qos = self.qos
        first = _FIRST_BYTES[(qos << 1) | (8 if dup else 0) | (1 if self.retain else 0)]
        return b"".join((first, self.head, _packet_id(qos, packet_id, dup), self.tail))


def prepare_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    *,
    version: int,
    retain: bool = False,
    properties: Properties = NO_PROPERTIES,
) -> PreparedPublish:
    _check(topic, qos, version, properties)
    topic_bytes = string_bytes(topic)
    props = encode_properties(properties, PacketType.PUBLISH) if version == MQTT_5 else b""
    remaining = len(topic_bytes) + (2 if qos else 0) + len(props) + len(payload)
    return PreparedPublish(qos, varint_bytes(remaining) + topic_bytes, props + payload, retain)
