"""Packet bodies to packets: one function per packet type, all rules of its section.

Each decoder gets the fixed header's flags nibble, the whole body (the bytes
the Remaining Length counted) and the protocol level, and either returns the
packet or raises an ``MqttError``. Bytes left over after the last field are a
Malformed Packet everywhere but in a PUBLISH payload. Which packet types and
flag nibbles may arrive at all is checked before the body is read
(``channel.mqtt.parser``, which also has ``decode``, the one-shot form for
tests and tools).
"""

from __future__ import annotations

from collections.abc import Callable

from channel.mqtt.errors import MalformedPacket, MqttProtocolError, UnsupportedProtocolVersion
from channel.mqtt.packets import (
    PINGREQ,
    PINGRESP,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from channel.mqtt.primitives import (
    Buffer,
    read_binary,
    read_byte,
    read_string,
    read_uint16,
)
from channel.mqtt.properties import NO_PROPERTIES, WILL_PROPERTIES, Properties
from channel.mqtt.property_codec import decode_properties
from channel.mqtt.reasons import (
    ALLOWED_REASON_CODES,
    MQTT_3_1_1,
    MQTT_5,
    PROTOCOL_LEVELS,
    ConnackReturnCode,
    PacketType,
    ReasonCode,
    connack_reason,
)
from channel.mqtt.topics import check_topic_filter, check_topic_name

Decoder = Callable[[int, bytes, int], Packet]

_REASONS = {int(code): code for code in ReasonCode}
_PROTOCOL_NAME = b"\x00\x04MQTT"


def _end(body: Buffer, pos: int, what: str) -> None:
    if pos != len(body):
        raise MalformedPacket(f"{len(body) - pos} bytes after the end of the {what}")


def _packet_id(body: Buffer, pos: int, what: str) -> tuple[int, int]:
    packet_id, pos = read_uint16(body, pos)
    if packet_id == 0:
        raise MqttProtocolError(f"{what} with packet id 0")
    return packet_id, pos


def _reason(packet_type: PacketType, value: int) -> ReasonCode:
    reason = _REASONS.get(value)
    if reason is None or reason not in ALLOWED_REASON_CODES[packet_type]:
        raise MalformedPacket(f"{packet_type.name} with reason code 0x{value:02x}")
    return reason


def _props(body: Buffer, pos: int, where: int, version: int) -> tuple[Properties, int]:
    if version == MQTT_3_1_1:
        return NO_PROPERTIES, pos
    return decode_properties(body, pos, where)


# ------------------------------------------------------------ CONNECT family


def connect_level(body: Buffer) -> int | None:
    """The protocol level a CONNECT body announces, if it names protocol "MQTT"."""
    if len(body) > 6 and bytes(body[:6]) == _PROTOCOL_NAME:
        return body[6]
    return None


def decode_connect(flags: int, body: bytes, version: int) -> Connect:
    """CONNECT at the level it announces; ``version`` is the level the caller expects."""
    level = connect_level(body)
    if level is None:
        name, _ = read_string(body, 0)
        if name == "MQTT":
            raise MalformedPacket("CONNECT ends after the protocol name")
        raise UnsupportedProtocolVersion(f"protocol name {name!r} is not 'MQTT'")
    if level not in PROTOCOL_LEVELS:
        raise UnsupportedProtocolVersion(f"protocol level {level} is neither 4 nor 5")
    if level != version:
        raise MqttProtocolError(f"CONNECT at level {level} where level {version} was expected")
    connect_flags, pos = read_byte(body, 7)
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    keep_alive_s, pos = read_uint16(body, pos)
    properties, pos = _props(body, pos, PacketType.CONNECT, level)
    client_id, pos = read_string(body, pos)
    will, pos = _will(connect_flags, body, pos, level)
    username = password = None
    if connect_flags & 0x80:
        username, pos = read_string(body, pos)
    if connect_flags & 0x40:
        if username is None and level == MQTT_3_1_1:
            raise MalformedPacket("MQTT 3.1.1 CONNECT has a password flag but no user name flag")
        password, pos = read_binary(body, pos)
    _end(body, pos, "CONNECT")
    return Connect(
        client_id, bool(connect_flags & 0x02), keep_alive_s, username, password, will, properties
    )


def _will(flags: int, body: bytes, pos: int, level: int) -> tuple[Will | None, int]:
    qos = (flags >> 3) & 0x03
    retain = bool(flags & 0x20)
    if not flags & 0x04:
        if qos or retain:
            raise MalformedPacket("CONNECT sets will QoS or will retain without a will")
        return None, pos
    if qos == 3:
        raise MalformedPacket("CONNECT will QoS is 3")
    properties, pos = _props(body, pos, WILL_PROPERTIES, level)
    topic, pos = read_string(body, pos)
    check_topic_name(topic)
    payload, pos = read_binary(body, pos)
    return Will(topic, payload, qos, retain, properties), pos


def decode_connack(flags: int, body: bytes, version: int) -> Connack:
    ack_flags, pos = read_byte(body, 0)
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved acknowledge flags are set")
    code, pos = read_byte(body, pos)
    if version == MQTT_3_1_1:
        if code not in ConnackReturnCode._value2member_map_:
            raise MalformedPacket(f"CONNACK with reserved return code {code}")
        reason = connack_reason(ConnackReturnCode(code))
    else:
        reason = _reason(PacketType.CONNACK, code)
    if ack_flags and reason >= 0x80:
        raise MqttProtocolError("a refusing CONNACK sets session present")
    properties, pos = _props(body, pos, PacketType.CONNACK, version)
    _end(body, pos, "CONNACK")
    return Connack(bool(ack_flags), reason, properties)


def _reason_and_props(
    packet_type: PacketType, body: bytes, version: int
) -> tuple[ReasonCode, Properties]:
    """DISCONNECT / AUTH body: empty means success; a lone reason code means no properties."""
    if not body:
        return ReasonCode.SUCCESS, NO_PROPERTIES
    reason = _reason(packet_type, body[0])
    if len(body) == 1:
        return reason, NO_PROPERTIES
    properties, pos = decode_properties(body, 1, packet_type)
    _end(body, pos, packet_type.name)
    return reason, properties


def decode_disconnect(flags: int, body: bytes, version: int) -> Disconnect:
    if version == MQTT_3_1_1:
        _end(body, 0, "DISCONNECT")
        return Disconnect()
    return Disconnect(*_reason_and_props(PacketType.DISCONNECT, body, version))


def decode_auth(flags: int, body: bytes, version: int) -> Auth:
    if version == MQTT_3_1_1:
        raise MalformedPacket("packet type 15 (AUTH) is reserved in MQTT 3.1.1")
    return Auth(*_reason_and_props(PacketType.AUTH, body, version))


def decode_pingreq(flags: int, body: bytes, version: int) -> Packet:
    _end(body, 0, "PINGREQ")
    return PINGREQ


def decode_pingresp(flags: int, body: bytes, version: int) -> Packet:
    _end(body, 0, "PINGRESP")
    return PINGRESP


# ------------------------------------------------------------ PUBLISH family


def decode_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and not qos:
        raise MqttProtocolError("QoS 0 PUBLISH with the DUP flag")
    topic, pos = read_string(body, 0)
    packet_id = 0
    if qos:
        packet_id, pos = _packet_id(body, pos, "PUBLISH")
    properties = NO_PROPERTIES
    if version == MQTT_5:
        properties, pos = decode_properties(body, pos, PacketType.PUBLISH)
    if topic and ("+" in topic or "#" in topic):
        check_topic_name(topic)
    elif not topic and properties.topic_alias is None:
        if version == MQTT_3_1_1:
            check_topic_name(topic)
        raise MqttProtocolError("PUBLISH with an empty topic name and no topic alias")
    return Publish(topic, body[pos:], qos, bool(flags & 0x01), packet_id, dup, properties)


def _pub_ack_fields(
    packet_type: PacketType, body: bytes, version: int
) -> tuple[int, ReasonCode, Properties]:
    length = len(body)
    if length == 2:
        return _packet_id(body, 0, packet_type.name)[0], ReasonCode.SUCCESS, NO_PROPERTIES
    if version == MQTT_3_1_1:
        raise MalformedPacket(f"MQTT 3.1.1 {packet_type.name} of {length} bytes, not 2")
    packet_id, pos = _packet_id(body, 0, packet_type.name)
    reason = _reason(packet_type, read_byte(body, pos)[0])
    if length == 3:
        return packet_id, reason, NO_PROPERTIES
    properties, pos = decode_properties(body, 3, packet_type)
    _end(body, pos, packet_type.name)
    return packet_id, reason, properties


def decode_puback(flags: int, body: bytes, version: int) -> Puback:
    if len(body) == 2 and (packet_id := (body[0] << 8) | body[1]):
        return Puback(packet_id)  # the push hot path: a bare acknowledgement
    return Puback(*_pub_ack_fields(PacketType.PUBACK, body, version))


def decode_pubrec(flags: int, body: bytes, version: int) -> Pubrec:
    return Pubrec(*_pub_ack_fields(PacketType.PUBREC, body, version))


def decode_pubrel(flags: int, body: bytes, version: int) -> Pubrel:
    return Pubrel(*_pub_ack_fields(PacketType.PUBREL, body, version))


def decode_pubcomp(flags: int, body: bytes, version: int) -> Pubcomp:
    return Pubcomp(*_pub_ack_fields(PacketType.PUBCOMP, body, version))


# ------------------------------------------------------------ SUBSCRIBE family


def decode_subscribe(flags: int, body: bytes, version: int) -> Subscribe:
    packet_id, pos = _packet_id(body, 0, "SUBSCRIBE")
    properties, pos = _props(body, pos, PacketType.SUBSCRIBE, version)
    subscriptions: list[Subscription] = []
    while pos < len(body):
        topic_filter, pos = read_string(body, pos)
        options, pos = read_byte(body, pos)
        subscriptions.append(_subscription(topic_filter, options, version))
    if not subscriptions:
        raise MqttProtocolError("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, tuple(subscriptions), properties)


def _subscription(topic_filter: str, options: int, version: int) -> Subscription:
    qos = options & 0x03
    if version == MQTT_3_1_1:
        if options & 0xFC or qos == 3:
            raise MalformedPacket(f"MQTT 3.1.1 subscription options 0x{options:02x}")
        check_topic_filter(topic_filter)
        return Subscription(topic_filter, qos)
    if options & 0xC0:
        raise MalformedPacket("subscription options with reserved bits 6-7 set")
    retain_handling = (options >> 4) & 0x03
    if qos == 3 or retain_handling == 3:
        raise MqttProtocolError(f"subscription options 0x{options:02x}: QoS or retain handling 3")
    check_topic_filter(topic_filter)
    no_local = bool(options & 0x04)
    if no_local and topic_filter.startswith("$share/"):
        raise MqttProtocolError("no-local set on a shared subscription")
    return Subscription(
        topic_filter, qos, no_local, bool(options & 0x08), RetainHandling(retain_handling)
    )


def decode_suback(flags: int, body: bytes, version: int) -> Suback:
    packet_id, pos = _packet_id(body, 0, "SUBACK")
    properties, pos = _props(body, pos, PacketType.SUBACK, version)
    if pos >= len(body):
        raise MqttProtocolError("SUBACK without a reason code")
    if version == MQTT_3_1_1:
        codes = tuple(_suback_v311(code) for code in body[pos:])
    else:
        codes = tuple(_reason(PacketType.SUBACK, code) for code in body[pos:])
    return Suback(packet_id, codes, properties)


def _suback_v311(code: int) -> ReasonCode:
    if code not in (0, 1, 2, 0x80):
        raise MalformedPacket(f"MQTT 3.1.1 SUBACK return code 0x{code:02x}")
    return _REASONS[code]


def decode_unsubscribe(flags: int, body: bytes, version: int) -> Unsubscribe:
    packet_id, pos = _packet_id(body, 0, "UNSUBSCRIBE")
    properties, pos = _props(body, pos, PacketType.UNSUBSCRIBE, version)
    filters: list[str] = []
    while pos < len(body):
        topic_filter, pos = read_string(body, pos)
        check_topic_filter(topic_filter)
        filters.append(topic_filter)
    if not filters:
        raise MqttProtocolError("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, tuple(filters), properties)


def decode_unsuback(flags: int, body: bytes, version: int) -> Unsuback:
    packet_id, pos = _packet_id(body, 0, "UNSUBACK")
    if version == MQTT_3_1_1:
        _end(body, pos, "UNSUBACK")
        return Unsuback(packet_id)
    properties, pos = decode_properties(body, pos, PacketType.UNSUBACK)
    if pos >= len(body):
        raise MqttProtocolError("UNSUBACK without a reason code")
    codes = tuple(_reason(PacketType.UNSUBACK, code) for code in body[pos:])
    return Unsuback(packet_id, codes, properties)


#: Decoder by packet type (the high nibble of the first byte).
DECODERS: dict[int, Decoder] = {
    PacketType.CONNECT: decode_connect,
    PacketType.CONNACK: decode_connack,
    PacketType.PUBLISH: decode_publish,
    PacketType.PUBACK: decode_puback,
    PacketType.PUBREC: decode_pubrec,
    PacketType.PUBREL: decode_pubrel,
    PacketType.PUBCOMP: decode_pubcomp,
    PacketType.SUBSCRIBE: decode_subscribe,
    PacketType.SUBACK: decode_suback,
    PacketType.UNSUBSCRIBE: decode_unsubscribe,
    PacketType.UNSUBACK: decode_unsuback,
    PacketType.PINGREQ: decode_pingreq,
    PacketType.PINGRESP: decode_pingresp,
    PacketType.DISCONNECT: decode_disconnect,
    PacketType.AUTH: decode_auth,
}
