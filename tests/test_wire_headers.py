"""HPACK header blocks: presets, never-indexed names, context-free blocks, limits."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack.hpack import decode_integer, encode_integer
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.wire import ErrorCode, ProtocolError
from channel.wire.errors import HeaderError
from channel.wire.headers import (
    NEVER_INDEXED_NAMES,
    HeaderDecoder,
    HeaderEncoder,
    Headers,
    encode_context_free,
)
from channel.wire.presets import preset_entries

BIG_LIST = 1 << 20
PRESET_IDS = (0, 1)
MOBILE = preset_entries(1)
HEADER_CODES = {ErrorCode.HEADER_ERROR, ErrorCode.TABLE_SIZE_ERROR, ErrorCode.HEADER_LIST_TOO_LARGE}


# --------------------------------------------------------------- helpers


def representations(block: bytes) -> list[str]:
    """Classify each RFC 7541 representation in ``block`` by its leading bits.

    ``indexed`` (1xxxxxxx), ``incremental`` (01xxxxxx), ``size-update``
    (001xxxxx), ``never-indexed`` (0001xxxx), ``without-indexing`` (0000xxxx).
    """
    kinds: list[str] = []
    i = 0
    while i < len(block):
        first = block[i]
        if first & 0x80:
            kinds.append("indexed")
            i += decode_integer(block[i:], 7)[1]
            continue
        if first & 0x40:
            kinds.append("incremental")
            prefix = 6
        elif first & 0x20:
            kinds.append("size-update")
            i += decode_integer(block[i:], 5)[1]
            continue
        else:
            kinds.append("never-indexed" if first & 0x10 else "without-indexing")
            prefix = 4
        index, used = decode_integer(block[i:], prefix)
        i += used
        strings = 1 if index else 2
        for _ in range(strings):
            length, used = decode_integer(block[i:], 7)
            i += used + length
    assert i == len(block)
    return kinds


def dynamic_entries(decoder: HeaderDecoder) -> list[tuple[bytes, bytes]]:
    return decoder.table_entries()


def encoder_entries(encoder: HeaderEncoder) -> list[tuple[bytes, bytes]]:
    return encoder.table_entries()


def plain_hpack_decoder(preset_id: int) -> hpack.Decoder:
    """A stock ``hpack.Decoder`` with the preset loaded the way the spec describes."""
    decoder = hpack.Decoder(max_header_list_size=BIG_LIST)
    for name, value in preset_entries(preset_id):
        decoder.header_table.add(name.encode(), value.encode())
    return decoder


def hpack_string(raw: bytes) -> bytes:
    """A non-Huffman HPACK string literal."""
    return bytes(encode_integer(len(raw), 7)) + raw


def header_code(decoder: HeaderDecoder, block: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decoder.decode(block)
    return info.value.code


# --------------------------------------------------------------- strategies

_names = st.one_of(
    st.sampled_from(
        [
            ":op",
            "content-type",
            "locale",
            "priority",
            "cache-control",
            "collapse-key",
            "x-app",
            "user-agent",
            *sorted(NEVER_INDEXED_NAMES),
        ]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20),
)
_values = st.one_of(
    st.sampled_from(["", "application/json", "en-US", "zh-CN", "high", "normal", "no-cache"]),
    st.text(max_size=60),
)
_header_lists = st.lists(st.tuples(_names, _values), max_size=12)


# --------------------------------------------------------------- round trips


@pytest.mark.parametrize("preset_id", PRESET_IDS)
@settings(max_examples=80, deadline=None)
@given(
    blocks=st.lists(_header_lists, min_size=1, max_size=15),
    grow_at=st.integers(min_value=0, max_value=15),
)
def test_round_trip_many_blocks(
    preset_id: int, blocks: list[list[tuple[str, str]]], grow_at: int
) -> None:
    encoder = HeaderEncoder(preset_id, max_table_size=8192)
    decoder = HeaderDecoder(preset_id, 8192, BIG_LIST)
    plain = plain_hpack_decoder(preset_id)
    plain.max_allowed_table_size = 8192
    for i, headers in enumerate(blocks):
        if i == grow_at:
            encoder.use_peer_table_size(8192)
        block = encoder.encode(headers)
        assert decoder.decode(block) == tuple(headers)
        # A second, independent decoder (stock hpack, same preset) agrees.
        assert [(str(n), str(v)) for n, v in plain.decode(block)] == headers
        assert dynamic_entries(decoder) == encoder_entries(encoder)


@pytest.mark.parametrize("preset_id", PRESET_IDS)
def test_table_evolves_and_repeats_get_cheaper(preset_id: int) -> None:
    encoder = HeaderEncoder(preset_id)
    decoder = HeaderDecoder(preset_id, 4096, BIG_LIST)
    headers = [(":op", "feed.list"), ("x-app", "com.example"), ("locale", "de-DE")]
    first = encoder.encode(headers)
    second = encoder.encode(headers)
    assert decoder.decode(first) == tuple(headers)
    assert decoder.decode(second) == tuple(headers)
    assert len(second) == 3  # three indexed representations
    assert representations(second) == ["indexed"] * 3


def test_preset_makes_the_first_block_smaller() -> None:
    headers = [
        (":op", "feed.list"),
        ("content-type", "application/json"),
        ("locale", "zh-CN"),
        ("priority", "high"),
        ("cache-control", "no-cache"),
        ("ts", "1700000000000"),
        ("collapse-key", "inbox"),
    ]
    without = HeaderEncoder(0).encode(headers)
    with_preset = HeaderEncoder(1).encode(headers)
    assert len(with_preset) < len(without)
    assert HeaderDecoder(1, 4096, BIG_LIST).decode(with_preset) == tuple(headers)
    # Full preset matches are single indexed bytes.
    assert HeaderEncoder(1).encode([("content-type", "application/json")]) == bytes(
        [0x80 | (62 + len(MOBILE) - 1 - MOBILE.index(("content-type", "application/json")))]
    )


def test_preset_entry_order_last_is_index_62() -> None:
    decoder = plain_hpack_decoder(1)
    assert decoder.decode(b"\xbe") == [(":op", "")]  # index 62: last preset entry
    assert decoder.decode(bytes([0x80 | (61 + len(MOBILE))])) == [("trace-id", "")]


# --------------------------------------------------------------- never-indexed


@pytest.mark.parametrize("preset_id", PRESET_IDS)
@pytest.mark.parametrize("name", sorted(NEVER_INDEXED_NAMES))
def test_never_indexed_names(preset_id: int, name: str) -> None:
    encoder = HeaderEncoder(preset_id)
    before = encoder_entries(encoder)
    value = "secret-0123456789"
    for _ in range(2):  # the second time too: nothing was remembered
        block = encoder.encode([(name, value)])
        assert representations(block) == ["never-indexed"]
        assert block[0] & 0xF0 == 0x10
        assert encoder_entries(encoder) == before
        decoded = plain_hpack_decoder(preset_id).decode(block)
        assert decoded == [(name, value)]
        assert isinstance(decoded[0], hpack.NeverIndexedHeaderTuple)
    decoder = HeaderDecoder(preset_id, 4096, BIG_LIST)
    table_before = dynamic_entries(decoder)
    assert decoder.decode(block) == ((name, value),)
    assert dynamic_entries(decoder) == table_before


def test_ordinary_names_are_indexed_incrementally() -> None:
    encoder = HeaderEncoder(0)
    assert representations(encoder.encode([("x-app", "com.example")])) == ["incremental"]
    assert encoder_entries(encoder) == [(b"x-app", b"com.example")]


# --------------------------------------------------------------- context-free


def _evolved_decoder(rng: random.Random) -> tuple[HeaderDecoder, hpack.Decoder]:
    """A decoder (and a stock twin) whose dynamic table went through random blocks."""
    preset_id = rng.choice(PRESET_IDS)
    encoder = HeaderEncoder(preset_id, max_table_size=8192)
    decoder = HeaderDecoder(preset_id, 8192, BIG_LIST)
    plain = plain_hpack_decoder(preset_id)
    plain.max_allowed_table_size = 8192
    if rng.random() < 0.5:
        encoder.use_peer_table_size(rng.choice([4096, 6000, 8192]))
    for _ in range(rng.randrange(6)):
        headers = [
            (f"x-{rng.randrange(30)}", "v" * rng.randrange(300)) for _ in range(rng.randrange(6))
        ]
        block = encoder.encode(headers)
        decoder.decode(block)
        plain.decode(block)
    return decoder, plain


@settings(max_examples=100, deadline=None)
@given(headers=_header_lists, seed=st.integers(0, 2**32))
def test_context_free_blocks_decode_in_any_state(headers: list[tuple[str, str]], seed: int) -> None:
    block = encode_context_free(headers)
    kinds = representations(block)
    assert set(kinds) <= {"without-indexing", "never-indexed"}
    for (name, _), kind in zip(headers, kinds, strict=True):
        expected = "never-indexed" if name in NEVER_INDEXED_NAMES else "without-indexing"
        assert kind == expected
    rng = random.Random(seed)
    for _ in range(3):
        decoder, plain = _evolved_decoder(rng)
        table = dynamic_entries(decoder)
        size = decoder.header_table_size
        assert decoder.decode(block) == tuple(headers)
        assert dynamic_entries(decoder) == table
        assert decoder.header_table_size == size
        plain_table = list(plain.header_table.dynamic_entries)
        assert [(str(n), str(v)) for n, v in plain.decode(block)] == headers
        assert list(plain.header_table.dynamic_entries) == plain_table


def test_context_free_uses_static_names() -> None:
    block = encode_context_free([("content-type", "x"), ("cookie", "c"), ("x-new", "y")])
    # content-type is static index 31, cookie 32 (never-indexed), x-new is a literal name.
    assert block[0] == 0x0F and block[1] == 31 - 15
    assert representations(block) == ["without-indexing", "never-indexed", "without-indexing"]
    assert HeaderDecoder(0, 4096, BIG_LIST).decode(block) == (
        ("content-type", "x"),
        ("cookie", "c"),
        ("x-new", "y"),
    )


def test_context_free_empty() -> None:
    assert encode_context_free([]) == b""


# --------------------------------------------------------------- limits and garbage


def test_header_list_bomb() -> None:
    """One big literal is inserted, then referenced many times by a tiny block."""
    decoder = HeaderDecoder(0, 4096, 16 * 1024)
    insert = b"\x40" + hpack_string(b"x") + hpack_string(b"A" * 3000)
    assert decoder.decode(insert) == (("x", "A" * 3000),)
    bomb = b"\xbe" * 10  # index 62, ten times: ~30 KB decoded from 10 bytes
    assert header_code(decoder, bomb) is ErrorCode.HEADER_LIST_TOO_LARGE


def test_header_list_limit_boundary() -> None:
    # Each ("x", "A" * 3000) costs 1 + 3000 + 32 = 3033; five fit in 16 KiB, six do not.
    decoder = HeaderDecoder(0, 4096, 5 * 3033)
    decoder.decode(b"\x40" + hpack_string(b"x") + hpack_string(b"A" * 3000))
    assert len(decoder.decode(b"\xbe" * 5)) == 5
    assert header_code(decoder, b"\xbe" * 6) is ErrorCode.HEADER_LIST_TOO_LARGE


def test_table_size_update_above_announced_max() -> None:
    decoder = HeaderDecoder(0, 4096, BIG_LIST)
    block = bytearray(encode_integer(4097, 5))
    block[0] |= 0x20
    assert header_code(decoder, bytes(block)) is ErrorCode.TABLE_SIZE_ERROR
    at_max = bytearray(encode_integer(4096, 5))
    at_max[0] |= 0x20
    assert HeaderDecoder(0, 4096, BIG_LIST).decode(bytes(at_max)) == ()


def test_table_size_update_within_max() -> None:
    decoder = HeaderDecoder(1, 8192, BIG_LIST)
    grow = bytearray(encode_integer(8192, 5))
    grow[0] |= 0x20
    assert decoder.decode(bytes(grow) + b"\x82") == ((":method", "GET"),)
    assert decoder.decode(b"\x20") == ()  # shrink to 0: preset entries evicted
    assert dynamic_entries(decoder) == []


@pytest.mark.parametrize(
    "block",
    [
        b"\xff" * 10,  # integer too long
        b"\x80",  # index 0
        b"\xc0",  # index 64: no such dynamic entry
        b"\x40\x05ab",  # truncated literal
        b"\x00\x81\xff\x01a",  # bad Huffman
        b"\x00\x01a\x01\xff",  # value not UTF-8
        b"\x00\x00\x01a",  # empty name
        b"\x82\x20",  # size update after a header
        b"\x00\x01a",  # value missing
        b"\x10",  # never-indexed, nothing else
    ],
)
def test_garbage_is_header_error(block: bytes) -> None:
    assert header_code(HeaderDecoder(0, 4096, BIG_LIST), block) is ErrorCode.HEADER_ERROR


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from(PRESET_IDS))
def test_arbitrary_bytes_only_raise_header_codes(block: bytes, preset_id: int) -> None:
    decoder = HeaderDecoder(preset_id, 4096, 1024)
    try:
        headers: Headers = decoder.decode(block)
    except ProtocolError as exc:
        assert exc.code in HEADER_CODES
        return
    assert all(isinstance(n, str) and n and isinstance(v, str) for n, v in headers)


def test_random_mutations_of_real_blocks_only_raise_header_codes() -> None:
    rng = random.Random(7)
    encoder = HeaderEncoder(1)
    blocks = [
        encoder.encode([(":op", f"op{i}"), ("x-k", "v" * i), ("trace-id", f"{i:032x}")])
        for i in range(40)
    ]
    for _ in range(3000):
        block = bytearray(rng.choice(blocks))
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(len(block))
            block[position] ^= 1 << rng.randrange(8)
        decoder = HeaderDecoder(1, 4096, 4096)
        try:
            decoder.decode(bytes(block))
        except ProtocolError as exc:
            assert exc.code in HEADER_CODES, bytes(block).hex()


# --------------------------------------------------------------- block cache


def _size_update(size: int) -> bytes:
    update = bytearray(encode_integer(size, 5))
    update[0] |= 0x20
    return bytes(update)


def test_decoder_cache_not_stale_after_shrink_and_regrow() -> None:
    """The decoder's block cache is invalidated by evictions, not only by insertions and
    size (a shrink-and-regrow once brought back a cached block's evicted headers)."""
    decoder = HeaderDecoder(0, 4096, BIG_LIST)
    plain = plain_hpack_decoder(0)
    blocks = [
        b"\x40" + hpack_string(b"x-a") + hpack_string(b"1"),  # insert at 62
        b"\xbe",  # reference it (no insertion: cacheable)
        _size_update(0),  # evict everything
        _size_update(4096),  # back to the old size, still no insertion
    ]
    for block in blocks:
        assert list(decoder.decode(block)) == [(str(n), str(v)) for n, v in plain.decode(block)]
    with pytest.raises(hpack.HPACKDecodingError):
        plain.decode(b"\xbe")
    assert header_code(decoder, b"\xbe") is ErrorCode.HEADER_ERROR


def test_encoder_cache_not_stale_after_shrink_and_regrow() -> None:
    """The encoder's block cache is invalidated by evictions too (a shrink-and-regrow once
    reused a block referencing evicted entries)."""
    encoder = HeaderEncoder(0, max_table_size=8192)
    plain = plain_hpack_decoder(0)
    plain.max_allowed_table_size = 8192
    headers = [("x-a", "1")]

    def send(block: bytes) -> None:
        plain.decode(block)

    encoder.use_peer_table_size(8192)
    send(encoder.encode(headers))  # x-a inserted
    send(encoder.encode([("x-big", "v" * 4100)]))  # table now 4176 bytes
    send(encoder.encode(headers))  # indexed, no insertion: cached
    encoder.use_peer_table_size(4096)  # both entries evicted
    send(encoder.encode([("token", "t")]))  # never-indexed: no insertion
    encoder.use_peer_table_size(8192)  # same (insertions, maxsize) as when cached
    send(encoder.encode([("token", "t")]))
    assert [(str(n), str(v)) for n, v in plain.decode(encoder.encode(headers))] == headers


def test_grow_then_shrink_between_blocks_signals_smallest_then_final() -> None:
    """Regression: hpack replayed every size change, announcing 16384 to a decoder
    that by then allowed only 4096 (found by the honest random conversations)."""
    encoder = HeaderEncoder(0, max_table_size=16384)
    decoder = HeaderDecoder(0, 16384, 16384)
    decoder.decode(encoder.encode([("a", "1")]))
    encoder.use_peer_table_size(16384)
    encoder.use_peer_table_size(4096)
    decoder.allow_table_size(4096)
    block = encoder.encode([("b", "2")])
    assert block.startswith(b"\x3f\xe1\x1f")  # a single update to 4096
    assert decoder.decode(block) == (("b", "2"),)
    encoder.use_peer_table_size(8192)
    encoder.use_peer_table_size(16384)
    decoder.allow_table_size(16384)
    block = encoder.encode([("c", "3")])
    assert block.startswith(b"\x3f\xe1\x3f\x3f\xe1\x7f")  # smallest (8192), then final (16384)
    assert decoder.decode(block) == (("c", "3"),)


def test_lowered_limits_apply_to_blocks_seen_before() -> None:
    """Regression: a cached decode skipped hpack's checks, so a block decoded before a
    SETTINGS lowered the limits was still accepted after (found by the spec review)."""
    encoder = HeaderEncoder(0)
    decoder = HeaderDecoder(0, 4096, 16384)
    big = encoder.encode([("x-note", "v" * 900)])
    again = encoder.encode([("x-note", "v" * 900)])  # now fully indexed: cacheable
    decoder.decode(big)
    decoder.decode(again)
    decoder.max_header_list_size = 300
    with pytest.raises(HeaderError) as info:
        decoder.decode(again)
    assert info.value.code is ErrorCode.HEADER_LIST_TOO_LARGE
