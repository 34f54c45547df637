"""MMTP wire core: sans-I/O frames, headers, bodies and the connection state machine.

Nothing in this package does I/O; see ``protocol_spec/mmtp-v1.md`` for the
format it implements.
"""

from channel.wire.body import BodyCodec
from channel.wire.connection import Connection, FrameCounters, PreparedPush, Setting
from channel.wire.dictionaries import Dictionary, DictionaryStore
from channel.wire.errors import (
    ErrorCode,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    StreamsExhausted,
)
from channel.wire.events import (
    AckReceived,
    ConnectionErrorReceived,
    DictionaryReceived,
    Event,
    GoAwayReceived,
    HelloAccepted,
    HelloReceived,
    PingReceived,
    PongReceived,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    SettingsReceived,
    StreamCancelled,
    StreamErrorReceived,
)
from channel.wire.frames import FrameType
from channel.wire.hello import ALPN_PROTOCOL, PROTOCOL_VERSION, Hello, HelloAck
from channel.wire.limits import Limits
from channel.wire.state import Role, State

__all__ = [
    "ALPN_PROTOCOL",
    "PROTOCOL_VERSION",
    "AckReceived",
    "BodyCodec",
    "Connection",
    "ConnectionErrorReceived",
    "Dictionary",
    "DictionaryReceived",
    "DictionaryStore",
    "ErrorCode",
    "Event",
    "FrameCounters",
    "FrameType",
    "GoAwayReceived",
    "Hello",
    "HelloAccepted",
    "HelloAck",
    "HelloReceived",
    "Limits",
    "LocalProtocolError",
    "MessageTooLarge",
    "PingReceived",
    "PongReceived",
    "PreparedPush",
    "ProtocolError",
    "PushReceived",
    "RequestReceived",
    "ResponseReceived",
    "Role",
    "Setting",
    "SettingsAcknowledged",
    "SettingsReceived",
    "State",
    "StreamCancelled",
    "StreamErrorReceived",
    "StreamsExhausted",
]
