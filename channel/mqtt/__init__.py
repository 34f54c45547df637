"""MQTT 3.1.1 and 5.0, sans-I/O: packets, ``encode``, a bounded streaming ``Parser``.

Nothing here does I/O or keeps time. ``encode(packet, version)`` gives the
bytes of one packet; ``Parser.feed(data)`` turns received bytes into packets
and raises only the ``MqttError`` family, whose ``reason_code`` is what to
answer with. Topic rules live in ``channel.mqtt.topics``, matching in
``channel.mqtt.matching``. See ``docs/mqtt.md`` for the limits.
"""

from channel.mqtt.decoder import DECODERS
from channel.mqtt.encoder import encode
from channel.mqtt.errors import (
    InvalidTopic,
    LocalMqttError,
    MalformedPacket,
    MqttError,
    MqttProtocolError,
    PacketTooLarge,
    UnsupportedProtocolVersion,
)
from channel.mqtt.matching import TopicTrie, topic_matches
from channel.mqtt.packets import (
    PINGREQ,
    PINGRESP,
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
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from channel.mqtt.parser import DEFAULT_MAX_PACKET_SIZE_BYTES, Parser, Role, decode
from channel.mqtt.properties import NO_PROPERTIES, Properties, PropertyId
from channel.mqtt.publish import PreparedPublish, encode_publish, prepare_publish
from channel.mqtt.reasons import (
    MQTT_3_1_1,
    MQTT_5,
    ConnackReturnCode,
    PacketType,
    ReasonCode,
    connack_reason,
    connack_return_code,
)

__all__ = [
    "DECODERS",
    "DEFAULT_MAX_PACKET_SIZE_BYTES",
    "MQTT_3_1_1",
    "MQTT_5",
    "NO_PROPERTIES",
    "PINGREQ",
    "PINGRESP",
    "Auth",
    "Connack",
    "ConnackReturnCode",
    "Connect",
    "Disconnect",
    "InvalidTopic",
    "LocalMqttError",
    "MalformedPacket",
    "MqttError",
    "MqttProtocolError",
    "Packet",
    "PacketTooLarge",
    "PacketType",
    "Parser",
    "Pingreq",
    "Pingresp",
    "PreparedPublish",
    "Properties",
    "PropertyId",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "ReasonCode",
    "RetainHandling",
    "Role",
    "Suback",
    "Subscribe",
    "Subscription",
    "TopicTrie",
    "Unsuback",
    "Unsubscribe",
    "UnsupportedProtocolVersion",
    "Will",
    "connack_reason",
    "connack_return_code",
    "decode",
    "encode",
    "encode_publish",
    "prepare_publish",
    "topic_matches",
]
