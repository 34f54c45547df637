"""MMTP error codes and the single ``ProtocolError`` exception family.

Codes travel in ERROR, GOAWAY and RESPONSE frames as varints. The numeric
values are part of the wire format (``protocol_spec/mmtp-v1.md``, "Error
codes") and never change meaning; new codes are only appended.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Every code a peer can send; 0 means success / graceful."""

    NO_ERROR = 0
    # Framing and state (connection errors).
    PROTOCOL_ERROR = 1
    FRAME_SIZE_ERROR = 2
    UNKNOWN_FRAME_TYPE = 3
    VARINT_ERROR = 4
    FIELD_ERROR = 5
    STATE_ERROR = 6
    STREAM_ID_ERROR = 7
    # Header and body coding (connection errors).
    HEADER_ERROR = 8
    HEADER_LIST_TOO_LARGE = 9
    TABLE_SIZE_ERROR = 10
    UNKNOWN_PRESET = 11
    COMPRESSION_ERROR = 12
    BODY_TOO_LARGE = 13
    UNKNOWN_DICTIONARY = 14
    DICTIONARY_ERROR = 15
    # Handshake and auth (connection errors).
    UNSUPPORTED_VERSION = 16
    AUTH_REQUIRED = 17
    AUTH_INVALID = 18
    AUTH_EXPIRED = 19
    TICKET_INVALID = 20
    HANDSHAKE_TIMEOUT = 21
    # Flow control and policy.
    REFUSED_STREAM = 22
    RATE_LIMITED = 23
    SLOW_CONSUMER = 24
    IDLE_TIMEOUT = 25
    # Stream-level results (ERROR frames, RESPONSE status).
    CANCELLED = 26
    NOT_FOUND = 27
    BAD_REQUEST = 28
    FORBIDDEN = 29
    TIMEOUT = 30
    UNAVAILABLE = 31
    UPSTREAM_ERROR = 32
    INTERNAL_ERROR = 33
    # Lifecycle.
    SHUTTING_DOWN = 34
    KICKED = 35
    SESSION_REPLACED = 36


#: Codes that end the whole connection when they are found in incoming data.
CONNECTION_ERROR_CODES = frozenset(
    {
        ErrorCode.PROTOCOL_ERROR,
        ErrorCode.FRAME_SIZE_ERROR,
        ErrorCode.UNKNOWN_FRAME_TYPE,
        ErrorCode.VARINT_ERROR,
        ErrorCode.FIELD_ERROR,
        ErrorCode.STATE_ERROR,
        ErrorCode.STREAM_ID_ERROR,
        ErrorCode.HEADER_ERROR,
        ErrorCode.HEADER_LIST_TOO_LARGE,
        ErrorCode.TABLE_SIZE_ERROR,
        ErrorCode.UNKNOWN_PRESET,
        ErrorCode.COMPRESSION_ERROR,
        ErrorCode.BODY_TOO_LARGE,
        ErrorCode.UNKNOWN_DICTIONARY,
        ErrorCode.DICTIONARY_ERROR,
        ErrorCode.UNSUPPORTED_VERSION,
    }
)


def code_name(code: int) -> str:
    """Name of a code for logs; unknown codes (from newer peers) stay numeric."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"


class ProtocolError(Exception):
    """A peer broke the protocol or a limit; ``code`` says how.

    Raised by the sans-I/O core only; the connection that raised it has
    already queued the ERROR frame to send and must be closed.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class FrameSizeError(ProtocolError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.FRAME_SIZE_ERROR, message)


class HeaderError(ProtocolError):
    pass


class BodyError(ProtocolError):
    pass


class LocalProtocolError(Exception):
    """Our own code asked the connection for something the protocol forbids.

    Nothing is sent to the peer; this is a programming error or a state the
    caller must handle (for example starting a stream while draining).
    """


class StreamsExhausted(LocalProtocolError):
    """The peer's ``max_concurrent_streams`` is reached; wait for a stream to end."""


class MessageTooLarge(LocalProtocolError):
    """A message would exceed the peer's announced frame or body size."""
