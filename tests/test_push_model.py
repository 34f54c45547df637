"""Push values: message ids, packing, JSON of the hot paths."""

from __future__ import annotations

import itertools
import json
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import fastjson
from channel.push import model
from channel.push.model import (
    Priority,
    PushMessage,
    message_id_of,
    new_message_id,
    new_message_ids,
)


def _fields(message_id: str) -> tuple[int, int, int]:
    """(ms, counter, salt) that an id encodes."""
    n = 0
    for char in message_id:
        n = n * 32 + model._DIGITS.index(char)
    return n >> 72, (n >> 48) & 0xFFFFFF, n & 0xFFFFFFFFFFFF


def test_new_message_id_is_the_reference_encoding_of_time_counter_and_salt() -> None:
    before = model.now_ms()
    ids = [new_message_id() for _ in range(2_000)]
    after = model.now_ms()
    for message_id in ids:
        ms, counter, salt = _fields(message_id)
        raw = ms.to_bytes(6, "big") + counter.to_bytes(3, "big") + salt.to_bytes(6, "big")
        assert message_id_of(raw) == message_id
        assert before <= ms <= after and salt == model._process_salt
    assert len(set(ids)) == len(ids)
    # Sortable: by time, then by acceptance order (unless the counter wrapped).
    wrapped = any(_fields(a)[1] > _fields(b)[1] for a, b in itertools.pairwise(ids))
    assert wrapped or ids == sorted(ids)


@given(st.binary(min_size=15, max_size=15))
def test_message_id_of_sorts_like_the_bytes(raw: bytes) -> None:
    other = bytes(255 - b for b in raw)
    assert (message_id_of(raw) < message_id_of(other)) == (raw < other)
    assert len(message_id_of(raw)) == 24


def test_pack_round_trip() -> None:
    message = PushMessage("m1", b"\x00body", (("a", "b"),), 10, "ck", accepted_at_ms=5)
    again = PushMessage.unpack(message.pack())
    assert again == message
    assert again.pack() == message.pack()


_json_values = st.recursive(
    st.none()
    | st.booleans()
    # orjson reads integers in -2**63..2**64-1; beyond that a float (fastjson's docstring,
    # and the test below).
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def test_fastjson_reads_integers_beyond_64_bits_as_floats() -> None:
    for value in (-(2**63) - 1, 2**64):
        assert fastjson.loads(str(value).encode()) == float(value)


@given(_json_values)
def test_fastjson_reads_what_json_reads(value: object) -> None:
    text = json.dumps(value)
    assert fastjson.loads(text.encode()) == json.loads(text)
    assert json.loads(fastjson.dumps(value)) == value


def test_fastjson_keeps_json_answers_where_orjson_refuses() -> None:
    huge = "123456789012345678901234567890"
    assert fastjson.loads(f'{{"ttl_s": {huge}}}') == {"ttl_s": float(huge)}
    assert fastjson.loads("[NaN]") == json.loads("[NaN]")
    assert fastjson.loads('"\\ud800"') == "\ud800"
    assert json.loads(fastjson.dumps({"n": int(huge)})) == {"n": int(huge)}
    assert json.loads(fastjson.dumps({1: "x"})) == {"1": "x"}


def test_new_message_id_at_given_times_is_the_reference_encoding() -> None:
    # The time-only prefix is cached per millisecond: times that go back and forth,
    # and the counter's wrap, must still give the reference encoding.
    times = [0, 1, 7, 8, 1_765_000_000_000, 1_765_000_000_007, 8, 2**48 - 1, 2**48 + 5]
    times += [random.Random(seed).randrange(2**48) for seed in range(200)]
    for at_ms in times:
        for counter in (0, 1, 0xFFFFFF):
            model._counter = (counter - 1) & 0xFFFFFF
            raw = (
                (at_ms & 0xFFFFFFFFFFFF).to_bytes(6, "big")
                + counter.to_bytes(3, "big")
                + model._process_salt.to_bytes(6, "big")
            )
            assert new_message_id(at_ms) == message_id_of(raw)


def test_fastjson_refuses_json_nested_too_deep_with_a_value_error() -> None:
    # orjson stops at 1024 levels, json.loads then hits Python's recursion limit:
    # callers catch ValueError (fastjson.DecodeError) for bad JSON, never RecursionError.
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(fastjson.DecodeError, match="nested"):
        fastjson.loads(deep)
    with pytest.raises(fastjson.DecodeError, match="nested"):
        fastjson.loads(b'{"topics": ' + deep + b"}")


@settings(max_examples=300, deadline=None)
@given(
    at_ms=st.integers(0, 2**48 + 10) | st.sampled_from([0, 7, 8, 2**48 - 1]),
    counter=st.integers(0, 0xFFFFFF) | st.sampled_from([0, 0xFFFFFF, 0xFFFFFE]),
    count=st.integers(0, 40),
)
def test_new_message_ids_are_what_one_call_per_id_gives(
    at_ms: int, counter: int, count: int
) -> None:
    model._counter = counter
    model._prefix_ms = -1  # the cached prefix is for some other time
    one_by_one = [new_message_id(at_ms) for _ in range(count)]
    after = model._counter
    model._counter = counter
    model._prefix_ms = -1
    assert new_message_ids(at_ms, count) == one_by_one
    assert model._counter == after


@pytest.mark.parametrize(
    ("headers", "users"),
    [((), ()), ((("a", "1"), ("b", "2")), ()), ((), ("u1", "u2")), ((("a", "1"),), ("u1",))],
)
def test_pack_bytes_are_those_of_the_list_form(
    headers: tuple[tuple[str, str], ...], users: tuple[str, ...]
) -> None:
    """A queued push's bytes in Redis stay as they were: empty headers and target users
    packed as empty arrays, whatever Python type carries them."""
    message = PushMessage(
        "m1",
        b"\x00body",
        headers,
        1_700_000_000_000,
        "ck",
        Priority.HIGH,
        123,
        target_users=users,
        flags=2,
    )
    expected = msgpack.packb(
        [
            "m1",
            b"\x00body",
            [list(h) for h in headers],
            1_700_000_000_000,
            "ck",
            1,
            123,
            False,
            list(users),
            2,
        ],
        use_bin_type=True,
    )
    assert message.pack() == expected
    assert PushMessage.unpack(expected) == message
