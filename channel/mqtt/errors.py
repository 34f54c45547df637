"""The ``MqttError`` family: what a peer did wrong, with the reason code to answer it.

Parsing raises nothing else. Each error carries the MQTT 5 reason code the
session sends back (in CONNACK before the connection is accepted, in
DISCONNECT after; a 3.1.1 session simply closes the connection, or answers a
CONNECT with the 3.1.1 return code ``connack_return_code(error.reason_code)``).

``LocalMqttError`` is separate on purpose: it says *our* code asked the
encoder for a packet the protocol cannot express, and must never be mistaken
for a peer's fault.
"""

from __future__ import annotations

from typing import Protocol

from channel.mqtt.reasons import PacketType, ReasonCode


class PacketLike(Protocol):
    """What an error knows of the packets parsed before it (``channel.mqtt.packets``
    imports this module through ``properties``: naming ``Packet`` here made a circle)."""

    @property
    def packet_type(self) -> PacketType: ...


class MqttError(Exception):
    """A peer broke the protocol or a limit; ``reason_code`` says how.

    ``packets`` holds the packets that were complete and valid in the same
    ``Parser.feed()`` call before the bad one, in order, so the session can act
    on them before it closes the connection.
    """

    def __init__(self, reason_code: ReasonCode, message: str) -> None:
        super().__init__(f"{reason_code.name} (0x{reason_code:02x}): {message}")
        self.reason_code = reason_code
        self.message = message
        self.packets: tuple[PacketLike, ...] = ()


class MalformedPacket(MqttError):
    """The bytes cannot be parsed as the specification says (0x81)."""

    def __init__(self, message: str) -> None:
        super().__init__(ReasonCode.MALFORMED_PACKET, message)


class MqttProtocolError(MqttError):
    """The packet parses but breaks a protocol rule (0x82)."""

    def __init__(self, message: str) -> None:
        super().__init__(ReasonCode.PROTOCOL_ERROR, message)


class PacketTooLarge(MqttError):
    """The fixed header announces more than the parser's limit (0x95)."""

    def __init__(self, message: str) -> None:
        super().__init__(ReasonCode.PACKET_TOO_LARGE, message)


class UnsupportedProtocolVersion(MqttError):
    """CONNECT names a protocol or level other than MQTT 3.1.1 / 5.0 (0x84).

    Answer with a 3.1.1 CONNACK (return code 1): a client of an unknown level
    cannot be expected to read a 5.0 one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, message)


class InvalidTopic(MqttError):
    """A topic name (0x90) or topic filter (0x8F) breaks the topic rules."""


class LocalMqttError(Exception):
    """Our code asked to encode a packet the protocol (or its level) forbids."""
