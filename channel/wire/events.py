"""Events a ``Connection`` reports after ``receive_data``: small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from channel.wire.dictionaries import Dictionary
from channel.wire.headers import Headers
from channel.wire.hello import Hello, HelloAck


class Event:
    """Base class of everything ``Connection.receive_data`` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """Server side: the device introduced itself; call ``accept`` or ``reject``."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class HelloAccepted(Event):
    """Client side: the server accepted the HELLO; the connection is open."""

    ack: HelloAck


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    stream_id: int
    op: str
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    stream_id: int
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class PushReceived(Event):
    delivery_id: int
    message_id: bytes
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class AckReceived(Event):
    """Server side: the device acknowledged these deliveries (unknown ids dropped)."""

    delivery_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """A PONG with the same payload has already been queued."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    payload: bytes


@dataclass(frozen=True, slots=True)
class SettingsReceived(Event):
    """The peer changed settings (already applied; the ACK is queued)."""

    settings: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SettingsAcknowledged(Event):
    pass


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer is draining: start no new streams; in-flight ones still complete."""

    code: int
    reconnect_after_ms: int
    alternate_endpoint: str
    message: str


@dataclass(frozen=True, slots=True)
class StreamErrorReceived(Event):
    """A stream we started ended with an error instead of a RESPONSE."""

    stream_id: int
    code: int
    retry_after_ms: int
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionErrorReceived(Event):
    """The peer ended the connection with an error (ERROR on stream 0)."""

    code: int
    retry_after_ms: int
    message: str


@dataclass(frozen=True, slots=True)
class StreamCancelled(Event):
    """The peer cancelled a stream it started; the ERROR(CANCELLED) is queued."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DictionaryReceived(Event):
    """Client side: the server delivered a dictionary (now usable on this connection)."""

    dictionary: Dictionary
