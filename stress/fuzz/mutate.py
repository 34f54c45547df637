"""Mutations of MMTP frames and of frame sequences, driven by one seeded ``random.Random``.

Frame mutations (``FRAME_OPS``): bit flips, byte insert / delete / overwrite,
truncation, edits of the frame length and of inner varints, type and flag
swaps, and the structure-aware ones of ``inner`` (HPACK blocks, typed
sections, HELLO / HELLO_ACK tagged fields, bodies, whole REQUESTs rewritten
with odd ops and headers). Sequence mutations (``Mutator.mutate``): frames
spliced in from other captures, repeated, dropped, swapped, or synthesised.
``split_writes`` cuts the bytes of a round at random points, so the gateway
reads frames, and the varints inside them, in pieces.

Every operation returns frames as bytes; ``Mutated.mutated`` counts the
frames it changed or added (a run's "mutated frames sent"; how many of them
the node certainly read is ``link.Outcome.mutated_read``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from channel.wire import BodyCodec, FrameType
from channel.wire.frames import FLAG_HEADERS
from channel.wire.varint import encode_varint
from stress.fuzz import inner
from stress.fuzz.frames import (
    Frame,
    MessageParts,
    join_tagged,
    parse_frame,
    split_message,
    split_tagged,
    varint_spans,
)

FrameOp = Callable[[random.Random, bytes, BodyCodec], bytes | None]


def _rebuilt(frame: Frame, rng: random.Random) -> bytes:
    """The frame with its true length, or (1 in 10) a stale one."""
    if rng.random() < 0.1:
        return frame.encode(max(0, len(frame.payload) + rng.choice((-3, -1, 1, 2, 100))))
    return frame.encode()


def bit_flip(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes:
    return inner.flip_bits(rng, raw)


def overwrite(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] = rng.choice(inner.INTERESTING_BYTES)
    return bytes(out)


def insert_bytes(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    if frame is None:
        return None
    at = rng.randrange(len(frame.payload) + 1)
    extra = inner.random_bytes(rng, rng.choice((1, 1, 2, 4, 16, 64)))
    payload = frame.payload[:at] + extra + frame.payload[at:]
    return _rebuilt(Frame(frame.type_nibble, frame.flags, payload), rng)


def delete_bytes(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    if frame is None or not frame.payload:
        return None
    at = rng.randrange(len(frame.payload))
    payload = frame.payload[:at] + frame.payload[at + rng.choice((1, 1, 2, 4, 16)) :]
    return _rebuilt(Frame(frame.type_nibble, frame.flags, payload), rng)


def truncate(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes:
    """The frame cut short (header kept): the next bytes are read as its payload."""
    return raw[: rng.randrange(1, len(raw))] if len(raw) > 1 else raw


def frame_length(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    if frame is None:
        return None
    if rng.random() < 0.15:
        return raw[:1] + inner.odd_varint(rng) + frame.payload
    size = len(frame.payload)
    length = rng.choice((0, size - 1, size + 1, size * 2, inner.interesting_value(rng)))
    return frame.encode(max(0, length))


def inner_varint(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    if frame is None:
        return None
    spans = varint_spans(frame.payload, limit=8)
    if not spans:
        return None
    start, end = rng.choice(spans)
    value = (
        inner.odd_varint(rng) if rng.random() < 0.1 else encode_varint(inner.interesting_value(rng))
    )
    payload = frame.payload[:start] + value + frame.payload[end:]
    return _rebuilt(Frame(frame.type_nibble, frame.flags, payload), rng)


def type_swap(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes:
    if rng.random() < 0.75:
        first = rng.randrange(16) << 4 | raw[0] & 0x0F
    else:
        first = raw[0] & 0xF0 | rng.randrange(16)
    return bytes((first,)) + raw[1:]


def hpack(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    parts = split_message(frame) if frame is not None else None
    if parts is None:
        return None
    if parts.header_block is None or rng.random() < 0.1:
        block: bytes | None = inner.hpack_block(rng, parts.header_block or b"")
    else:
        block = inner.hpack_block(rng, parts.header_block)
    if rng.random() < 0.05:
        block = None  # no block at all: a REQUEST without :op
    return _rebuilt(_replace_block(parts, block).join(), rng)


def _replace_block(parts: MessageParts, block: bytes | None) -> MessageParts:
    return MessageParts(
        parts.frame_type, parts.prefix, block, parts.typed_section, parts.body, parts.compressed
    )


def typed(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    parts = split_message(frame) if frame is not None else None
    if parts is None:
        return None
    section = inner.typed_section(rng, parts.typed_section)
    new = MessageParts(
        parts.frame_type, parts.prefix, parts.header_block, section, parts.body, parts.compressed
    )
    return _rebuilt(new.join(), rng)


def body(rng: random.Random, raw: bytes, codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    parts = split_message(frame) if frame is not None else None
    if parts is None:
        return None
    return _rebuilt(inner.body(rng, parts, codec).join(), rng)


def request_rewrite(rng: random.Random, raw: bytes, codec: BodyCodec) -> bytes | None:
    """A REQUEST whose header block is a context-free one naming a (built-in) op."""
    frame = parse_frame(raw)
    parts = split_message(frame) if frame is not None else None
    if parts is None or parts.frame_type is not FrameType.REQUEST:
        return None
    parts = _replace_block(parts, inner.weird_headers(rng))
    if rng.random() < 0.6:
        parts = inner.body(rng, parts, codec)
    return _rebuilt(parts.join(), rng)


def tagged(rng: random.Random, raw: bytes, _codec: BodyCodec) -> bytes | None:
    frame = parse_frame(raw)
    if frame is None or frame.frame_type not in (FrameType.HELLO, FrameType.HELLO_ACK):
        return None
    fields = split_tagged(frame.payload)
    if fields is None:
        return None
    payload = join_tagged(inner.tagged_fields(rng, fields))
    return _rebuilt(Frame(frame.type_nibble, frame.flags, payload), rng)


#: Frame operations and their weights.
FRAME_OPS: dict[str, tuple[FrameOp, int]] = {
    "bit_flip": (bit_flip, 10),
    "overwrite": (overwrite, 6),
    "insert_bytes": (insert_bytes, 8),
    "delete_bytes": (delete_bytes, 8),
    "truncate": (truncate, 3),
    "frame_length": (frame_length, 5),
    "inner_varint": (inner_varint, 10),
    "type_swap": (type_swap, 5),
    "hpack": (hpack, 14),
    "typed": (typed, 6),
    "body": (body, 12),
    "request_rewrite": (request_rewrite, 8),
    "tagged": (tagged, 10),
}


# ------------------------------------------------------------------ synthesised frames


def synthesise(rng: random.Random) -> bytes:
    """A frame built from scratch: any type, plausible or borderline fields."""
    kind = rng.choice(list(FrameType))
    value = inner.interesting_value
    if kind is FrameType.PING or kind is FrameType.PONG:
        payload = rng.randbytes(rng.choice((0, 1, 8, 8, 9, 64)))
    elif kind is FrameType.ACK:
        count = rng.choice((0, 1, 3, 1024, 1025))
        payload = b"".join(encode_varint(rng.randrange(1, 50)) for _ in range(count))
    elif kind is FrameType.SETTINGS:
        pairs = [(rng.randrange(0, 10), value(rng)) for _ in range(rng.choice((0, 1, 3, 30)))]
        payload = b"".join(encode_varint(k) + encode_varint(v) for k, v in pairs)
        return Frame(kind, rng.choice((0, 0, 0, 1)), payload).encode()
    elif kind is FrameType.ERROR or kind is FrameType.GOAWAY:
        numbers = (rng.choice((0, 0, 1, 2, 3, 99)), rng.randrange(40), value(rng))
        text = rng.choice((b"", b"bye", b"\xff\xfe", b"x" * 3000))
        if kind is FrameType.GOAWAY:
            text = encode_varint(rng.choice((0, 5, 3000))) + text
        payload = b"".join(encode_varint(n) for n in numbers) + text
    elif kind is FrameType.CANCEL:
        payload = encode_varint(rng.choice((0, 1, 3, 2, 999))) + rng.choice((b"", b"\x00"))
    elif kind is FrameType.REQUEST:
        block = inner.weird_headers(rng)
        payload = encode_varint(rng.choice((1, 3, 5, 2, 0, 101))) + encode_varint(len(block))
        return Frame(kind, FLAG_HEADERS, payload + block + inner.json_body(rng)).encode()
    else:
        payload = b"".join(encode_varint(value(rng)) for _ in range(rng.randint(0, 4)))
        payload += rng.randbytes(rng.choice((0, 4, 100)))
    return Frame(kind, 0, payload).encode()


# ------------------------------------------------------------------ sequences


@dataclass
class Mutated:
    frames: list[bytes]
    mutated: int = 0
    ops: list[str] = field(default_factory=list)


class Mutator:
    """Applies ``count`` mutations to a run of frames; ``donors`` feed splicing."""

    def __init__(self, donors: Sequence[bytes], codec: BodyCodec) -> None:
        self.donors = tuple(donors)
        self.codec = codec
        self._names = list(FRAME_OPS)
        self._weights = [weight for _, weight in FRAME_OPS.values()]

    def mutate(self, rng: random.Random, frames: Sequence[bytes], count: int) -> Mutated:
        out = Mutated(list(frames))
        for _ in range(count):
            self._one(rng, out)
        return out

    def _one(self, rng: random.Random, out: Mutated) -> None:
        frames = out.frames
        roll = rng.random()
        at = rng.randrange(len(frames) + 1)
        if roll < 0.70 and frames:
            self._frame_op(rng, out, min(at, len(frames) - 1))
        elif roll < 0.78 and self.donors:
            frames.insert(at, rng.choice(self.donors))
            out.mutated += 1
            out.ops.append("splice")
        elif roll < 0.86:
            frames.insert(at, synthesise(rng))
            out.mutated += 1
            out.ops.append("synthesise")
        elif roll < 0.93 and frames:
            at = min(at, len(frames) - 1)
            copies = rng.choice((1, 1, 2, 5, 20)) if len(frames[at]) < 512 else 1
            frames[at:at] = [frames[at]] * copies
            out.mutated += copies
            out.ops.append("repeat")
        elif roll < 0.97 and len(frames) > 1:
            i, j = rng.sample(range(len(frames)), 2)
            frames[i], frames[j] = frames[j], frames[i]
            out.mutated += 2
            out.ops.append("swap")
        elif frames:
            del frames[min(at, len(frames) - 1)]
            out.ops.append("drop")

    def _frame_op(self, rng: random.Random, out: Mutated, at: int) -> None:
        for _ in range(4):  # an op that does not apply to this frame: pick another
            name = rng.choices(self._names, self._weights)[0]
            changed = FRAME_OPS[name][0](rng, out.frames[at], self.codec)
            if changed is not None:
                out.frames[at] = changed
                out.mutated += 1
                out.ops.append(name)
                return


def split_writes(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut into the writes the driver makes (each one TLS record)."""
    if len(data) < 2:
        return [data]
    roll = rng.random()
    if roll < 0.4:
        return [data]
    if roll < 0.9:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
    else:  # the first bytes one at a time: every varint arrives in pieces
        cuts = list(range(1, min(len(data), rng.randint(2, 24))))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]
