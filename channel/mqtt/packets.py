"""The fifteen MQTT control packets as small frozen dataclasses.

One class serves both protocol levels: fields only MQTT 5 has (properties,
reason codes of acknowledgements, Auth) keep their defaults at level 4, and
reason codes are ``ReasonCode`` at both levels (see ``channel.mqtt.reasons``).
A packet identifier of 0 means "none" (QoS 0 PUBLISH); everywhere else it is
1..65535. Times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from channel.mqtt.properties import NO_PROPERTIES, Properties
from channel.mqtt.reasons import PacketType, ReasonCode
from channel.mqtt.slots import fast_init


class RetainHandling(IntEnum):
    """When a new subscription gets the retained messages (MQTT 5.0 section 3.8.3.1)."""

    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


@fast_init
@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT; ``properties`` are its Will Properties."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@fast_init
@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    clean_start: bool = True  # "clean session" in 3.1.1
    keep_alive_s: int = 60
    username: str | None = None
    password: bytes | None = None  # 3.1.1 only with a username
    will: Will | None = None
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.CONNECT


@fast_init
@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool = False
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.CONNACK


@fast_init
@dataclass(frozen=True, slots=True)
class Publish:
    topic: str  # may be "" in MQTT 5 when properties.topic_alias is set
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    packet_id: int = 0  # 0 for QoS 0, 1..65535 otherwise
    dup: bool = False
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBLISH


@fast_init
@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBACK


@fast_init
@dataclass(frozen=True, slots=True)
class Pubrec:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBREC


@fast_init
@dataclass(frozen=True, slots=True)
class Pubrel:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBREL


@fast_init
@dataclass(frozen=True, slots=True)
class Pubcomp:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBCOMP


@fast_init
@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (``qos`` is the maximum QoS)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False  # MQTT 5 only, like the two options after it
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE


@fast_init
@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.SUBSCRIBE


@fast_init
@dataclass(frozen=True, slots=True)
class Suback:
    """``reason_codes``: one per subscription; GRANTED_QOS_n or a refusal (>= 0x80)."""

    packet_id: int
    reason_codes: tuple[ReasonCode, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.SUBACK


@fast_init
@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.UNSUBSCRIBE


@fast_init
@dataclass(frozen=True, slots=True)
class Unsuback:
    """``reason_codes``: one per filter in MQTT 5; 3.1.1 has none (decodes as ``()``)."""

    packet_id: int
    reason_codes: tuple[ReasonCode, ...] = ()
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.UNSUBACK


@fast_init
@dataclass(frozen=True, slots=True)
class Pingreq:
    packet_type = PacketType.PINGREQ


@fast_init
@dataclass(frozen=True, slots=True)
class Pingresp:
    packet_type = PacketType.PINGRESP


@fast_init
@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: ReasonCode = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.DISCONNECT


@fast_init
@dataclass(frozen=True, slots=True)
class Auth:
    """MQTT 5 only: enhanced authentication exchange."""

    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.AUTH


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

#: Packets that are only a packet id with an optional reason code and properties.
PubAckLike = Puback | Pubrec | Pubrel | Pubcomp

#: PINGREQ / PINGRESP have no fields: share one instance.
PINGREQ = Pingreq()
PINGRESP = Pingresp()
