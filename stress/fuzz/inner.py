"""Mutations inside a frame's structure: HPACK blocks, typed sections, tagged fields, bodies.

Each function takes the part as bytes (or parsed fields) and a seeded
``random.Random`` and returns the changed part; the caller puts the frame
back together with correct lengths (``frames.MessageParts.join``), so these
mutations reach the decoders behind the frame layer instead of tripping
over a length.
"""

from __future__ import annotations

import json
import random

from hpack.hpack import encode_integer

from channel.wire import BodyCodec, DictionaryStore
from channel.wire.headers import encode_context_free
from channel.wire.varint import encode_varint
from stress.fuzz.frames import MessageParts, TaggedField

#: Varint values that sit on limits and encoding boundaries.
INTERESTING_VALUES = (
    0, 1, 2, 3, 7, 8, 63, 64, 65, 127, 128, 255, 256, 1023, 1024, 4095, 4096, 4097, 16383,
    16384, 16385, 65535, 65536, 262143, 262144, 262145, 1 << 20, (1 << 20) + 1, 2**31 - 1,
    2**32 - 1, 2**32, 2**56 - 1,
)  # fmt: skip
INTERESTING_BYTES = (0x00, 0x01, 0x0F, 0x10, 0x1F, 0x20, 0x3F, 0x40, 0x7F, 0x80, 0x81, 0xBF, 0xFF)
#: Operations the gateway answers itself (and so decodes the body of), plus others.
OPS = (
    "channel.echo", "channel.time", "channel.subscribe", "channel.unsubscribe",
    "account.balance.get", "account.slow", "account.fail", "account.big", "account.headers",
    "dead.call", "x.echo", "", ":op", "CHANNEL.ECHO", "a" * 300, "op\x00name", "ünïcode.op",
)  # fmt: skip
WEIRD_NAMES = (
    "", ":op", ":x", "Content-Type", "trace-id", "ts", "sign", "x-a", "a" * 200, "n\x00", "é",
)  # fmt: skip


def interesting_value(rng: random.Random) -> int:
    if rng.random() < 0.8:
        return rng.choice(INTERESTING_VALUES)
    return rng.randrange(1 << rng.choice((7, 14, 21, 28, 35, 56)))


def odd_varint(rng: random.Random) -> bytes:
    """An encoding the gateway must refuse: non-minimal, or longer than 8 bytes."""
    return rng.choice(
        (b"\x80\x00", b"\xff\x00", b"\x81\x80\x00", b"\x80" * 8 + b"\x01", b"\xff" * 9)
    )


def random_bytes(rng: random.Random, size: int) -> bytes:
    if rng.random() < 0.7:
        return rng.randbytes(size)
    return bytes((rng.choice(INTERESTING_BYTES),)) * size


def flip_bits(rng: random.Random, data: bytes, count: int = 0) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(count or rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


# ------------------------------------------------------------------ HPACK


def _hpack_int(value: int, prefix_bits: int, pattern: int) -> bytes:
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= pattern
    return bytes(encoded)


def _hpack_string(rng: random.Random, raw: bytes) -> bytes:
    if rng.random() < 0.2:  # Huffman flag on bytes that are not Huffman code
        return _hpack_int(len(raw), 7, 0x80) + raw
    if rng.random() < 0.1:  # a length that runs past the block
        return _hpack_int(len(raw) + rng.randint(1, 1000), 7, 0) + raw
    return _hpack_int(len(raw), 7, 0) + raw


def _hpack_field(rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:  # indexed, static or dynamic or past both tables
        return _hpack_int(rng.choice((0, 1, 2, 61, 62, 63, 75, 100, 5000, 2**20)), 7, 0x80)
    if choice == 1:  # dynamic table size update (a third one in a block is already too many)
        return _hpack_int(rng.choice((0, 1, 4096, 4097, 65536, 2**31)), 5, 0x20)
    name = rng.choice(WEIRD_NAMES).encode("utf-8", "surrogatepass")
    value = random_bytes(rng, rng.choice((0, 1, 16, 200, 5000)))
    pattern = rng.choice((0x40, 0x00, 0x10))  # incremental, without, never indexed
    if choice == 2:  # indexed name
        prefix = {0x40: 6, 0x00: 4, 0x10: 4}[pattern]
        return _hpack_int(rng.choice((1, 31, 62, 70, 200)), prefix, pattern) + _hpack_string(
            rng, value
        )
    return bytes((pattern,)) + _hpack_string(rng, name) + _hpack_string(rng, value)


def hpack_block(rng: random.Random, block: bytes) -> bytes:
    """A changed header block (may desynchronise the two HPACK tables, on purpose)."""
    choice = rng.randrange(8)
    if choice == 0 or not block:
        return _hpack_field(rng) + block
    if choice == 1:
        at = rng.randrange(len(block) + 1)
        return block[:at] + _hpack_field(rng) + block[at:]
    if choice == 2:
        return flip_bits(rng, block)
    if choice == 3:
        return block[: rng.randrange(len(block))] or b"\x80"
    if choice == 4:
        at = rng.randrange(len(block))
        return block[:at] + bytes((rng.choice(INTERESTING_BYTES),)) + block[at + 1 :]
    if choice == 5:
        return block + block
    if choice == 6:
        return weird_headers(rng)
    return b"".join(_hpack_field(rng) for _ in range(rng.randint(1, 4)))


def weird_headers(rng: random.Random, op: str | None = None) -> bytes:
    """A context-free block: valid in any table state, odd in content."""
    headers = [(":op", rng.choice(OPS) if op is None else op)]
    for _ in range(rng.choice((0, 0, 1, 2, 5))):
        headers.append((rng.choice(WEIRD_NAMES) or "x", rng.choice(("", "v", "é" * 40, "1" * 99))))
    if rng.random() < 0.1:
        rng.shuffle(headers)
    return encode_context_free(headers)


# ------------------------------------------------------------------ typed sections


def _typed_entry(rng: random.Random) -> bytes:
    key = rng.choice((1, 2, 3, 4, 5, 6, 0, 7, 100))
    if key in (2, 3):
        value = rng.choice((0, 1, 2, 2 * 10**16, 2**56 - 1, rng.randrange(1 << 40)))
        return encode_varint(key) + encode_varint(value)
    if key == 5:
        return encode_varint(key)
    size = rng.choice((0, 1, 8, 16, 32, 64, 65, 200))
    body = rng.randbytes(min(size, rng.choice((size, size, 3))))
    return encode_varint(key) + encode_varint(size) + body


def typed_section(rng: random.Random, section: bytes | None) -> bytes | None:
    choice = rng.randrange(5)
    if choice == 0 or section is None:
        return b"".join(_typed_entry(rng) for _ in range(rng.randint(1, 4)))
    if choice == 1:
        return section + _typed_entry(rng)
    if choice == 2:
        return flip_bits(rng, section)
    if choice == 3:
        return section[: rng.randrange(len(section) + 1)] or None
    return None  # dropped


# ------------------------------------------------------------------ tagged fields


def tagged_fields(rng: random.Random, fields: list[TaggedField]) -> list[TaggedField]:
    """HELLO / HELLO_ACK fields dropped, doubled, retyped, renumbered, resized or added."""
    out = list(fields)
    choice = rng.randrange(8)
    at = rng.randrange(len(out)) if out else 0
    if choice == 0 and out:
        del out[at]
    elif choice == 1 and out:
        out.insert(at, out[at])
    elif choice == 2 and out:  # the other kind: a varint read as a length or the reverse
        out[at] = TaggedField(out[at].key ^ 1, out[at].value)
    elif choice == 3 and out:
        number = rng.choice((0, 1, 2, 4, 5, 9, 10, 16, 17, 40, 2**20))
        out[at] = TaggedField(number << 1 | out[at].kind, out[at].value)
    elif choice == 4 and out:
        out[at] = _resized(rng, out[at])
    elif choice == 5:
        for _ in range(rng.randint(1, 8)):  # unknown fields, kept few (a flood is another test)
            number = rng.choice((17, 18, 31, 63, 64, 1000))
            out.insert(rng.randrange(len(out) + 1), _unknown_field(rng, number))
    elif choice == 6:
        rng.shuffle(out)
    else:
        out.insert(0, TaggedField(2, encode_varint(rng.choice((0, 2, 3, 2**32)))))
    return out


def _resized(rng: random.Random, field: TaggedField) -> TaggedField:
    if field.kind == 0:
        value = odd_varint(rng) if rng.random() < 0.1 else encode_varint(interesting_value(rng))
        return TaggedField(field.key, value)
    size = rng.choice((0, 1, 64, 128, 129, 2048, 2049, 10000))
    content = rng.choice((b"", b"\xff\xfe", b"\xc3")) + random_bytes(rng, size)
    return TaggedField(field.key, content[:size] if size else b"")


def _unknown_field(rng: random.Random, number: int) -> TaggedField:
    if rng.random() < 0.5:
        return TaggedField(number << 1, encode_varint(interesting_value(rng)))
    return TaggedField(number << 1 | 1, rng.randbytes(rng.choice((0, 1, 100, 1000))))


# ------------------------------------------------------------------ bodies


def json_body(rng: random.Random) -> bytes:
    """JSON a decoder may choke on: deep nesting, odd numbers, wrong shapes."""
    choice = rng.randrange(7)
    depth = rng.choice((10, 100, 1000, 20000, 100000))
    if choice == 0:
        return b"[" * depth + b"]" * depth
    if choice == 1:
        return b'{"topics":' + b"[" * depth + b"]" * depth + b"}"
    if choice == 2:
        return b'{"topics": 1e999999, "x": -0, "y": 123456789012345678901234567890123}'
    if choice == 3:
        topics: object = rng.choice(
            ([], ["a" * 129], ["ok", 1, None], ["t"] * 65, [["nested"]], "news", {"a": 1})
        )
        return json.dumps({"topics": topics}).encode()
    if choice == 4:
        return b'{"topics": ["\xff\xfe"], "\xc3": 1}'
    if choice == 5:
        return b'{"topics": ["a"], "topics": ["b"]' + b" " * rng.choice((0, 1, 70000))
    return rng.randbytes(rng.choice((0, 1, 15, 16, 17, 300, 5000)))


def body(rng: random.Random, parts: MessageParts, codec: BodyCodec) -> MessageParts:
    """A message with its body changed: raw or compressed, valid or not."""
    choice = rng.randrange(6)
    if choice == 0:
        return parts.with_body(json_body(rng), compressed=False)
    if choice == 1:  # the same JSON, compressed with a dictionary the gateway holds
        encoded = codec.encode(json_body(rng), rng.choice((0, 1)))
        return parts.with_body(encoded.data, compressed=encoded.compressed)
    if choice == 2:  # the ZSTD flag flipped over the same bytes
        return parts.with_body(parts.body, compressed=not parts.compressed)
    if choice == 3 and parts.compressed:  # another dictionary id, same frame
        tail = parts.body[1:] if parts.body[:1] and parts.body[0] < 0x80 else parts.body
        dict_id = encode_varint(rng.choice((0, 1, 2, 7, 2**32)))
        return parts.with_body(dict_id + tail, compressed=True)
    if choice == 4 and parts.compressed and len(parts.body) > 2:  # a zstd frame header hit
        head = flip_bits(rng, parts.body[1:8], 1)
        return parts.with_body(parts.body[:1] + head + parts.body[8:], compressed=True)
    cut = rng.randrange(len(parts.body) + 1)
    extra = random_bytes(rng, rng.choice((0, 1, 8)))
    return parts.with_body(parts.body[:cut] + extra, compressed=parts.compressed)


def default_codec() -> BodyCodec:
    """A codec over the packaged dictionary (id 1), the one the gateway holds."""
    from channel.default_dictionary import load_default_dictionary

    return BodyCodec(DictionaryStore([load_default_dictionary()]))
