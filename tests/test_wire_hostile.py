"""Inputs that are cheap to send and were expensive to receive, refused before the work.

Each test here failed before its rule existed: the wire core walked the whole
input first (a 256 KiB block of HPACK size updates, a SETTINGS of 131,000
unknown pairs, a HELLO of unknown fields), so one device could hold a node's
event loop for hundreds of milliseconds per frame. "Before the work" is shown
without a clock: the state the work would have changed (the HPACK table) is
untouched, or the frame is refused from its length before its payload exists.
"""

from __future__ import annotations

import hpack
import pytest
from helpers import ConnectionPair, connection_error
from hpack.hpack import encode_integer
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.default_presets import register_default_presets
from channel.wire import (
    Connection,
    ConnectionErrorReceived,
    ErrorCode,
    Hello,
    HelloReceived,
    Limits,
    LocalProtocolError,
    MessageTooLarge,
    PingReceived,
    ProtocolError,
    RequestReceived,
    Role,
    State,
    StreamErrorReceived,
)
from channel.wire import messages as m
from channel.wire.fields import MAX_UNKNOWN_FIELDS
from channel.wire.frames import FrameType, encode_frame
from channel.wire.headers import MAX_SIZE_UPDATES, HeaderDecoder, HeaderEncoder
from channel.wire.hello import MAX_HELLO_DICTIONARIES
from channel.wire.varint import encode_varint

MAX_FRAME = 256 * 1024


def open_pair(**limits: Limits) -> ConnectionPair:
    register_default_presets()
    pair = ConnectionPair(**limits)
    pair.handshake(Hello(device_id="d", preset_id=1))
    return pair


def request_frame(block: bytes, stream_id: int = 1) -> bytes:
    flags, tail = m.encode_tail(block, b"", False)
    return encode_frame(FrameType.REQUEST, flags, encode_varint(stream_id) + tail)


OP_BLOCK = b"\x00\x03:op\x01x"  # literal without indexing: ":op" = "x"


def refuse(connection: Connection, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        connection.receive_data(data)
    assert connection.closed
    return info.value


# ------------------------------------------------------------------------- HPACK


def test_two_size_updates_open_a_block() -> None:
    pair = open_pair()
    # Shrink to 0 (table emptied), then back to 4096: the most RFC 7541 4.2 allows.
    block = b"\x20" + b"\x3f\xe1\x1f" + OP_BLOCK
    assert pair.server.receive_data(request_frame(block)) == [RequestReceived(1, "x", (), b"")]


@pytest.mark.parametrize("updates", [MAX_SIZE_UPDATES + 1, 60_000])
def test_more_than_two_size_updates_are_refused_unapplied(updates: int) -> None:
    pair = open_pair()
    decoder = pair.server._decoder
    assert isinstance(decoder, HeaderDecoder)
    decoder.table_entries()  # the hpack state exists: its table counts every resize
    table = decoder._table
    assert table is not None
    before = table.version
    error = refuse(pair.server, request_frame(b"\x20" * updates + OP_BLOCK))
    assert error.code is ErrorCode.HEADER_ERROR
    assert "more than 2 dynamic table size updates" in error.message
    # Refused by a scan of the block's opening bytes: hpack applied none of them.
    assert table.version == before


def test_size_update_after_a_field_is_a_header_error() -> None:
    pair = open_pair()
    error = refuse(pair.server, request_frame(OP_BLOCK + b"\x20"))
    assert error.code is ErrorCode.HEADER_ERROR


def _huffman_zeros(octets: int) -> bytes:
    """A Huffman string of ``octets`` "0" characters (5 bits each; octets % 8 == 0)."""
    length = bytearray(encode_integer(octets * 5 // 8, 7))
    length[0] |= 0x80
    return bytes(length) + b"\x00" * (octets * 5 // 8)


def test_block_longer_than_any_list_within_the_limit_is_refused_unread() -> None:
    pair = open_pair()
    decoder = pair.server._decoder
    assert isinstance(decoder, HeaderDecoder)
    entries = decoder.table_entries()
    limit = pair.server.limits.max_header_list_size
    # A field hpack would insert into the table, then one Huffman string of
    # ~200,000 octets: decoding it first cost ~45 ms before the list size check.
    indexed = b"\x40\x01a\x01b"
    block = OP_BLOCK + indexed + b"\x00\x01z" + _huffman_zeros(200_000)
    assert len(block) > 4 * limit + 12
    error = refuse(pair.server, request_frame(block))
    assert error.code is ErrorCode.HEADER_LIST_TOO_LARGE
    assert "cannot decode to a header list within" in error.message
    assert decoder.table_entries() == entries


_WORST_TEXT = st.text(
    alphabet=st.sampled_from(["\n", "\r", "\x16", "\x7f", "é", "字", "a", "~", "\x00"]),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(_WORST_TEXT.filter(bool), _WORST_TEXT), min_size=1, max_size=60))
def test_every_block_of_a_list_within_the_limit_passes_the_length_rule(
    fields: list[tuple[str, str]],
) -> None:
    # hpack Huffman-codes every string even where that is longer (up to 30 bits
    # an octet): the longest honest encoding there is, and still within the rule.
    size = sum(len(n.encode()) + len(v.encode()) + 32 for n, v in fields)
    limit = max(256, size)
    always_huffman = bytes(hpack.Encoder().encode(fields, huffman=True))
    ours = HeaderEncoder(0).encode(fields)
    for block in (always_huffman, ours):
        assert len(block) <= 4 * limit + 12
        decoded = HeaderDecoder(0, 4096, limit).decode(block)
        assert list(decoded) == fields


# ---------------------------------------------------------------------- SETTINGS


def test_sixteen_unknown_settings_are_ignored() -> None:
    pair = open_pair()
    payload = b"".join(bytes([0x40 + i, 1]) for i in range(m.MAX_SETTINGS_PAIRS))
    (event,) = pair.server.receive_data(encode_frame(FrameType.SETTINGS, 0, payload))
    assert len(event.settings) == m.MAX_SETTINGS_PAIRS  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"".join(bytes([0x40 + i, 1]) for i in range(17)), "more than 16 pairs"),
        (b"\x05\x3c\x05\x78", "an id twice"),
        (b"\x7f\x00" * (MAX_FRAME // 2 - 8), "longer than 16 pairs can be"),
    ],
)
def test_settings_beyond_the_frame_rules_are_refused(payload: bytes, why: str) -> None:
    pair = open_pair()
    error = refuse(pair.server, encode_frame(FrameType.SETTINGS, 0, payload))
    assert error.code is ErrorCode.FIELD_ERROR and why in error.message


def test_send_settings_refuses_what_the_peer_would_refuse() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError, match="twice"):
        pair.client.send_settings([(5, 60), (5, 120)])
    with pytest.raises(LocalProtocolError, match="more than 16"):
        pair.client.send_settings([(100 + i, 0) for i in range(17)])
    assert pair.client.data_to_send() == b""


# ------------------------------------------------------------------------- HELLO


def _hello_payload(extra: bytes) -> bytes:
    return bytes.fromhex("0201") + bytes.fromhex("0503") + b"dev" + extra


def test_unknown_hello_fields_up_to_the_cap_are_skipped() -> None:
    server = Connection(Role.SERVER)
    payload = _hello_payload(b"\xfe\x01\x00" * MAX_UNKNOWN_FIELDS)
    (event,) = server.receive_data(encode_frame(FrameType.HELLO, 0, payload))
    assert isinstance(event, HelloReceived) and event.hello.device_id == "dev"


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (b"\xfe\x01\x00" * (MAX_UNKNOWN_FIELDS + 1), "more than 32 fields of unknown numbers"),
        (
            b"".join(b"\x0c" + bytes([i]) for i in range(1, MAX_HELLO_DICTIONARIES + 2)),
            "dictionary appears more than 32 times",
        ),
    ],
)
def test_hello_fields_beyond_the_caps_are_refused(extra: bytes, why: str) -> None:
    server = Connection(Role.SERVER)
    error = refuse(server, encode_frame(FrameType.HELLO, 0, _hello_payload(extra)))
    assert error.code is ErrorCode.FIELD_ERROR and why in error.message


def test_hello_over_max_hello_size_is_refused_from_its_length() -> None:
    server = Connection(Role.SERVER)
    header_only = bytes([FrameType.HELLO << 4]) + encode_varint(Limits().max_hello_size + 1)
    error = refuse(server, header_only)
    assert error.code is ErrorCode.FRAME_SIZE_ERROR
    assert connection_error(server.data_to_send()).code == ErrorCode.FRAME_SIZE_ERROR


def test_max_hello_size_binds_the_first_frame_only() -> None:
    # A 100 KiB request pipelined behind the HELLO, in the same read, is read
    # under max_frame_size: the HELLO lifted the first frame's limit.
    register_default_presets()
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.send_hello(Hello(device_id="d", preset_id=1))
    body = bytes(range(256)) * 400
    client.send_request("upload", body)
    events = server.receive_data(client.data_to_send())
    assert isinstance(events[0], HelloReceived)
    assert events[1] == RequestReceived(1, "upload", (), body)


def test_send_hello_lists_at_most_32_dictionaries() -> None:
    client = Connection(Role.CLIENT)
    hello = Hello(device_id="d", dictionaries=tuple(range(1, MAX_HELLO_DICTIONARIES + 2)))
    with pytest.raises(LocalProtocolError, match="at most 32 dictionaries"):
        client.send_hello(hello)


# --------------------------------------------------------------- bounded reading


def test_receive_frames_processes_at_most_n_frames_per_call() -> None:
    pair = open_pair()
    pings = b"".join(encode_frame(FrameType.PING, 0, bytes([i])) for i in range(5))
    server = pair.server
    events, more = server.receive_frames(pings + b"\x60", 2)  # and half a sixth PING
    assert events == [PingReceived(b"\x00"), PingReceived(b"\x01")] and more
    events, more = server.receive_frames(b"", 2)
    assert events == [PingReceived(b"\x02"), PingReceived(b"\x03")] and more
    events, more = server.receive_frames(b"", 2)
    assert events == [PingReceived(b"\x04")] and not more
    events, more = server.receive_frames(b"\x01\x05", 2)
    assert events == [PingReceived(b"\x05")] and not more


def test_receive_frames_reads_the_hello_alone_first() -> None:
    register_default_presets()
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.send_hello(Hello(device_id="d", preset_id=1))
    client.send_request("a")
    client.send_request("b")
    events, more = server.receive_frames(client.data_to_send(), 1)
    assert [type(e) for e in events] == [HelloReceived] and more
    assert server.state is State.AUTHENTICATING
    events, more = server.receive_frames(b"", 5)
    assert [e.op for e in events] == ["a", "b"] and not more  # type: ignore[attr-defined]


def test_hello_then_error_zero_in_one_read() -> None:
    register_default_presets()
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.send_hello(Hello(device_id="d", preset_id=1))
    data = client.data_to_send() + encode_frame(
        FrameType.ERROR, 0, m.encode_error(0, ErrorCode.CANCELLED, 0, "bye")
    )
    events = server.receive_data(data)
    assert [type(e) for e in events] == [HelloReceived, ConnectionErrorReceived]
    assert server.closed
    with pytest.raises(LocalProtocolError):
        server.accept()  # what the gateway did with such a HELLO, before checking


# --------------------------------------------------------- answers over the limit


def test_answer_over_the_peers_limit_leaves_the_stream_for_an_error() -> None:
    pair = open_pair(client_limits=Limits(max_body_size=1000))
    for _ in range(100):
        stream = pair.client.send_request("big.answer")
        pair.client_to_server()
        with pytest.raises(MessageTooLarge):
            pair.server.send_response(stream, b"x" * 1001)
        assert stream in pair.server.open_remote_streams
        assert pair.server.send_error(stream, ErrorCode.UPSTREAM_ERROR, "too large")
        (event,) = pair.server_to_client()
        assert isinstance(event, StreamErrorReceived) and event.stream_id == stream
    assert not pair.client.open_local_streams and not pair.server.open_remote_streams
