"""``encode(packet, version) -> bytes``: one packet, fixed header included.

At level 4 (3.1.1) what MQTT 5 adds is handled so the session above can stay
version-agnostic where that is safe:

* properties are not sent (they only inform);
* CONNACK reason codes become 3.1.1 return codes (``connack_return_code``) and
  SUBACK refusals become 0x80; UNSUBACK reason codes below 0x80 are dropped;
* anything 3.1.1 cannot say without changing the meaning raises
  ``LocalMqttError``: a refusing PUBACK / PUBREC / PUBREL / PUBCOMP / UNSUBACK, a
  DISCONNECT with a reason, AUTH, the MQTT 5 subscription options, a password
  without a user name.

Every field is checked against the rules the decoder enforces, so what we send
always decodes; a bad field raises ``LocalMqttError`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channel.mqtt.errors import LocalMqttError
from channel.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)
from channel.mqtt.primitives import binary_bytes, string_bytes, varint_bytes
from channel.mqtt.properties import NO_PROPERTIES, WILL_PROPERTIES, Properties
from channel.mqtt.property_codec import encode_properties
from channel.mqtt.publish import encode_publish
from channel.mqtt.reasons import (
    ALLOWED_REASON_CODES,
    MQTT_3_1_1,
    MQTT_5,
    PacketType,
    ReasonCode,
    connack_return_code,
    suback_return_code_v311,
)
from channel.mqtt.topics import topic_filter_problem, topic_name_problem

_PROTOCOL_NAME = b"\x00\x04MQTT"
_QOS = (0, 1, 2)


def encode(packet: Packet, version: int) -> bytes:
    """Serialise ``packet`` for a peer speaking protocol level ``version`` (4 or 5)."""
    if version != MQTT_5 and version != MQTT_3_1_1:
        raise LocalMqttError(f"protocol level {version} is neither 4 (3.1.1) nor 5 (5.0)")
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise LocalMqttError(f"not an MQTT packet: {packet!r}")
    result: bytes = encoder(packet, version)
    return result


def _frame(first_byte: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return bytes((first_byte,)) + varint_bytes(len(body)) + body


def _packet_id(packet_id: int) -> bytes:
    if not 0 < packet_id <= 0xFFFF:
        raise LocalMqttError(f"packet id {packet_id} is not in 1..65535")
    return packet_id.to_bytes(2, "big")


def _props(props: Properties, where: int, version: int) -> bytes:
    return encode_properties(props, where) if version == MQTT_5 else b""


def _reason(packet_type: PacketType, reason: ReasonCode) -> int:
    if reason not in ALLOWED_REASON_CODES[packet_type]:
        raise LocalMqttError(f"{packet_type.name} may not carry reason code 0x{reason:02x}")
    return int(reason)


def _uint16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise LocalMqttError(f"{what} {value} is not in 0..65535")
    return value.to_bytes(2, "big")


def _qos(qos: int, what: str) -> int:
    if qos not in _QOS:
        raise LocalMqttError(f"{what} QoS must be 0, 1 or 2, not {qos}")
    return qos


# ------------------------------------------------------------ CONNECT family


def _connect(p: Connect, version: int) -> bytes:
    flags = 0x02 if p.clean_start else 0
    will_parts: list[bytes] = []
    if p.will is not None:
        will = p.will
        problem = topic_name_problem(will.topic)
        if problem:
            raise LocalMqttError(f"will {problem}")
        flags |= 0x04 | (_qos(will.qos, "will") << 3) | (0x20 if will.retain else 0)
        will_parts = [
            _props(will.properties, WILL_PROPERTIES, version),
            string_bytes(will.topic),
            binary_bytes(will.payload),
        ]
    tail: list[bytes] = []
    if p.username is not None:
        flags |= 0x80
        tail.append(string_bytes(p.username))
    if p.password is not None:
        if p.username is None and version == MQTT_3_1_1:
            raise LocalMqttError("MQTT 3.1.1 does not allow a password without a user name")
        flags |= 0x40
        tail.append(binary_bytes(p.password))
    return _frame(
        0x10,
        _PROTOCOL_NAME,
        bytes((version, flags)),
        _uint16(p.keep_alive_s, "keep alive"),
        _props(p.properties, PacketType.CONNECT, version),
        string_bytes(p.client_id),
        *will_parts,
        *tail,
    )


def _connack(p: Connack, version: int) -> bytes:
    reason = _reason(PacketType.CONNACK, p.reason_code)
    if p.session_present and reason >= 0x80:
        raise LocalMqttError("a refusing CONNACK must not set session present")
    flags = b"\x01" if p.session_present else b"\x00"
    if version == MQTT_3_1_1:
        return b"\x20\x02" + flags + bytes((connack_return_code(p.reason_code),))
    return _frame(0x20, flags, bytes((reason,)), _props(p.properties, PacketType.CONNACK, version))


def _auth(p: Auth, version: int) -> bytes:
    if version == MQTT_3_1_1:
        raise LocalMqttError("AUTH does not exist in MQTT 3.1.1")
    return _reason_and_props(0xF0, PacketType.AUTH, p.reason_code, p.properties)


def _disconnect(p: Disconnect, version: int) -> bytes:
    if version == MQTT_3_1_1:
        if p.reason_code != ReasonCode.NORMAL_DISCONNECTION:
            raise LocalMqttError("MQTT 3.1.1 DISCONNECT carries no reason: close instead")
        return b"\xe0\x00"
    return _reason_and_props(0xE0, PacketType.DISCONNECT, p.reason_code, p.properties)


def _reason_and_props(
    first: int, packet_type: PacketType, reason_code: ReasonCode, props: Properties
) -> bytes:
    """DISCONNECT / AUTH: both may be cut short when reason is 0 and there are no properties."""
    reason = _reason(packet_type, reason_code)
    if props is NO_PROPERTIES or props == NO_PROPERTIES:
        if reason == 0:
            return bytes((first, 0))
        return bytes((first, 1, reason))
    return _frame(first, bytes((reason,)), encode_properties(props, packet_type))


# ------------------------------------------------------------ PUBLISH family


def _publish(p: Publish, version: int) -> bytes:
    return encode_publish(
        p.topic, p.payload, p.qos, p.packet_id,
        version=version, retain=p.retain, dup=p.dup, properties=p.properties,
    )  # fmt: skip


def _pub_ack(
    first: int, packet_type: PacketType, p: Puback | Pubrec | Pubrel | Pubcomp, version: int
) -> bytes:
    packet_id = _packet_id(p.packet_id)
    reason = _reason(packet_type, p.reason_code)
    if version == MQTT_3_1_1:
        if reason >= 0x80:
            raise LocalMqttError(f"MQTT 3.1.1 {packet_type.name} cannot refuse: close instead")
        return bytes((first, 2)) + packet_id
    props = p.properties
    if props is NO_PROPERTIES or props == NO_PROPERTIES:
        if reason == 0:
            return bytes((first, 2)) + packet_id
        return bytes((first, 3)) + packet_id + bytes((reason,))
    return _frame(first, packet_id, bytes((reason,)), encode_properties(props, packet_type))


def _puback(p: Puback, version: int) -> bytes:
    return _pub_ack(0x40, PacketType.PUBACK, p, version)


def _pubrec(p: Pubrec, version: int) -> bytes:
    return _pub_ack(0x50, PacketType.PUBREC, p, version)


def _pubrel(p: Pubrel, version: int) -> bytes:
    return _pub_ack(0x62, PacketType.PUBREL, p, version)


def _pubcomp(p: Pubcomp, version: int) -> bytes:
    return _pub_ack(0x70, PacketType.PUBCOMP, p, version)


# ------------------------------------------------------------ SUBSCRIBE family


def _options(sub: Subscription, version: int) -> int:
    options = _qos(sub.qos, "subscription")
    extras = (
        (0x04 if sub.no_local else 0)
        | (0x08 if sub.retain_as_published else 0)
        | (int(sub.retain_handling) << 4)
    )
    if version == MQTT_3_1_1 and extras:
        raise LocalMqttError("MQTT 3.1.1 has no no-local / retain-as-published / retain handling")
    if sub.retain_handling not in (0, 1, 2):
        raise LocalMqttError(f"retain handling must be 0, 1 or 2, not {sub.retain_handling}")
    if sub.no_local and sub.topic_filter.startswith("$share/"):
        raise LocalMqttError("a shared subscription may not set no-local")
    return options | extras


def _filter(topic_filter: str) -> bytes:
    problem = topic_filter_problem(topic_filter)
    if problem:
        raise LocalMqttError(problem)
    return string_bytes(topic_filter)


def _subscribe(p: Subscribe, version: int) -> bytes:
    if not p.subscriptions:
        raise LocalMqttError("SUBSCRIBE needs at least one subscription")
    entries = [_filter(s.topic_filter) + bytes((_options(s, version),)) for s in p.subscriptions]
    props = _props(p.properties, PacketType.SUBSCRIBE, version)
    return _frame(0x82, _packet_id(p.packet_id), props, *entries)


def _suback(p: Suback, version: int) -> bytes:
    if not p.reason_codes:
        raise LocalMqttError("SUBACK needs one reason code per subscription")
    if version == MQTT_3_1_1:
        codes = bytes(suback_return_code_v311(r) for r in p.reason_codes)
    else:
        codes = bytes(_reason(PacketType.SUBACK, r) for r in p.reason_codes)
    props = _props(p.properties, PacketType.SUBACK, version)
    return _frame(0x90, _packet_id(p.packet_id), props, codes)


def _unsubscribe(p: Unsubscribe, version: int) -> bytes:
    if not p.topic_filters:
        raise LocalMqttError("UNSUBSCRIBE needs at least one topic filter")
    filters = [_filter(f) for f in p.topic_filters]
    props = _props(p.properties, PacketType.UNSUBSCRIBE, version)
    return _frame(0xA2, _packet_id(p.packet_id), props, *filters)


def _unsuback(p: Unsuback, version: int) -> bytes:
    packet_id = _packet_id(p.packet_id)
    codes = bytes(_reason(PacketType.UNSUBACK, r) for r in p.reason_codes)
    if version == MQTT_3_1_1:
        if any(code >= 0x80 for code in codes):
            raise LocalMqttError("MQTT 3.1.1 UNSUBACK cannot refuse: it has no reason codes")
        return b"\xb0\x02" + packet_id
    if not codes:
        raise LocalMqttError("MQTT 5 UNSUBACK needs one reason code per topic filter")
    return _frame(0xB0, packet_id, encode_properties(p.properties, PacketType.UNSUBACK), codes)


def _pingreq(p: Pingreq, version: int) -> bytes:
    return b"\xc0\x00"


def _pingresp(p: Pingresp, version: int) -> bytes:
    return b"\xd0\x00"


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _connect,
    Connack: _connack,
    Publish: _publish,
    Puback: _puback,
    Pubrec: _pubrec,
    Pubrel: _pubrel,
    Pubcomp: _pubcomp,
    Subscribe: _subscribe,
    Suback: _suback,
    Unsubscribe: _unsubscribe,
    Unsuback: _unsuback,
    Pingreq: _pingreq,
    Pingresp: _pingresp,
    Disconnect: _disconnect,
    Auth: _auth,
}
