"""Body coding: raw vs zstd, dictionaries, round trips, error codes."""

from __future__ import annotations

import random

import pytest
import zstandard
from helpers import TEST_DICT_ID, make_codec, sample_json, trained_dictionary
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.wire import BodyCodec, Dictionary, DictionaryStore, ErrorCode, ProtocolError
from channel.wire.body import (
    MIN_COMPRESS_BYTES,
    YIELD_CLASSES,
    YIELD_SAMPLE_EVERY,
    YIELD_WARMUP_BYTES,
    yield_class,
)
from channel.wire.varint import decode_varint, encode_varint

MAX_BODY = 1 << 20
MAX_WINDOW = 1 << 20
MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS


def _decode_code(codec: BodyCodec, data: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        codec.decode(data, MAX_BODY, MAX_WINDOW)
    return info.value.code


def _json_messages(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [sample_json(rng, 10_000 + i) for i in range(count)]


@pytest.mark.parametrize("size", range(MIN_COMPRESS_BYTES))
def test_short_bodies_stay_raw(size: int) -> None:
    body = b"a" * size
    for dict_id in (0, TEST_DICT_ID):
        encoded = make_codec().encode(body, dict_id)
        assert not encoded.compressed
        assert encoded.data == body


def test_compressible_body_is_compressed_and_prefixed_with_dict_id() -> None:
    codec = BodyCodec()
    body = b"hello world " * 100
    encoded = codec.encode(body, 0)
    assert encoded.compressed
    assert encoded.data[0] == 0  # dictionary id 0 = no dictionary
    assert len(encoded.data) < len(body)
    assert codec.decode(encoded.data, MAX_BODY, MAX_WINDOW) == body
    params = zstandard.get_frame_parameters(encoded.data[1:], format=MAGICLESS)
    assert params.content_size == len(body)


def test_incompressible_body_stays_raw() -> None:
    body = random.Random(3).randbytes(2000)
    encoded = BodyCodec().encode(body, 0)
    assert not encoded.compressed and encoded.data == body


def test_at_threshold_compresses_only_if_smaller() -> None:
    body = b"x" * MIN_COMPRESS_BYTES
    encoded = BodyCodec().encode(body, 0)
    if encoded.compressed:
        assert len(encoded.data) < len(body)
    else:
        assert encoded.data == body


def test_dictionary_compresses_small_json_better() -> None:
    with_dict = make_codec()
    without = BodyCodec()
    messages = _json_messages(50)
    plain_total = dict_total = 0
    for message in messages:
        plain = without.encode(message, 0)
        trained = with_dict.encode(message, TEST_DICT_ID)
        plain_total += len(plain.data)
        dict_total += len(trained.data)
        assert trained.compressed
        dict_id, _ = decode_varint(trained.data)
        assert dict_id == TEST_DICT_ID
        assert with_dict.decode(trained.data, MAX_BODY, MAX_WINDOW) == message
        if plain.compressed:
            assert without.decode(plain.data, MAX_BODY, MAX_WINDOW) == message
    assert dict_total < plain_total * 0.8


def test_decoder_needs_the_same_dictionary() -> None:
    message = _json_messages(1)[0]
    data = make_codec().encode(message, TEST_DICT_ID).data
    # A peer that never loaded the dictionary.
    assert _decode_code(BodyCodec(), data) is ErrorCode.UNKNOWN_DICTIONARY
    # A peer holding other content under the same id (ids must never be reused) gets
    # a COMPRESSION_ERROR or wrong bytes of the declared length, never another exception.
    other = Dictionary(TEST_DICT_ID, b"completely different raw content " * 20)
    try:
        decoded = BodyCodec(DictionaryStore([other])).decode(data, MAX_BODY, MAX_WINDOW)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.COMPRESSION_ERROR
    else:
        assert len(decoded) == len(message)


@pytest.mark.parametrize("dict_id", [1, 8, 2**32 - 1, 2**40])
def test_unknown_dictionary_id(dict_id: int) -> None:
    frame = BodyCodec().encode(b"abc" * 100, 0).data[1:]
    data = encode_varint(dict_id) + frame
    assert _decode_code(make_codec(), data) is ErrorCode.UNKNOWN_DICTIONARY


def test_encoding_with_an_unloaded_dictionary_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        BodyCodec().encode(b"abc" * 100, 99)
    assert info.value.code is ErrorCode.UNKNOWN_DICTIONARY


def test_bad_dictionary_id_varint() -> None:
    assert _decode_code(BodyCodec(), b"\x80") is ErrorCode.FIELD_ERROR
    assert _decode_code(BodyCodec(), b"\x80\x00" + b"\x00" * 10) is ErrorCode.VARINT_ERROR


def test_empty_frame_is_compression_error() -> None:
    assert _decode_code(BodyCodec(), b"\x00") is ErrorCode.COMPRESSION_ERROR
    assert _decode_code(BodyCodec(), b"\x00\xff\xff\xff") is ErrorCode.COMPRESSION_ERROR


def test_declared_size_checked_against_max_body_size() -> None:
    body = b"z" * 5000
    data = BodyCodec().encode(body, 0).data
    codec = BodyCodec()
    assert codec.decode(data, 5000, MAX_WINDOW) == body
    with pytest.raises(ProtocolError) as info:
        codec.decode(data, 4999, MAX_WINDOW)
    assert info.value.code is ErrorCode.BODY_TOO_LARGE


def test_codec_caches_are_reused() -> None:
    codec = make_codec()
    messages = _json_messages(5)
    for message in messages:
        codec.decode(codec.encode(message, TEST_DICT_ID).data, MAX_BODY, MAX_WINDOW)
    assert len(codec._compressors) == 1
    assert len(codec._decompressors) == 1


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=3000),
        st.builds(lambda n, b: b * n, st.integers(1, 200), st.binary(min_size=1, max_size=20)),
        st.integers(0, 10**6).map(lambda i: sample_json(random.Random(i), i)),
    ),
    use_dictionary=st.booleans(),
)
def test_round_trip(body: bytes, use_dictionary: bool) -> None:
    codec = make_codec()
    dict_id = TEST_DICT_ID if use_dictionary else 0
    encoded = codec.encode(body, dict_id)
    if encoded.compressed:
        assert len(encoded.data) < len(body)
        assert codec.decode(encoded.data, MAX_BODY, MAX_WINDOW) == body
        # A second codec holding the same dictionary decodes it too.
        assert make_codec().decode(encoded.data, MAX_BODY, MAX_WINDOW) == body
    else:
        assert encoded.data == body


def test_trained_dictionary_is_a_real_zstd_dictionary() -> None:
    dictionary = trained_dictionary()
    assert dictionary.dict_id == TEST_DICT_ID
    assert dictionary.content[:4] == b"\x37\xa4\x30\xec"  # zstd dictionary magic
    assert 1000 < len(dictionary.content) <= 4096
    assert trained_dictionary() == dictionary  # cached and deterministic


# --- size classes that do not pay are sampled, not compressed (same rules as the Rust twin)


def _noise(rng: random.Random, length: int) -> bytes:
    return rng.randbytes(length)


def _json_body(i: int) -> bytes:
    return (
        f'{{"kind":"order.shipped","order":{i},'
        '"text":"Your parcel is on its way, your parcel is on its way"}'
    ).encode()


def test_a_size_class_that_never_shrinks_is_sampled_one_body_in_32() -> None:
    codec = BodyCodec()
    rng = random.Random(1)
    length, bodies = 88, 5_000
    for _ in range(bodies):
        assert not codec.encode(_noise(rng, length), 0).compressed
    warmup = -(-YIELD_WARMUP_BYTES // length)
    tried_after = (bodies - warmup) // YIELD_SAMPLE_EVERY
    assert codec.skipped_bodies == bodies - warmup - tried_after
    longer = _json_body(1) + _json_body(2)
    assert yield_class(len(longer)) != yield_class(length)
    assert codec.encode(longer, 0).compressed


def test_bodies_that_shrink_are_always_compressed() -> None:
    codec = BodyCodec()
    for i in range(3_000):
        assert codec.encode(_json_body(i), 0).compressed
    assert codec.skipped_bodies == 0


def test_a_class_that_starts_to_pay_is_compressed_again() -> None:
    codec = BodyCodec()
    rng = random.Random(7)
    for _ in range(20_000):
        codec.encode(_noise(rng, 100), 0)
    body = _json_body(5)
    assert yield_class(len(body)) == yield_class(100)
    skipped = codec.skipped_bodies
    resumed = next(
        (
            attempt
            for attempt in range(64 * YIELD_SAMPLE_EVERY)
            if codec.encode(body, 0).compressed and codec.encode(body, 0).compressed
        ),
        None,
    )
    assert resumed is not None and resumed > 0 and codec.skipped_bodies > skipped


def test_min_saving_zero_always_tries() -> None:
    codec = BodyCodec(min_saving=0.0)
    rng = random.Random(3)
    for _ in range(2_000):
        codec.encode(_noise(rng, 64), 0)
    assert codec.skipped_bodies == 0


def test_each_dictionary_keeps_its_own_counts() -> None:
    codec = make_codec()
    rng = random.Random(5)
    for _ in range(3_000):
        codec.encode(_noise(rng, 88), 0)
    skipped = codec.skipped_bodies
    assert skipped > 0
    for i in range(300):
        codec.encode(_json_body(i), TEST_DICT_ID)
    assert codec.skipped_bodies == skipped


def test_yield_classes_double() -> None:
    assert yield_class(16) == 0
    assert yield_class(31) == 0
    assert yield_class(32) == 1
    assert yield_class(88) == 2
    assert yield_class(32 * 1024 - 1) == YIELD_CLASSES - 2
    assert yield_class(1 << 30) == YIELD_CLASSES - 1
