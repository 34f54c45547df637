"""Frame layer: ``type|flags`` byte, varint payload length, payload.

::

    +--------+--------+--------------------+
    | T:4 F:4| length (varint, 1-3 B)| payload |
    +--------+-------------------------------+

The parser is incremental and bounded: it refuses a frame as soon as its
length field announces more than ``max_frame_size``, before buffering it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from channel.wire.errors import ErrorCode, FrameSizeError, ProtocolError
from channel.wire.varint import NeedMoreData, decode_varint, encode_varint


class FrameType(IntEnum):
    HELLO = 0x0
    HELLO_ACK = 0x1
    REQUEST = 0x2
    RESPONSE = 0x3
    PUSH = 0x4
    ACK = 0x5
    PING = 0x6
    PONG = 0x7
    SETTINGS = 0x8
    GOAWAY = 0x9
    ERROR = 0xA
    CANCEL = 0xB
    DICT = 0xC


# Flags of message frames (REQUEST, RESPONSE, PUSH).
FLAG_HEADERS = 0x1
FLAG_ZSTD = 0x2
FLAG_TYPED = 0x4
# REQUEST from the client only: a connection-scoped header block follows the header block.
FLAG_CONN = 0x8
# Flag of SETTINGS.
FLAG_SETTINGS_ACK = 0x1
# Flag of DICT.
FLAG_DICT_LAST = 0x1

MESSAGE_FRAME_TYPES = frozenset({FrameType.REQUEST, FrameType.RESPONSE, FrameType.PUSH})

#: Flags each frame type may carry; any other bit set is a PROTOCOL_ERROR.
ALLOWED_FLAGS: dict[FrameType, int] = {
    FrameType.REQUEST: FLAG_HEADERS | FLAG_ZSTD | FLAG_TYPED | FLAG_CONN,
    FrameType.RESPONSE: FLAG_HEADERS | FLAG_ZSTD | FLAG_TYPED,
    FrameType.PUSH: FLAG_HEADERS | FLAG_ZSTD | FLAG_TYPED,
    FrameType.SETTINGS: FLAG_SETTINGS_ACK,
    FrameType.DICT: FLAG_DICT_LAST,
}

_KNOWN_TYPES = {t.value: t for t in FrameType}


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as it came off the wire, payload not yet interpreted."""

    frame_type: FrameType
    flags: int
    payload: bytes


def encode_frame(frame_type: FrameType, flags: int, payload: bytes) -> bytes:
    """Serialise one frame."""
    return bytes(((frame_type << 4) | flags,)) + encode_varint(len(payload)) + payload


class FrameParser:
    """Turns a byte stream into ``RawFrame``s, holding at most one frame's bytes.

    Between reads it holds nothing but the tail of a frame that has not fully
    arrived (no buffer at all when the last read ended on a frame boundary,
    the usual case): an idle connection's parser is two slots.
    """

    __slots__ = ("_partial", "max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._partial: bytearray | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._partial) if self._partial is not None else 0

    def feed(
        self, data: bytes | bytearray | memoryview, max_frames: int | None = None
    ) -> list[RawFrame]:
        """Add bytes; return the frames now complete, in order.

        With ``max_frames``, at most that many: parsing stops there and the rest
        stays buffered, its frame headers not yet read (``feed(b"")`` goes on).
        A limit changed in between (``max_frame_size``) therefore applies to
        every frame not yet returned.
        """
        buffer: bytes | bytearray | memoryview
        if self._partial is not None:
            self._partial += data
            buffer = self._partial
        else:
            buffer = data
        try:
            return self._parse(buffer, -1 if max_frames is None else max_frames)
        except ProtocolError:
            if buffer is not self._partial:
                self._partial = bytearray(buffer)  # kept as fed, as when it is buffered
            raise

    def _parse(self, buffer: bytes | bytearray | memoryview, max_frames: int) -> list[RawFrame]:
        frames: list[RawFrame] = []
        offset = 0
        end = len(buffer)
        while offset < end and len(frames) != max_frames:
            first = buffer[offset]
            frame_type = _KNOWN_TYPES.get(first >> 4)
            if frame_type is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type 0x{first >> 4:x}"
                )
            flags = first & 0x0F
            if flags & ~ALLOWED_FLAGS.get(frame_type, 0):
                raise ProtocolError(
                    ErrorCode.PROTOCOL_ERROR,
                    f"{frame_type.name} frame with undefined flags 0x{flags:x}",
                )
            try:
                length, payload_start = decode_varint(buffer, offset + 1)
            except NeedMoreData:
                break
            if length > self.max_frame_size:
                raise FrameSizeError(
                    f"{frame_type.name} frame of {length} bytes exceeds the limit of "
                    f"{self.max_frame_size} bytes"
                )
            payload_end = payload_start + length
            if payload_end > end:
                break
            frames.append(RawFrame(frame_type, flags, bytes(buffer[payload_start:payload_end])))
            offset = payload_end
        if offset >= end:
            self._partial = None
        elif buffer is self._partial:
            del buffer[:offset]
        else:
            # Copied: the caller's buffer may be reused once we return.
            self._partial = bytearray(buffer[offset:])
        return frames
