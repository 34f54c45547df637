"""Packet types, MQTT 5 reason codes and MQTT 3.1.1 return codes.

Names follow the OASIS specifications (MQTT 5.0 section 2.4, "Reason Code";
MQTT 3.1.1 section 3.2.2.3, "Connect Return code"). A packet carries a
``ReasonCode`` at both protocol levels: the encoder maps it to the 3.1.1 return
code for level 4 and the decoder maps 3.1.1 return codes back, so the session
above need not care which level a client speaks.
"""

from __future__ import annotations

from enum import IntEnum

#: The protocol levels this codec speaks: 3.1.1 and 5.0.
MQTT_3_1_1 = 4
MQTT_5 = 5
PROTOCOL_LEVELS = (MQTT_3_1_1, MQTT_5)


class PacketType(IntEnum):
    """The high nibble of the fixed header's first byte."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5 only; reserved in 3.1.1


class ReasonCode(IntEnum):
    """MQTT 5.0 reason codes; values below 0x80 mean success."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

    @property
    def is_error(self) -> bool:
        return self >= 0x80


class ConnackReturnCode(IntEnum):
    """MQTT 3.1.1 CONNACK return codes (6..255 are reserved)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USER_NAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


#: MQTT 3.1.1 SUBACK failure return code; 0, 1 and 2 are the granted QoS.
SUBACK_FAILURE_V311 = 0x80

_R = ReasonCode


def _codes(hex_values: str) -> frozenset[ReasonCode]:
    return frozenset(ReasonCode(int(value, 16)) for value in hex_values.split())


#: Reason codes each packet may carry (MQTT 5.0 section 2.4, Table 2-6).
ALLOWED_REASON_CODES: dict[PacketType, frozenset[ReasonCode]] = {
    PacketType.CONNACK: _codes("00 80 81 82 83 84 85 86 87 88 89 8A 8C 90 95 97 99 9A 9B 9C 9D 9F"),
    PacketType.PUBACK: _codes("00 10 80 83 87 90 91 97 99"),
    PacketType.PUBREL: _codes("00 92"),
    PacketType.SUBACK: _codes("00 01 02 80 83 87 8F 91 97 9E A1 A2"),
    PacketType.UNSUBACK: _codes("00 11 80 83 87 8F 91"),
    PacketType.DISCONNECT: _codes(
        "00 04 80 81 82 83 87 89 8B 8D 8E 8F 90 93 94 95 96 97 98 99 9A 9B 9C 9D 9E 9F A0 A1 A2"
    ),
    PacketType.AUTH: _codes("00 18 19"),
}
ALLOWED_REASON_CODES[PacketType.PUBREC] = ALLOWED_REASON_CODES[PacketType.PUBACK]
ALLOWED_REASON_CODES[PacketType.PUBCOMP] = ALLOWED_REASON_CODES[PacketType.PUBREL]

_TO_V311: dict[ReasonCode, ConnackReturnCode] = {
    _R.SUCCESS: ConnackReturnCode.ACCEPTED,
    _R.UNSUPPORTED_PROTOCOL_VERSION: ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION,
    _R.CLIENT_IDENTIFIER_NOT_VALID: ConnackReturnCode.IDENTIFIER_REJECTED,
    _R.SERVER_UNAVAILABLE: ConnackReturnCode.SERVER_UNAVAILABLE,
    _R.BAD_USER_NAME_OR_PASSWORD: ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD,
    _R.NOT_AUTHORIZED: ConnackReturnCode.NOT_AUTHORIZED,
    # Refusals 3.1.1 has no word for, by the nearest meaning.
    _R.BAD_AUTHENTICATION_METHOD: ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD,
    _R.BANNED: ConnackReturnCode.NOT_AUTHORIZED,
}
_FROM_V311: dict[ConnackReturnCode, ReasonCode] = {
    ConnackReturnCode.ACCEPTED: _R.SUCCESS,
    ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION: _R.UNSUPPORTED_PROTOCOL_VERSION,
    ConnackReturnCode.IDENTIFIER_REJECTED: _R.CLIENT_IDENTIFIER_NOT_VALID,
    ConnackReturnCode.SERVER_UNAVAILABLE: _R.SERVER_UNAVAILABLE,
    ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD: _R.BAD_USER_NAME_OR_PASSWORD,
    ConnackReturnCode.NOT_AUTHORIZED: _R.NOT_AUTHORIZED,
}


def connack_return_code(reason: ReasonCode) -> ConnackReturnCode:
    """The 3.1.1 CONNACK return code that says ``reason`` best.

    Six reason codes map one to one; other refusals become SERVER_UNAVAILABLE,
    the only 3.1.1 code that does not blame the client's credentials.
    """
    return _TO_V311.get(reason, ConnackReturnCode.SERVER_UNAVAILABLE)


def connack_reason(code: ConnackReturnCode) -> ReasonCode:
    """The reason code a 3.1.1 CONNACK return code stands for."""
    return _FROM_V311[code]


def suback_return_code_v311(reason: ReasonCode) -> int:
    """3.1.1 SUBACK return code: the granted QoS, or 0x80 for any refusal."""
    return SUBACK_FAILURE_V311 if reason >= 0x80 else int(reason)
