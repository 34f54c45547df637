"""The structure of MMTP frames as the mutator needs it: parts to change, lengths to fix.

Nothing here validates: a frame that does not parse as its type says (it may
already be mutated) simply offers fewer parts. ``split_stream`` cuts a
well-formed capture into frames; ``MessageParts`` and ``TaggedField`` take
message frames and HELLO / HELLO_ACK payloads apart and put them back
together with correct inner lengths; ``varint_spans`` finds the varints of a
payload; ``FrameTracker`` follows frame boundaries the way the gateway's
parser does, so the driver knows whether its stream ends inside a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from channel.wire import FrameType, ProtocolError
from channel.wire.frames import FLAG_HEADERS, FLAG_TYPED, FLAG_ZSTD, MESSAGE_FRAME_TYPES
from channel.wire.varint import NeedMoreData, decode_varint, encode_varint

_KNOWN_TYPES = {t.value for t in FrameType}
_ALLOWED_FLAGS = {
    FrameType.REQUEST: 0x7,
    FrameType.RESPONSE: 0x7,
    FrameType.PUSH: 0x7,
    FrameType.SETTINGS: 0x1,
    FrameType.DICT: 0x1,
}


def varint_at(data: bytes, offset: int) -> tuple[int, int] | None:
    """``(value, end)`` of the varint at ``offset``, or None where there is none."""
    try:
        return decode_varint(data, offset)
    except (NeedMoreData, ProtocolError):
        return None


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: the type nibble (0-15, possibly undefined), flags and payload."""

    type_nibble: int
    flags: int
    payload: bytes

    def encode(self, length: int | None = None) -> bytes:
        """The frame's bytes; ``length`` overrides the true payload length."""
        size = len(self.payload) if length is None else length
        return bytes(((self.type_nibble << 4) | self.flags,)) + encode_varint(size) + self.payload

    @property
    def frame_type(self) -> FrameType | None:
        return FrameType(self.type_nibble) if self.type_nibble in _KNOWN_TYPES else None


def parse_frame(raw: bytes) -> Frame | None:
    """The frame ``raw`` holds exactly (header and whole payload), or None."""
    if not raw:
        return None
    found = varint_at(raw, 1)
    if found is None or found[1] + found[0] != len(raw):
        return None
    return Frame(raw[0] >> 4, raw[0] & 0x0F, raw[found[1] :])


def split_stream(data: bytes) -> list[bytes]:
    """Cut a well-formed byte stream into its frames (each with its header)."""
    frames: list[bytes] = []
    offset = 0
    while offset < len(data):
        found = varint_at(data, offset + 1)
        if found is None or found[1] + found[0] > len(data):
            raise ValueError(f"no whole frame at offset {offset} of {len(data)} bytes")
        end = found[1] + found[0]
        frames.append(data[offset:end])
        offset = end
    return frames


# ------------------------------------------------------------------ message frames


@dataclass(frozen=True, slots=True)
class MessageParts:
    """A REQUEST, RESPONSE or PUSH taken apart; ``join`` fixes the inner lengths."""

    frame_type: FrameType
    prefix: bytes  # stream id (+ status) or delivery id + message id
    header_block: bytes | None
    typed_section: bytes | None
    body: bytes  # with ZSTD: dictionary id varint + zstd frame
    compressed: bool

    def join(self) -> Frame:
        flags = FLAG_ZSTD if self.compressed else 0
        parts = [self.prefix]
        if self.header_block is not None:
            flags |= FLAG_HEADERS
            parts += (encode_varint(len(self.header_block)), self.header_block)
        if self.typed_section is not None:
            flags |= FLAG_TYPED
            parts += (encode_varint(len(self.typed_section)), self.typed_section)
        parts.append(self.body)
        return Frame(self.frame_type, flags, b"".join(parts))

    def with_body(self, body: bytes, *, compressed: bool) -> MessageParts:
        return replace(self, body=body, compressed=compressed)


def _prefix_end(frame_type: FrameType, payload: bytes) -> int | None:
    counts = {FrameType.REQUEST: 1, FrameType.RESPONSE: 2}
    offset = 0
    for _ in range(counts.get(frame_type, 1)):
        found = varint_at(payload, offset)
        if found is None:
            return None
        offset = found[1]
    if frame_type is FrameType.PUSH:
        found = varint_at(payload, offset)
        if found is None or found[1] + found[0] > len(payload):
            return None
        offset = found[1] + found[0]
    return offset


def _section(payload: bytes, offset: int) -> tuple[bytes, int] | None:
    found = varint_at(payload, offset)
    if found is None or found[1] + found[0] > len(payload):
        return None
    return payload[found[1] : found[1] + found[0]], found[1] + found[0]


def split_message(frame: Frame) -> MessageParts | None:
    """The parts of a message frame, or None if it is not one (or does not parse)."""
    frame_type = frame.frame_type
    if frame_type not in MESSAGE_FRAME_TYPES or frame.flags & 0x8:
        return None
    assert frame_type is not None
    payload = frame.payload
    offset = _prefix_end(frame_type, payload)
    if offset is None:
        return None
    prefix = payload[:offset]
    header_block = typed = None
    if frame.flags & FLAG_HEADERS:
        section = _section(payload, offset)
        if section is None:
            return None
        header_block, offset = section
    if frame.flags & FLAG_TYPED:
        section = _section(payload, offset)
        if section is None:
            return None
        typed, offset = section
    compressed = bool(frame.flags & FLAG_ZSTD)
    return MessageParts(frame_type, prefix, header_block, typed, payload[offset:], compressed)


# ------------------------------------------------------------------ tagged fields


@dataclass(frozen=True, slots=True)
class TaggedField:
    """One HELLO / HELLO_ACK field: ``key = number << 1 | kind`` and its value.

    For kind 0 ``value`` is the varint's bytes; for kind 1 it is the content
    (``encode`` writes its length).
    """

    key: int
    value: bytes

    @property
    def number(self) -> int:
        return self.key >> 1

    @property
    def kind(self) -> int:
        return self.key & 1

    def encode(self) -> bytes:
        if self.kind == 0:
            return encode_varint(self.key) + self.value
        return encode_varint(self.key) + encode_varint(len(self.value)) + self.value


def split_tagged(payload: bytes) -> list[TaggedField] | None:
    fields: list[TaggedField] = []
    offset = 0
    while offset < len(payload):
        key = varint_at(payload, offset)
        if key is None:
            return None
        value_at = key[1]
        found = varint_at(payload, value_at)
        if found is None:
            return None
        if key[0] & 1 == 0:
            fields.append(TaggedField(key[0], payload[value_at : found[1]]))
            offset = found[1]
            continue
        end = found[1] + found[0]
        if end > len(payload):
            return None
        fields.append(TaggedField(key[0], payload[found[1] : end]))
        offset = end
    return fields


def join_tagged(fields: list[TaggedField]) -> bytes:
    return b"".join(field.encode() for field in fields)


# ------------------------------------------------------------------ varints


def varint_spans(payload: bytes, limit: int = 64) -> list[tuple[int, int]]:
    """``(start, end)`` of the varints that open the payload, read back to back.

    Most non-message payloads (ACK, SETTINGS, ERROR, GOAWAY, CANCEL, DICT) and
    every message prefix are varints first; reading on until one fails finds
    them without knowing each layout.
    """
    spans: list[tuple[int, int]] = []
    offset = 0
    while offset < len(payload) and len(spans) < limit:
        found = varint_at(payload, offset)
        if found is None:
            break
        spans.append((offset, found[1]))
        offset = found[1]
    return spans


# ------------------------------------------------------------------ the gateway's view


class FrameTracker:
    """Follows frame boundaries in a byte stream as the gateway's frame parser does.

    ``dead`` once the gateway must refuse the stream at the frame layer
    (undefined type or flags, a bad length varint, a length over its
    ``max_frame_size``); otherwise ``padding()`` is what completes the frame
    the stream currently ends in (b"" at a boundary).
    """

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self.dead = False
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        if self.dead:
            return
        buffer = self._pending + data
        offset = 0
        while offset < len(buffer):
            first = buffer[offset]
            frame_type = first >> 4
            if frame_type not in _KNOWN_TYPES or first & 0x0F & ~_ALLOWED_FLAGS.get(
                FrameType(frame_type), 0
            ):
                self._die()
                return
            try:
                length, start = decode_varint(buffer, offset + 1)
            except NeedMoreData:
                break
            except ProtocolError:
                self._die()
                return
            if length > self.max_frame_size:
                self._die()
                return
            if start + length > len(buffer):
                break
            offset = start + length
        self._pending = buffer[offset:]

    def _die(self) -> None:
        self.dead = True
        self._pending = bytearray()

    @property
    def at_boundary(self) -> bool:
        return not self._pending

    def padding(self) -> bytes:
        """Bytes that finish the current frame (zeros; a length cut short ends in 0x01)."""
        pad = bytearray()
        while not self.dead and self._pending:
            try:
                length, start = decode_varint(self._pending, 1)
            except NeedMoreData:
                step = b"\x01"
            except ProtocolError:
                break
            else:
                step = bytes(start + length - len(self._pending))
            pad += step
            self.feed(step)
        return bytes(pad)


def fresh_stream_ids(frames: list[bytes]) -> list[bytes]:
    """The client frames with a new odd stream id for every REQUEST (CANCELs follow them).

    A capture reuses stream 1 whenever its previous call was answered; replayed
    without the answers in between, the reuse would only ever end in
    STREAM_ID_ERROR. REQUEST number n (from 0) gets id 2n + 1.
    """
    latest: dict[int, int] = {}  # id in the capture -> id of its latest REQUEST here
    requests = 0
    out = []
    for raw in frames:
        frame = parse_frame(raw)
        found = varint_at(frame.payload, 0) if frame is not None else None
        if frame is None or found is None:
            out.append(raw)
            continue
        if frame.frame_type is FrameType.REQUEST:
            latest[found[0]] = 2 * requests + 1
            requests += 1
        elif frame.frame_type is not FrameType.CANCEL:
            out.append(raw)
            continue
        payload = encode_varint(latest.get(found[0], found[0])) + frame.payload[found[1] :]
        out.append(Frame(frame.type_nibble, frame.flags, payload).encode())
    return out
