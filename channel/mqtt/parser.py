"""``Parser``: a byte stream in, packets out, holding at most one packet's bytes.

The first byte of every packet is judged before anything else is read: its
type must exist at the protocol level, its flag nibble must be what the
specification fixes, and it must travel in this direction (a server's parser
refuses SUBACK, a client's refuses SUBSCRIBE). Then the Remaining Length (at
most 4 bytes, shortest form) gives the packet's size, which is refused at
once if it exceeds ``max_packet_size_bytes``: the body of a too-large packet
is never buffered. A server's parser accepts only CONNECT first, learns the
protocol level from it, and refuses a second CONNECT.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from channel.mqtt.decoder import DECODERS, Decoder, connect_level
from channel.mqtt.errors import MalformedPacket, MqttError, MqttProtocolError, PacketTooLarge
from channel.mqtt.packets import Packet, Publish
from channel.mqtt.primitives import Buffer
from channel.mqtt.reasons import MQTT_3_1_1, MQTT_5, PROTOCOL_LEVELS, PacketType

#: Default limit on a whole packet (fixed header included), as MQTT 5's Maximum Packet Size.
DEFAULT_MAX_PACKET_SIZE_BYTES = 256 * 1024
#: A parser limit below this could not take a CONNECT with a short client id.
MIN_MAX_PACKET_SIZE_BYTES = 64


class Role(Enum):
    """Which side owns the parser: a SERVER parses what clients send, and vice versa."""

    SERVER = "server"
    CLIENT = "client"


_P = PacketType
_FROM_CLIENT = frozenset(
    {_P.CONNECT, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP, _P.SUBSCRIBE,
     _P.UNSUBSCRIBE, _P.PINGREQ, _P.DISCONNECT, _P.AUTH}
)  # fmt: skip
_FROM_SERVER = frozenset(
    {_P.CONNACK, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP, _P.SUBACK,
     _P.UNSUBACK, _P.PINGRESP, _P.DISCONNECT, _P.AUTH}
)  # fmt: skip
_PUBLISH = int(_P.PUBLISH)
_FIXED_FLAGS = {_P.PUBREL: 0x2, _P.SUBSCRIBE: 0x2, _P.UNSUBSCRIBE: 0x2}

Problem = tuple[Callable[[str], MqttError], str]


def _problem(first: int, role: Role | None, version: int | None) -> Problem | None:
    """What is wrong with a packet starting with byte ``first``, or None."""
    packet_type, flags = first >> 4, first & 0x0F
    if packet_type == 0 or (packet_type == _P.AUTH and version == MQTT_3_1_1):
        return MalformedPacket, f"packet type {packet_type} is reserved"
    name = _P(packet_type).name
    if packet_type == _P.PUBLISH:
        if flags & 0x06 == 0x06:
            return MalformedPacket, "PUBLISH with QoS 3"
        if flags & 0x08 and not flags & 0x06:
            return MqttProtocolError, "QoS 0 PUBLISH with the DUP flag"
    elif flags != _FIXED_FLAGS.get(_P(packet_type), 0):
        return MalformedPacket, f"{name} with reserved flags 0x{flags:x}"
    if role is Role.SERVER:
        if version is None and packet_type != _P.CONNECT:
            return MqttProtocolError, f"the first packet must be CONNECT, not {name}"
        if version is not None and packet_type == _P.CONNECT:
            return MqttProtocolError, "a second CONNECT"
        if packet_type not in _FROM_CLIENT:
            return MqttProtocolError, f"{name} is sent by servers only"
    elif role is Role.CLIENT and (
        packet_type not in _FROM_SERVER or (packet_type == _P.DISCONNECT and version != MQTT_5)
    ):
        return MqttProtocolError, f"{name} is not sent by MQTT {version} servers"
    return None


Entry = Decoder | Problem


def _table(role: Role | None, version: int | None) -> tuple[Entry, ...]:
    """For each first byte: the decoder to run, or the error to raise."""
    return tuple(_problem(first, role, version) or DECODERS[first >> 4] for first in range(256))


_TABLES: dict[tuple[Role | None, int | None], tuple[Entry, ...]] = {
    (role, version): _table(role, version)
    for role, version in [
        (Role.SERVER, None),
        *[(r, v) for r in (Role.SERVER, Role.CLIENT, None) for v in PROTOCOL_LEVELS],
    ]
}


class Parser:
    """Incremental parser; ``feed(data)`` returns every packet completed, in order.

    ``role=Role.SERVER`` (the default) parses what a client sends and learns the
    protocol level from its CONNECT; ``Role.CLIENT`` needs ``version``.
    ``max_packet_size_bytes`` may be changed between feeds (a small one before
    CONNECT is authenticated, the announced Maximum Packet Size after).

    After an ``MqttError`` the parser is spent: every later ``feed`` raises the
    same error, and the session must close the connection.
    """

    __slots__ = ("_error", "_partial", "_table", "max_packet_size_bytes", "role", "version")

    def __init__(
        self,
        role: Role = Role.SERVER,
        version: int | None = None,
        max_packet_size_bytes: int = DEFAULT_MAX_PACKET_SIZE_BYTES,
    ) -> None:
        if role is Role.SERVER and version is not None:
            raise ValueError("a server's parser learns the protocol level from CONNECT")
        if role is Role.CLIENT and version not in PROTOCOL_LEVELS:
            raise ValueError(f"a client's parser needs version 4 or 5, not {version}")
        if max_packet_size_bytes < MIN_MAX_PACKET_SIZE_BYTES:
            raise ValueError(f"max_packet_size_bytes must be >= {MIN_MAX_PACKET_SIZE_BYTES}")
        self.role = role
        #: Protocol level (4 or 5); for a server, set once CONNECT names a valid one.
        self.version = version
        self.max_packet_size_bytes = max_packet_size_bytes
        self._table = _TABLES[(role, version)]
        self._partial: bytearray | None = None
        self._error: MqttError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete packet held between feeds."""
        return len(self._partial) if self._partial is not None else 0

    @property
    def between_packets(self) -> bool:
        """No partial packet held and no error: the next bytes start a packet."""
        return self._partial is None and self._error is None

    def feed(self, data: Buffer) -> list[Packet]:
        """Add bytes; return the packets now complete. Raises only ``MqttError``."""
        if self._error is not None:
            raise self._error
        buffer: Buffer
        if self._partial is not None:
            self._partial += data
            buffer = self._partial
        else:
            buffer = data
        packets: list[Packet] = []
        try:
            offset = self._parse(buffer, packets)
        except MqttError as error:
            error.packets = tuple(packets)
            self._error = error
            self._partial = None
            raise
        if offset >= len(buffer):
            self._partial = None
        elif buffer is self._partial:
            del self._partial[:offset]
        else:
            # Copied: the caller may reuse its buffer once we return.
            self._partial = bytearray(buffer[offset:])
        return packets

    def _parse(self, buffer: Buffer, packets: list[Packet]) -> int:
        offset = 0
        end = len(buffer)
        while offset < end:
            first = buffer[offset]
            entry = self._table[first]
            if isinstance(entry, tuple):
                raise entry[0](entry[1])
            pos = offset + 1
            if pos < end and buffer[pos] < 0x80:  # most packets: under 128 bytes
                remaining = buffer[pos]
                pos += 1
            else:
                remaining, pos = _remaining_length(buffer, pos, end)
                if pos < 0:
                    return offset
            size = pos - offset + remaining
            if size > self.max_packet_size_bytes:
                raise PacketTooLarge(
                    f"packet of {size} bytes exceeds the limit of {self.max_packet_size_bytes}"
                )
            body_end = pos + remaining
            if body_end > end:
                return offset
            body = bytes(buffer[pos:body_end])
            version = self.version
            if version is None:
                packets.append(self._first_connect(entry, first, body))
            else:
                packet = entry(first & 0x0F, body, version)
                if first >> 4 == _PUBLISH and self.role is Role.SERVER:
                    _check_client_publish(packet)
                packets.append(packet)
            offset = body_end
        return offset

    def _first_connect(self, decoder: Decoder, first: int, body: bytes) -> Packet:
        """A server's first packet (CONNECT, by the table): it fixes the protocol level."""
        version = connect_level(body)
        if version in PROTOCOL_LEVELS:
            self.version = version
            self._table = _TABLES[(self.role, version)]
        return decoder(first & 0x0F, body, version or 0)


def _remaining_length(buffer: Buffer, pos: int, end: int) -> tuple[int, int]:
    """(Remaining Length, position after it); position -1 if the buffer ends inside it."""
    remaining = shift = 0
    while pos < end:
        byte = buffer[pos]
        pos += 1
        remaining |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift:
                raise MalformedPacket("remaining length not in its shortest form")
            return remaining, pos
        shift += 7
        if shift == 28:
            raise MalformedPacket("remaining length longer than 4 bytes")
    return 0, -1


def _check_client_publish(packet: Packet) -> None:
    if isinstance(packet, Publish) and packet.properties.subscription_identifiers:
        raise MqttProtocolError("a client's PUBLISH carries a subscription identifier")


def decode(data: Buffer, version: int) -> Packet:
    """Decode exactly one whole packet at protocol level ``version``, in either direction."""
    if version not in PROTOCOL_LEVELS:
        raise ValueError(f"version must be 4 or 5, not {version}")
    parser = Parser(Role.CLIENT, version, max(len(data), MIN_MAX_PACKET_SIZE_BYTES))
    parser._table = _TABLES[(None, version)]  # no direction rules
    packets = parser.feed(data)
    if len(packets) != 1 or parser.buffered_bytes:
        raise MalformedPacket(
            f"expected one whole packet, got {len(packets)} and "
            f"{parser.buffered_bytes} bytes of another"
        )
    return packets[0]
