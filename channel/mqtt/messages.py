"""Messages between boxes as pushes: what a routed PUBLISH carries through the push system.

A box's PUBLISH that other boxes subscribe to travels like any push: queued in
each subscriber's device queue (QoS 1 and 2), routed to the node that holds
the subscriber, acknowledged and removed. The push carries the payload as its
body and the MQTT side of the message (topic, QoS, retain flag, publisher,
MQTT 5 properties, expiry) in one header, ``mqtt``: base64 of a short msgpack
array, so the push stores and the inbox need nothing MQTT-specific.

``RetainedMessage`` is the same message as the retained store keeps it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]

from channel.mqtt.errors import MqttError
from channel.mqtt.properties import NO_PROPERTIES, Properties
from channel.mqtt.property_codec import decode_properties, encode_properties
from channel.mqtt.reasons import PacketType

#: The push header that makes a push a routed MQTT message.
MQTT_HEADER = "mqtt"

#: Properties a PUBLISH keeps on its way to subscribers (MQTT 5.0 section 3.3.2.3):
#: everything but the topic alias and subscription identifiers (the receiver's own)
#: and the message expiry (kept as ``expires_at_ms``, told as what is left).
_DROP = {"topic_alias": None, "subscription_identifiers": (), "message_expiry_interval_s": None}


def forwarded_properties(props: Properties) -> Properties:
    """A received PUBLISH's properties as they go on to subscribers."""
    if props is NO_PROPERTIES:
        return props
    if (
        props.topic_alias is None
        and not props.subscription_identifiers
        and props.message_expiry_interval_s is None
    ):
        return props
    fields = {name: getattr(props, name) for name in props.__slots__}
    fields.update(_DROP)
    return Properties(**fields)


def _props_bytes(props: Properties) -> bytes:
    return b"" if props is NO_PROPERTIES else encode_properties(props, PacketType.PUBLISH)


def _props_of(data: bytes) -> Properties:
    if not data:
        return NO_PROPERTIES
    return decode_properties(data, 0, PacketType.PUBLISH)[0]


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """One PUBLISH on its way from a publisher (a box, a will, the server) to subscribers."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    properties: Properties = NO_PROPERTIES
    #: The publishing client id ("" when the server made the message): no-local.
    origin: str = ""
    #: Unix ms after which it is not delivered (0: never).
    expires_at_ms: int = 0

    def header(self) -> tuple[str, str]:
        """The ``mqtt`` push header that carries everything but the payload."""
        packed = msgpack.packb(
            [self.topic, self.qos, self.retain, self.origin,
             _props_bytes(self.properties), self.expires_at_ms],
            use_bin_type=True,
        )  # fmt: skip
        return MQTT_HEADER, base64.b64encode(packed).decode("ascii")

    @classmethod
    def from_header(cls, value: str, payload: bytes) -> BrokerMessage | None:
        """The message a push's ``mqtt`` header describes (None: not one of ours)."""
        try:
            topic, qos, retain, origin, props, expires = msgpack.unpackb(
                base64.b64decode(value, validate=True), raw=False
            )
            return cls(str(topic), payload, int(qos), bool(retain), _props_of(bytes(props)),
                       str(origin), int(expires))  # fmt: skip
        except (ValueError, TypeError, binascii.Error, MqttError, msgpack.UnpackException):
            return None


def broker_message_of(body: bytes, headers: tuple[tuple[str, str], ...]) -> BrokerMessage | None:
    """The routed MQTT message a push is, or None for an ordinary push."""
    for name, value in headers:
        if name == MQTT_HEADER:
            return BrokerMessage.from_header(value, body)
    return None


@dataclass(frozen=True, slots=True)
class RetainedMessage:
    topic: str
    payload: bytes
    qos: int
    properties: Properties = NO_PROPERTIES
    expires_at_ms: int = 0

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(
            [self.topic, self.payload, self.qos, _props_bytes(self.properties),
             self.expires_at_ms],
            use_bin_type=True,
        )  # fmt: skip
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> RetainedMessage | None:
        try:
            topic, payload, qos, props, expires = msgpack.unpackb(data, raw=False)
            return cls(str(topic), bytes(payload), int(qos), _props_of(bytes(props)),
                       int(expires))  # fmt: skip
        except (ValueError, TypeError, MqttError, msgpack.UnpackException):
            return None

    @classmethod
    def of(cls, message: BrokerMessage) -> RetainedMessage:
        return cls(message.topic, message.payload, message.qos, message.properties,
                   message.expires_at_ms)  # fmt: skip
