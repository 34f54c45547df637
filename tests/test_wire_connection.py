"""Connection conversations: handshake, streams, pushes, control frames, shutdown, errors."""

from __future__ import annotations

import random

import pytest
from helpers import (
    TEST_DICT_ID,
    ConnectionPair,
    connection_error,
    make_codec,
    parse_frames,
    sample_json,
    trained_dictionary,
)

from channel.wire import (
    AckReceived,
    BodyCodec,
    Connection,
    ConnectionErrorReceived,
    Dictionary,
    DictionaryReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    Hello,
    HelloAccepted,
    HelloAck,
    HelloReceived,
    Limits,
    LocalProtocolError,
    MessageTooLarge,
    PingReceived,
    PongReceived,
    ProtocolError,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    Setting,
    SettingsAcknowledged,
    SettingsReceived,
    State,
    StreamCancelled,
    StreamErrorReceived,
    StreamsExhausted,
)
from channel.wire.frames import (
    FLAG_DICT_LAST,
    FLAG_HEADERS,
    FLAG_ZSTD,
    FrameType,
    encode_frame,
)
from channel.wire.hello import encode_hello, encode_hello_ack
from channel.wire.messages import decode_error, encode_dict_chunk, encode_settings
from channel.wire.varint import decode_varint, encode_varint


def open_pair(
    *,
    client_limits: Limits | None = None,
    server_limits: Limits | None = None,
    hello: Hello | None = None,
) -> ConnectionPair:
    pair = ConnectionPair(client_limits=client_limits, server_limits=server_limits)
    pair.handshake(hello or Hello(device_id="device-1"))
    return pair


def expect_protocol_error(conn: Connection, data: bytes, code: ErrorCode) -> None:
    """Feeding ``data`` raises ``code`` and queues ERROR(stream 0, code)."""
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(data)
    assert info.value.code is code, info.value
    assert connection_error(conn.data_to_send()).code == code
    assert conn.closed


def feed_in_chunks(conn: Connection, data: bytes, rng: random.Random) -> list[Event]:
    events: list[Event] = []
    position = 0
    while position < len(data):
        step = rng.randrange(1, 40)
        events += conn.receive_data(data[position : position + step])
        position += step
    return events


# ------------------------------------------------------------ the whole conversation


def test_full_conversation() -> None:
    pair = ConnectionPair(
        client_codec=make_codec(), server_codec=make_codec(), server_table_cap=8192
    )
    client, server = pair.client, pair.server

    # HELLO with two requests pipelined behind it.
    client.send_hello(
        Hello(device_id="phone-42", app_id="com.example", dictionaries=(TEST_DICT_ID,), preset_id=1)
    )
    assert client.state is State.HELLO_SENT
    s1 = client.send_request("feed.list", b'{"page":1}', [("locale", "en-US")])
    s3 = client.send_request("profile.get", b"", [("locale", "en-US"), ("x-app", "1.2")])
    assert (s1, s3) == (1, 3)
    events = pair.client_to_server()
    assert [type(e) for e in events] == [HelloReceived, RequestReceived, RequestReceived]
    hello_event = events[0]
    assert isinstance(hello_event, HelloReceived)
    assert hello_event.hello.device_id == "phone-42"
    assert events[1] == RequestReceived(1, "feed.list", (("locale", "en-US"),), b'{"page":1}')
    assert events[2] == RequestReceived(
        3, "profile.get", (("locale", "en-US"), ("x-app", "1.2")), b""
    )
    assert server.state is State.AUTHENTICATING
    assert server.open_remote_streams == {1, 3}

    # Accept, then answer both.
    ack = server.accept(session_id=b"sess-1", heartbeat_s=30, server_time_ms=1_700_000_000_000)
    assert ack.newest_dictionary == TEST_DICT_ID
    (accepted,) = pair.server_to_client()
    assert accepted == HelloAccepted(ack)
    assert client.state is State.OPEN and server.state is State.OPEN
    feed = sample_json(random.Random(1), 1) * 3
    assert server.send_response(1, feed, [("content-type", "application/json")])
    assert server.send_response(3, b"", [("x-cache", "miss")], status=ErrorCode.NOT_FOUND)
    assert pair.server_to_client() == [
        ResponseReceived(1, 0, (("content-type", "application/json"),), feed),
        ResponseReceived(3, ErrorCode.NOT_FOUND, (("x-cache", "miss"),), b""),
    ]
    assert client.open_local_streams == frozenset()
    assert not server.send_response(1, b"again")  # already answered

    # Pushes, compressed with the shared dictionary, then one batch ACK.
    bodies = [sample_json(random.Random(i), i) for i in range(3)]
    ids = [
        server.send_push(f"m-{i}".encode(), body, [("collapse-key", "inbox")])
        for i, body in enumerate(bodies)
    ]
    assert ids == [1, 2, 3]
    push_bytes = server.data_to_send()
    frames = parse_frames(push_bytes)
    assert all(f.frame_type is FrameType.PUSH and f.flags & FLAG_ZSTD for f in frames)
    events = client.receive_data(push_bytes)
    assert events == [
        PushReceived(i + 1, f"m-{i}".encode(), (("collapse-key", "inbox"),), body)
        for i, body in enumerate(bodies)
    ]
    assert server.unacked_deliveries == {1, 2, 3}
    client.send_ack(1, 2, 3)
    ack_bytes = client.data_to_send()
    assert len(parse_frames(ack_bytes)) == 1
    assert server.receive_data(ack_bytes) == [AckReceived((1, 2, 3))]
    assert server.unacked_deliveries == frozenset()

    # A server-initiated request (even stream id) answered by the client.
    s2 = server.send_request("device.locate", b"", [("priority", "high")])
    assert s2 == 2
    assert pair.server_to_client() == [
        RequestReceived(2, "device.locate", (("priority", "high"),), b"")
    ]
    assert client.send_response(2, b'{"lat":1.5}', [("x-fix", "gps")])
    assert pair.client_to_server() == [ResponseReceived(2, 0, (("x-fix", "gps"),), b'{"lat":1.5}')]

    # PING / PONG both ways.
    client.send_ping(b"12345678")
    assert pair.client_to_server() == [PingReceived(b"12345678")]
    assert pair.server_to_client() == [PongReceived(b"12345678")]
    server.send_ping(b"")
    assert pair.server_to_client() == [PingReceived(b"")]
    assert pair.client_to_server() == [PongReceived(b"")]

    # SETTINGS applied by the receiver and acknowledged; the header table grows.
    settings = (
        (Setting.HEADER_TABLE_SIZE, 8192),
        (Setting.MAX_CONCURRENT_STREAMS, 10),
        (Setting.HEARTBEAT_S, 60),
    )
    client.send_settings(settings)
    assert pair.client_to_server() == [SettingsReceived(settings)]
    assert server.peer_max_concurrent_streams == 10
    assert pair.server_to_client() == [SettingsAcknowledged()]
    profile = (("x-profile", "p" * 5000),)  # fits only the grown table
    for delivery_id in (4, 5):
        assert server.send_push(b"profile", b"", profile) == delivery_id
        data = server.data_to_send()
        if delivery_id == 5:
            assert len(data) < 20  # the 5 KB header is now one index
        assert client.receive_data(data) == [PushReceived(delivery_id, b"profile", profile, b"")]

    # GOAWAY: an in-flight stream completes, one that crossed the GOAWAY is refused.
    s1 = client.send_request("cart.view")
    assert pair.client_to_server() == [RequestReceived(1, "cart.view", (), b"")]
    server.send_goaway(reconnect_after_ms=1000, alternate_endpoint="gw2:443", message="deploy")
    assert server.state is State.CLOSING and server.draining
    crossing = client.send_request("cart.add", b"item")
    assert crossing == 3
    assert pair.client_to_server() == []  # refused: REFUSED_STREAM queued
    assert pair.server_to_client() == [
        GoAwayReceived(ErrorCode.NO_ERROR, 1000, "gw2:443", "deploy"),
        StreamErrorReceived(3, ErrorCode.REFUSED_STREAM, 0, "draining: retry on a new connection"),
    ]
    assert client.state is State.CLOSING and client.draining
    with pytest.raises(LocalProtocolError):
        client.send_request("too.late")
    with pytest.raises(LocalProtocolError):
        server.send_request("too.late")
    assert server.send_response(1, b"cart")
    assert server.send_push(b"m-late", b"still delivered") == 6
    assert pair.server_to_client() == [
        ResponseReceived(1, 0, (), b"cart"),
        PushReceived(6, b"m-late", (), b"still delivered"),
    ]

    # ERROR on stream 0 ends it.
    server.close_with_error(ErrorCode.SHUTTING_DOWN, "bye", retry_after_ms=500)
    assert server.closed
    assert pair.server_to_client() == [ConnectionErrorReceived(ErrorCode.SHUTTING_DOWN, 500, "bye")]
    assert client.closed
    assert client.receive_data(encode_frame(FrameType.PING, 0, b"")) == []


def test_requests_pipelined_behind_hello_arrive_after_it_in_any_chunking() -> None:
    rng = random.Random(5)
    for _ in range(20):
        pair = ConnectionPair()
        pair.client.send_hello(Hello(device_id="d", preset_id=1))
        for i in range(5):
            pair.client.send_request(f"op.{i}", bytes([i]) * i, [("x-n", str(i))])
        events = feed_in_chunks(pair.server, pair.client.data_to_send(), rng)
        assert isinstance(events[0], HelloReceived)
        assert [e.stream_id for e in events[1:] if isinstance(e, RequestReceived)] == [
            1,
            3,
            5,
            7,
            9,
        ]
        assert [e.op for e in events[1:] if isinstance(e, RequestReceived)] == [
            f"op.{i}" for i in range(5)
        ]


def test_reject_sends_error_zero_with_an_auth_code() -> None:
    pair = ConnectionPair()
    pair.client.send_hello(Hello(device_id="d", token=b"expired"))
    pair.client.send_request("feed.list")
    pair.client_to_server()
    pair.server.reject(ErrorCode.AUTH_EXPIRED, "token expired", retry_after_ms=0)
    assert pair.server.closed
    data = pair.server.data_to_send()
    assert connection_error(data).code == ErrorCode.AUTH_EXPIRED
    assert pair.client.receive_data(data) == [
        ConnectionErrorReceived(ErrorCode.AUTH_EXPIRED, 0, "token expired")
    ]
    assert pair.client.closed


def test_accept_and_reject_are_server_only() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.reject(ErrorCode.AUTH_INVALID, "no")
    with pytest.raises(LocalProtocolError):
        client.accept()
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER).send_hello(Hello(device_id="d"))


def test_frames_after_error_zero_in_the_same_chunk_are_ignored() -> None:
    pair = open_pair()
    pair.server.close_with_error(ErrorCode.KICKED, "kicked")
    data = pair.server.data_to_send() + encode_frame(FrameType.PING, 0, b"x")
    events = pair.client.receive_data(data)
    assert events == [ConnectionErrorReceived(ErrorCode.KICKED, 0, "kicked")]
    assert pair.client.data_to_send() == b""  # no PONG


# ------------------------------------------------------------ streams


def test_stream_ids_lowest_free_and_not_reused_before_the_final_frame() -> None:
    pair = open_pair()
    client, server = pair.client, pair.server
    assert [client.send_request("op") for _ in range(3)] == [1, 3, 5]
    pair.client_to_server()
    server.send_response(3)
    pair.server_to_client()
    assert client.send_request("op") == 3  # lowest free id
    client.send_cancel(1)
    assert client.open_local_streams == {1, 3, 5}
    assert client.send_request("op") == 7  # 1 stays taken until the peer's final frame
    assert pair.client_to_server() == [
        RequestReceived(3, "op", (), b""),
        StreamCancelled(1),
        RequestReceived(7, "op", (), b""),
    ]
    assert not server.send_response(1, b"late")  # cancelled: nothing sent
    error_frames = parse_frames(server.data_to_send())
    assert len(error_frames) == 1
    error = decode_error(error_frames[0].payload)
    assert (error.stream_id, error.code) == (1, ErrorCode.CANCELLED)
    # The ERROR(CANCELLED) ends stream 1 silently on the client, freeing the id.
    assert client.receive_data(encode_frame(FrameType.ERROR, 0, error_frames[0].payload)) == []
    assert client.open_local_streams == {3, 5, 7}
    assert client.send_request("op") == 1


def test_cancel_crossing_the_response_is_silent_on_both_sides() -> None:
    pair = open_pair()
    stream = pair.client.send_request("slow.op")
    pair.client_to_server()
    assert pair.server.send_response(stream, b"done")
    response = pair.server.data_to_send()
    pair.client.send_cancel(stream)
    assert pair.client_to_server() == []  # CANCEL of an answered stream is ignored
    assert pair.server.data_to_send() == b""  # and produces no ERROR
    assert pair.client.receive_data(response) == []  # cancelled: no event
    assert pair.client.open_local_streams == frozenset()


def test_send_cancel_of_unknown_stream_does_nothing() -> None:
    pair = open_pair()
    pair.client.send_cancel(41)
    assert pair.client.data_to_send() == b""


def test_send_error_answers_a_stream() -> None:
    pair = open_pair()
    stream = pair.client.send_request("thing.get")
    pair.client_to_server()
    assert pair.server.send_error(stream, ErrorCode.RATE_LIMITED, "slow down", retry_after_ms=250)
    assert not pair.server.send_error(stream, ErrorCode.RATE_LIMITED)
    assert pair.server_to_client() == [
        StreamErrorReceived(stream, ErrorCode.RATE_LIMITED, 250, "slow down")
    ]


def test_max_concurrent_streams_refuses_the_extra_stream() -> None:
    pair = ConnectionPair(server_limits=Limits(max_concurrent_streams=2))
    pair.client.send_hello(Hello(device_id="d"))
    # Before HELLO_ACK the client does not know the limit yet: three go out.
    assert [pair.client.send_request("op") for _ in range(3)] == [1, 3, 5]
    events = pair.client_to_server()
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1, 3]
    pair.server.accept()
    events = pair.server_to_client()
    refused = events[0]
    assert isinstance(refused, StreamErrorReceived)
    assert (refused.stream_id, refused.code) == (5, ErrorCode.REFUSED_STREAM)
    assert isinstance(events[1], HelloAccepted)
    assert pair.client.peer_max_concurrent_streams == 2
    assert pair.client.open_local_streams == {1, 3}


def test_streams_exhausted_locally() -> None:
    pair = open_pair(server_limits=Limits(max_concurrent_streams=2))
    pair.client.send_request("a")
    pair.client.send_request("b")
    before = pair.client.data_to_send()
    with pytest.raises(StreamsExhausted):
        pair.client.send_request("c")
    assert issubclass(StreamsExhausted, LocalProtocolError)
    assert pair.client.data_to_send() == b""
    pair.server.receive_data(before)
    pair.server.send_response(1)
    pair.server_to_client()
    assert pair.client.send_request("c") == 1


def test_empty_op_is_refused_locally() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError):
        pair.client.send_request("")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (encode_varint(2), ErrorCode.STREAM_ID_ERROR),  # client REQUEST with the server's parity
        (encode_varint(0), ErrorCode.STREAM_ID_ERROR),
        (encode_varint(1), ErrorCode.FIELD_ERROR),  # no :op header
    ],
)
def test_bad_requests(payload: bytes, code: ErrorCode) -> None:
    pair = open_pair()
    expect_protocol_error(pair.server, encode_frame(FrameType.REQUEST, 0, payload), code)


def test_request_on_an_open_stream_id() -> None:
    pair = open_pair()
    pair.client.send_request("op")
    data = pair.client.data_to_send()
    pair.server.receive_data(data)
    expect_protocol_error(pair.server, data, ErrorCode.STREAM_ID_ERROR)


def test_response_for_a_stream_that_is_not_open() -> None:
    pair = open_pair()
    expect_protocol_error(
        pair.client, encode_frame(FrameType.RESPONSE, 0, b"\x01\x00body"), ErrorCode.STREAM_ID_ERROR
    )


# ------------------------------------------------------------ pushes and ACKs


def test_push_delivery_ids_must_increase() -> None:
    pair = open_pair()
    pair.server.send_push(b"m1", b"one")
    first = pair.server.data_to_send()
    pair.server.send_push(b"m2", b"two")
    second = pair.server.data_to_send()
    assert len(pair.client.receive_data(first + second)) == 2
    expect_protocol_error(pair.client, first, ErrorCode.PROTOCOL_ERROR)  # replayed id 1


def test_push_delivery_id_zero() -> None:
    pair = open_pair()
    push = encode_frame(FrameType.PUSH, 0, b"\x00\x01mbody")
    expect_protocol_error(pair.client, push, ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("message_id", [b"", b"m" * 65])
def test_push_message_id_length(message_id: bytes) -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError):
        pair.server.send_push(message_id, b"x")
    payload = b"\x01" + encode_varint(len(message_id)) + message_id + b"body"
    expect_protocol_error(
        pair.client, encode_frame(FrameType.PUSH, 0, payload), ErrorCode.FIELD_ERROR
    )


def test_push_is_server_only_and_needs_an_open_connection() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError):
        pair.client.send_push(b"m", b"x")
    with pytest.raises(LocalProtocolError):
        pair.server.send_ack(1)
    server = Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.send_push(b"m", b"x")


def test_ack_of_unknown_ids_is_ignored() -> None:
    pair = open_pair()
    assert pair.server.send_push(b"m1", b"x") == 1
    pair.server_to_client()
    pair.client.send_ack(99)
    assert pair.client_to_server() == []
    pair.client.send_ack(1, 99, 1)
    assert pair.client_to_server() == [AckReceived((1,))]  # each delivery reported once
    pair.client.send_ack(1)
    assert pair.client_to_server() == []  # already acknowledged
    assert pair.server.unacked_deliveries == frozenset()


def test_ack_batches_split_at_the_limit() -> None:
    pair = open_pair(client_limits=Limits(max_acks_per_frame=4))
    for i in range(10):
        pair.server.send_push(f"m{i}".encode(), b"x")
    pair.server_to_client()
    pair.client.send_ack(*range(1, 11))
    data = pair.client.data_to_send()
    assert len(parse_frames(data)) == 3
    events = pair.server.receive_data(data)
    assert [e.delivery_ids for e in events if isinstance(e, AckReceived)] == [
        (1, 2, 3, 4),
        (5, 6, 7, 8),
        (9, 10),
    ]


def test_empty_ack_is_a_field_error() -> None:
    pair = open_pair()
    expect_protocol_error(pair.server, encode_frame(FrameType.ACK, 0, b""), ErrorCode.FIELD_ERROR)


# ------------------------------------------------------------ dictionaries


def _dict_pair(max_frame_size: int = 1024) -> tuple[ConnectionPair, Dictionary]:
    dictionary = trained_dictionary()
    pair = ConnectionPair(
        server_codec=make_codec([dictionary]),
        client_codec=BodyCodec(),
        client_limits=Limits(max_frame_size=max_frame_size),
    )
    pair.handshake(Hello(device_id="d"))
    assert pair.server.outgoing_dictionary == 0  # the client holds no dictionary yet
    return pair, dictionary


def test_dictionary_delivery_in_chunks_then_compressed_pushes() -> None:
    pair, dictionary = _dict_pair()
    pair.server.send_dictionary(dictionary)
    data = pair.server.data_to_send()
    frames = parse_frames(data)
    assert len(frames) >= 4  # 4 KiB dictionary, 1 KiB peer frames
    assert all(f.frame_type is FrameType.DICT for f in frames)
    assert [bool(f.flags & FLAG_DICT_LAST) for f in frames] == [False] * (len(frames) - 1) + [True]
    assert all(len(f.payload) <= 1024 for f in frames)
    events = feed_in_chunks(pair.client, data, random.Random(2))
    assert events == [DictionaryReceived(dictionary)]
    assert TEST_DICT_ID in pair.client.body_codec.dictionaries
    assert pair.client.outgoing_dictionary == TEST_DICT_ID

    body = sample_json(random.Random(9), 9)
    pair.server.send_push(b"news-1", body)
    push_bytes = pair.server.data_to_send()
    (push,) = parse_frames(push_bytes)
    assert push.flags & FLAG_ZSTD
    # delivery id, message id, then the body's dictionary id.
    _, offset = decode_varint(push.payload)
    length, offset = decode_varint(push.payload, offset)
    dict_id, _ = decode_varint(push.payload, offset + length)
    assert dict_id == TEST_DICT_ID
    assert pair.client.receive_data(push_bytes) == [PushReceived(1, b"news-1", (), body)]

    # Requests now use the dictionary too, and the server decodes them.
    pair.client.send_request("report", body)
    assert pair.client_to_server() == [RequestReceived(1, "report", (), body)]


def test_dictionary_chunk_out_of_sequence() -> None:
    pair, dictionary = _dict_pair()
    pair.server.send_dictionary(dictionary)
    frames = parse_frames(pair.server.data_to_send())
    swapped = [frames[0], frames[2], frames[1], *frames[3:]]
    data = b"".join(encode_frame(f.frame_type, f.flags, f.payload) for f in swapped)
    expect_protocol_error(pair.client, data, ErrorCode.DICTIONARY_ERROR)


@pytest.mark.parametrize(
    "chunks",
    [
        [(0, 0, 10, 10, FLAG_DICT_LAST)],  # dictionary id 0
        [(9, 0, 0, 0, FLAG_DICT_LAST)],  # total size 0
        [(9, 20, 0, 10, 0), (8, 20, 10, 10, FLAG_DICT_LAST)],  # id changes mid-transfer
        [(9, 20, 0, 10, 0), (9, 30, 10, 10, FLAG_DICT_LAST)],  # total changes
        [(9, 20, 0, 10, FLAG_DICT_LAST)],  # last before the total
        [(9, 20, 5, 10, 0)],  # first chunk not at 0
        [(9, 20, 0, 30, FLAG_DICT_LAST)],  # more than the total
    ],
)
def test_bad_dictionary_transfers(chunks: list[tuple[int, int, int, int, int]]) -> None:
    pair = open_pair()
    data = b"".join(
        encode_frame(FrameType.DICT, flags, encode_dict_chunk(d, total, offset, b"k" * size))
        for d, total, offset, size, flags in chunks
    )
    expect_protocol_error(pair.client, data, ErrorCode.DICTIONARY_ERROR)


def test_dictionary_id_reused_with_other_content() -> None:
    dictionary = trained_dictionary()
    pair = ConnectionPair(client_codec=make_codec([dictionary]))
    pair.handshake()
    chunk = encode_dict_chunk(TEST_DICT_ID, 5, 0, b"other")
    expect_protocol_error(
        pair.client,
        encode_frame(FrameType.DICT, FLAG_DICT_LAST, chunk),
        ErrorCode.DICTIONARY_ERROR,
    )


def test_dictionary_negotiated_in_hello() -> None:
    codec_server = make_codec()
    codec_client = make_codec()
    pair = ConnectionPair(server_codec=codec_server, client_codec=codec_client)
    pair.handshake(Hello(device_id="d", dictionaries=(TEST_DICT_ID, 99)))
    assert pair.server.outgoing_dictionary == TEST_DICT_ID
    assert pair.client.outgoing_dictionary == TEST_DICT_ID
    body = sample_json(random.Random(3), 3)
    pair.client.send_request("op", body)
    assert pair.client_to_server() == [RequestReceived(1, "op", (), body)]


def test_request_with_unknown_dictionary() -> None:
    pair = open_pair()
    frame_body = BodyCodec().encode(b"abc" * 100, 0).data[1:]
    payload = b"\x01" + encode_varint(len(b"\x00\x03\x3aop\x01x")) + b"\x00\x03:op\x01x"
    data = encode_frame(
        FrameType.REQUEST, FLAG_HEADERS | FLAG_ZSTD, payload + encode_varint(42) + frame_body
    )
    expect_protocol_error(pair.server, data, ErrorCode.UNKNOWN_DICTIONARY)


# ------------------------------------------------------------ state errors


def _server_open() -> Connection:
    return open_pair().server


def _client_open() -> Connection:
    return open_pair().client


def _client_hello_sent() -> Connection:
    client = Connection(Role.CLIENT)
    client.send_hello(Hello(device_id="d"))
    client.data_to_send()
    return client


def _server_authenticating() -> Connection:
    server = Connection(Role.SERVER)
    server.receive_data(encode_frame(FrameType.HELLO, 0, encode_hello(Hello(device_id="d"))))
    return server


_PUSH = encode_frame(FrameType.PUSH, 0, b"\x01\x01mbody")
_REQUEST = encode_frame(FrameType.REQUEST, FLAG_HEADERS, b"\x01\x08\x00\x03:op\x01x")
_HELLO = encode_frame(FrameType.HELLO, 0, encode_hello(Hello(device_id="d")))
_HELLO_ACK = encode_frame(FrameType.HELLO_ACK, 0, encode_hello_ack(HelloAck()))
_PING = encode_frame(FrameType.PING, 0, b"")
_ACK = encode_frame(FrameType.ACK, 0, b"\x01")
_DICT = encode_frame(FrameType.DICT, FLAG_DICT_LAST, encode_dict_chunk(3, 1, 0, b"d"))
_GOAWAY = encode_frame(FrameType.GOAWAY, 0, b"\x00\x00\x00")


@pytest.mark.parametrize(
    ("make", "data"),
    [
        (lambda: Connection(Role.SERVER), _REQUEST),  # REQUEST before HELLO
        (lambda: Connection(Role.SERVER), _PING),  # anything but HELLO first
        (lambda: Connection(Role.SERVER), _HELLO_ACK),
        (lambda: Connection(Role.SERVER), _GOAWAY),
        (_server_authenticating, _HELLO),  # a second HELLO
        (_server_authenticating, _ACK),
        (_server_authenticating, _GOAWAY),
        (_server_open, _PUSH),  # PUSH to the server
        (_server_open, _HELLO),
        (_server_open, _HELLO_ACK),
        (_server_open, _DICT),
        (_client_hello_sent, _PUSH),  # before HELLO_ACK
        (_client_hello_sent, _REQUEST),
        (_client_hello_sent, _HELLO),
        (_client_open, _HELLO_ACK),  # a second HELLO_ACK
        (_client_open, _ACK),
        (_client_open, _HELLO),
        (lambda: Connection(Role.CLIENT), _HELLO_ACK),  # before sending HELLO
    ],
)
def test_frames_not_allowed_in_a_state(make: object, data: bytes) -> None:
    conn = make()  # type: ignore[operator]
    assert isinstance(conn, Connection)
    expect_protocol_error(conn, data, ErrorCode.STATE_ERROR)


def test_hello_ack_with_another_preset() -> None:
    client = _client_hello_sent()
    ack = HelloAck(preset_id=1)
    frame = encode_frame(FrameType.HELLO_ACK, 0, encode_hello_ack(ack))
    expect_protocol_error(client, frame, ErrorCode.UNKNOWN_PRESET)


def test_local_state_errors() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send_request("op")  # before HELLO
    with pytest.raises(LocalProtocolError):
        client.send_goaway()
    client.send_hello(Hello(device_id="d"))
    with pytest.raises(LocalProtocolError):
        client.send_hello(Hello(device_id="d"))
    server = _server_authenticating()
    with pytest.raises(LocalProtocolError):
        server.send_response(1)  # not accepted yet
    with pytest.raises(LocalProtocolError):
        server.send_request("op")


def test_ping_payload_limit() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError):
        pair.client.send_ping(b"123456789")
    expect_protocol_error(
        pair.server, encode_frame(FrameType.PING, 0, b"123456789"), ErrorCode.FIELD_ERROR
    )


@pytest.mark.parametrize(
    "settings",
    [
        [(Setting.HEADER_TABLE_SIZE, 4095)],
        [(Setting.MAX_FRAME_SIZE, 1023)],
        [(Setting.MAX_CONCURRENT_STREAMS, 0)],
    ],
)
def test_bad_settings(settings: list[tuple[int, int]]) -> None:
    """A peer that sends invalid SETTINGS values (ours refuse to, see below) is cut off."""
    pair = open_pair()
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(
            encode_frame(FrameType.SETTINGS, 0, encode_settings(tuple(settings)))
        )
    assert info.value.code is ErrorCode.FIELD_ERROR


def test_settings_ack_must_be_empty_and_unknown_settings_are_ignored() -> None:
    pair = open_pair()
    pair.client.send_settings([(77, 5), (Setting.MAX_BODY_SIZE, 4096)])
    assert pair.client_to_server() == [SettingsReceived(((77, 5), (Setting.MAX_BODY_SIZE, 4096)))]
    assert pair.server.peer_max_body_size == 4096
    expect_protocol_error(
        pair.server, encode_frame(FrameType.SETTINGS, 1, b"\x01"), ErrorCode.FIELD_ERROR
    )


def test_settings_max_frame_size_is_used_for_dictionary_chunks() -> None:
    dictionary = trained_dictionary()
    pair = ConnectionPair(server_codec=make_codec([dictionary]))
    pair.handshake()
    pair.client.send_settings([(Setting.MAX_FRAME_SIZE, 1500)])
    pair.client_to_server()
    pair.server_to_client()
    pair.server.send_dictionary(dictionary)
    frames = parse_frames(pair.server.data_to_send())
    assert len(frames) > 1 and all(len(f.payload) <= 1500 for f in frames)


# ------------------------------------------------------------ GOAWAY details


def test_client_goaway_stops_server_requests_but_not_responses() -> None:
    pair = open_pair()
    stream = pair.client.send_request("op")
    pair.client_to_server()
    pair.client.send_goaway(ErrorCode.NO_ERROR, message="app backgrounded")
    assert pair.client_to_server() == [GoAwayReceived(0, 0, "", "app backgrounded")]
    with pytest.raises(LocalProtocolError):
        pair.server.send_request("op")
    pair.server.send_response(stream, b"ok")
    assert pair.server_to_client() == [ResponseReceived(stream, 0, (), b"ok")]


def test_second_goaway_is_allowed() -> None:
    pair = open_pair()
    pair.server.send_goaway(ErrorCode.SHUTTING_DOWN)
    pair.server.send_goaway(ErrorCode.SHUTTING_DOWN, reconnect_after_ms=10)
    assert [type(e) for e in pair.server_to_client()] == [GoAwayReceived, GoAwayReceived]


def test_error_on_stream_zero_from_the_client() -> None:
    pair = open_pair()
    pair.client.close_with_error(ErrorCode.INTERNAL_ERROR, "oops")
    pair.client.close_with_error(ErrorCode.INTERNAL_ERROR, "twice")  # no second frame
    assert pair.client_to_server() == [ConnectionErrorReceived(ErrorCode.INTERNAL_ERROR, 0, "oops")]
    assert pair.server.closed


# ------------------------------------------------------------ prepared pushes


def _prepared_targets() -> tuple[BodyCodec, list[ConnectionPair]]:
    """Three connections with different HPACK histories; two hold the dictionary."""
    server_codec = make_codec()
    setups = [
        (0, (TEST_DICT_ID,), 0),
        (1, (TEST_DICT_ID,), 4),
        (1, (), 2),
    ]
    pairs: list[ConnectionPair] = []
    for preset_id, dictionaries, history in setups:
        pair = ConnectionPair(
            server_codec=server_codec,
            client_codec=make_codec() if dictionaries else BodyCodec(),
        )
        pair.handshake(Hello(device_id="d", preset_id=preset_id, dictionaries=dictionaries))
        for i in range(history):
            pair.server.send_push(
                f"warm-{i}".encode(),
                b"warm up",
                [("x-thing", f"v{i}" * 30), ("priority", "normal"), ("collapse-key", f"k{i}")],
            )
        pair.server_to_client()
        pairs.append(pair)
    return server_codec, pairs


def test_prepared_push_decodes_on_connections_in_different_states() -> None:
    _, pairs = _prepared_targets()
    body = sample_json(random.Random(11), 11)
    headers = (
        ("collapse-key", "news"),
        ("priority", "high"),
        ("x-campaign", "spring"),
        ("cookie", "c=1"),
    )
    prepared = pairs[0].server.prepare_push(b"bcast-1", body, headers)
    tails: list[bytes] = []
    for pair in pairs:
        tables = pair.client._decoder.table_entries()  # type: ignore[union-attr]
        delivery_id = pair.server.send_prepared_push(prepared)
        data = pair.server.data_to_send()
        (frame,) = parse_frames(data)
        assert frame.frame_type is FrameType.PUSH
        decoded_id, offset = decode_varint(frame.payload)
        assert decoded_id == delivery_id
        tails.append(frame.payload[offset:])
        assert pair.client.receive_data(data) == [
            PushReceived(delivery_id, b"bcast-1", headers, body)
        ]
        # The context-free block left the client's table as it was.
        assert pair.client._decoder.table_entries() == tables  # type: ignore[union-attr]
    assert len({pair.server.send_push(b"after", b"x") for pair in pairs}) >= 1
    # Same dictionary, same bytes after the delivery id; no dictionary, other bytes.
    assert tails[0] == tails[1]
    assert tails[2] != tails[0]
    # And the regular encoders still work afterwards.
    for pair in pairs:
        (event,) = pair.server_to_client()
        assert isinstance(event, PushReceived) and event.body == b"x"


def announce_max_body_size(pair: ConnectionPair, size: int) -> None:
    """The client tells the server its body limit (HELLO has no field for it)."""
    pair.client.send_settings([(Setting.MAX_BODY_SIZE, size)])
    pair.client_to_server()
    assert pair.server_to_client() == [SettingsAcknowledged()]
    assert pair.server.peer_max_body_size == size


def test_prepared_push_body_limit() -> None:
    pair = open_pair()
    announce_max_body_size(pair, 1000)
    prepared = pair.server.prepare_push(b"big", b"b" * 1001)
    with pytest.raises(MessageTooLarge):
        pair.server.send_prepared_push(prepared)
    assert pair.server.data_to_send() == b""
    assert pair.server.send_prepared_push(pair.server.prepare_push(b"ok", b"b" * 1000)) == 1


# ------------------------------------------------------------ MessageTooLarge


def test_message_too_large_leaves_hpack_state_untouched() -> None:
    pair = open_pair(server_limits=Limits(max_frame_size=1024, max_body_size=4096))
    client = pair.client
    assert client.peer_max_frame_size == 1024 and client.peer_max_body_size == 4096
    table = client._encoder.table_entries()  # type: ignore[union-attr]
    noise = random.Random(4).randbytes(1500)
    with pytest.raises(MessageTooLarge):
        client.send_request("upload", noise, [("x-new-header", "fresh value")])
    with pytest.raises(MessageTooLarge):
        client.send_request("upload", b"", [("x-new-header", "v" * 1100)])
    with pytest.raises(MessageTooLarge):
        client.send_request("upload", b"z" * 4097, [("x-new-header", "fresh value")])
    assert client._encoder.table_entries() == table  # type: ignore[union-attr]
    assert client.data_to_send() == b""
    assert client.open_local_streams == frozenset()
    # The peer's decoder is still in step.
    assert client.send_request("upload", b"small", [("x-new-header", "fresh value")]) == 1
    assert pair.client_to_server() == [
        RequestReceived(1, "upload", (("x-new-header", "fresh value"),), b"small")
    ]
    client.send_request("again", b"", [("x-new-header", "fresh value")])
    assert pair.client_to_server() == [
        RequestReceived(3, "again", (("x-new-header", "fresh value"),), b"")
    ]


def test_message_too_large_for_a_push() -> None:
    pair = open_pair()
    announce_max_body_size(pair, 2048)
    with pytest.raises(MessageTooLarge):
        pair.server.send_push(b"m", b"p" * 2049)
    assert pair.server.data_to_send() == b""
    assert pair.server.send_push(b"m", b"ok") >= 1
    (event,) = pair.server_to_client()
    assert isinstance(event, PushReceived) and event.body == b"ok"


# ------------------------------------------------------------ regressions (bugs found here)


def test_control_frames_wait_for_hello_ack() -> None:
    """PING / SETTINGS before HELLO_ACK would be answered before it (a PONG overtaking the
    HELLO_ACK was a STATE_ERROR on the client): the client may not send them, and a server
    still authenticating refuses them."""
    client = Connection(Role.CLIENT)
    client.send_hello(Hello(device_id="d"))
    with pytest.raises(LocalProtocolError):
        client.send_ping(b"p")
    with pytest.raises(LocalProtocolError):
        client.send_settings([(Setting.HEARTBEAT_S, 30)])
    for frame in (
        encode_frame(FrameType.PING, 0, b"p"),
        encode_frame(FrameType.SETTINGS, 0, encode_varint(Setting.HEARTBEAT_S) + b"\x1e"),
    ):
        expect_protocol_error(_server_authenticating(), frame, ErrorCode.STATE_ERROR)


def test_settings_grow_the_header_table() -> None:
    """SETTINGS_HEADER_TABLE_SIZE raises the sender's own decoder limit at once (it once
    stayed at the HELLO value, so the peer's grown encoder hit TABLE_SIZE_ERROR)."""
    pair = ConnectionPair(client_table_cap=16384, server_table_cap=16384)
    pair.handshake()
    pair.client.send_settings([(Setting.HEADER_TABLE_SIZE, 16384)])
    assert pair.client_to_server() == [SettingsReceived(((Setting.HEADER_TABLE_SIZE, 16384),))]
    assert pair.server_to_client() == [SettingsAcknowledged()]
    big = [("x-profile", "p" * 6000)]
    pair.server.send_push(b"m1", b"x", big)
    assert pair.server_to_client() == [PushReceived(1, b"m1", tuple(big), b"x")]
    pair.server.send_push(b"m2", b"x", big)
    data = pair.server.data_to_send()
    assert len(data) < 100  # the 6 KB header was indexed in the grown table
    assert pair.client.receive_data(data) == [PushReceived(2, b"m2", tuple(big), b"x")]


def test_prepared_push_frame_size_limit() -> None:
    """send_prepared_push checks the peer's max_frame_size (it once checked the body only)."""
    pair = open_pair()  # peer max_frame_size 256 KiB, max_body_size 1 MiB
    prepared = pair.server.prepare_push(b"big", random.Random(1).randbytes(300 * 1024))
    with pytest.raises(MessageTooLarge):
        pair.server.send_prepared_push(prepared)


@pytest.mark.parametrize("value", ["\\" * 800, "é" * 400, "\x01" * 500])
def test_header_bound_covers_huffman_expansion(value: str) -> None:
    """The pre-HPACK size check holds for strings Huffman would expand (up to 30 bits per
    octet) and for multi-byte UTF-8 (it once counted characters at 8 bits)."""
    pair = open_pair(server_limits=Limits(max_frame_size=1024))
    try:
        pair.client.send_request("op", b"", [("x", value)])
    except MessageTooLarge:
        return
    data = pair.client.data_to_send()
    (frame,) = parse_frames(data)
    assert len(frame.payload) <= 1024
    pair.client_to_server()


def test_dictionary_id_above_32_bits() -> None:
    """A DICT id above 2**32-1 is a DICTIONARY_ERROR (it once escaped as ValueError)."""
    pair = open_pair()
    chunk = encode_dict_chunk(2**40, 3, 0, b"abc")
    expect_protocol_error(
        pair.client, encode_frame(FrameType.DICT, FLAG_DICT_LAST, chunk), ErrorCode.DICTIONARY_ERROR
    )


def test_corrupt_delivered_dictionary() -> None:
    """A delivered dictionary that does not load is refused (it was once stored, and the next
    compressed PUSH raised zstandard.ZstdError out of receive_data)."""
    pair = open_pair()
    good = trained_dictionary().content
    corrupt = good[:8] + bytes(b ^ 0x5A for b in good[8:200]) + good[200:]
    dict_frame = encode_frame(
        FrameType.DICT, FLAG_DICT_LAST, encode_dict_chunk(9, len(corrupt), 0, corrupt)
    )
    zstd_frame = BodyCodec().encode(b"abc" * 100, 0).data[1:]
    push = encode_frame(FrameType.PUSH, FLAG_ZSTD, b"\x01\x01m" + encode_varint(9) + zstd_frame)
    with pytest.raises(ProtocolError) as info:
        pair.client.receive_data(dict_frame + push)
    assert info.value.code in {ErrorCode.DICTIONARY_ERROR, ErrorCode.COMPRESSION_ERROR}


def test_prepared_push_after_the_peer_shrinks_its_table() -> None:
    pair = ConnectionPair(client_limits=Limits(header_table_size=8192), server_table_cap=8192)
    pair.handshake()
    pair.server.send_push(b"m1", b"x", [("x-a", "1")])  # the server's encoder grows to 8192
    pair.server_to_client()
    pair.client.send_settings([(Setting.HEADER_TABLE_SIZE, 4096)])
    pair.client_to_server()
    assert pair.server_to_client() == [SettingsAcknowledged()]
    headers = (("x-campaign", "spring"),)
    pair.server.send_prepared_push(pair.server.prepare_push(b"b1", b"hello", headers))
    assert pair.server_to_client() == [PushReceived(2, b"b1", headers, b"hello")]


@pytest.mark.parametrize(
    "setting",
    [
        (Setting.MAX_HEADER_LIST_SIZE, 100),
        (Setting.HEADER_TABLE_SIZE, 100),
        (Setting.MAX_FRAME_SIZE, 500),
        (Setting.MAX_CONCURRENT_STREAMS, 0),
    ],
)
def test_send_settings_refuses_invalid_values_locally(setting: tuple[int, int]) -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError):
        pair.client.send_settings([setting])


def test_settings_ack_applies_a_lowered_header_list_limit() -> None:
    pair = open_pair()
    pair.client.send_settings([(Setting.MAX_HEADER_LIST_SIZE, 1024)])
    assert pair.client.limits.max_header_list_size == Limits().max_header_list_size
    pair.client_to_server()
    assert pair.server.peer_max_header_list_size == 1024
    with pytest.raises(MessageTooLarge):
        pair.server.send_push(b"m", b"x", [("x-big", "h" * 1000)])
    assert pair.server_to_client() == [SettingsAcknowledged()]
    assert pair.client.limits.max_header_list_size == 1024


def test_raised_header_list_limit_reaches_the_hpack_decoder() -> None:
    pair = open_pair(client_limits=Limits(max_header_list_size=1024))
    pair.client.send_settings([(Setting.MAX_HEADER_LIST_SIZE, 4096)])
    pair.client_to_server()
    assert pair.server.peer_max_header_list_size == 4096
    headers = (("x-big", "h" * 2000),)
    pair.server.send_push(b"m", b"x", headers)
    assert pair.server_to_client() == [SettingsAcknowledged(), PushReceived(1, b"m", headers, b"x")]


def test_prepared_push_header_list_limit() -> None:
    pair = open_pair(client_limits=Limits(max_header_list_size=1024))
    headers = (("x-big", "h" * 1000),)
    with pytest.raises(MessageTooLarge):
        pair.server.send_push(b"m", b"x", headers)
    with pytest.raises(MessageTooLarge):
        pair.server.send_prepared_push(pair.server.prepare_push(b"m", b"x", headers))


def test_lowered_setting_does_not_override_a_later_raise() -> None:
    pair = open_pair(client_limits=Limits(max_frame_size=16384))
    pair.client.send_settings([(Setting.MAX_FRAME_SIZE, 2048)])  # lower: after the ACK
    pair.client.send_settings([(Setting.MAX_FRAME_SIZE, 65536)])  # raise: at once
    pair.client_to_server()
    assert pair.server.peer_max_frame_size == 65536
    assert pair.server_to_client() == [SettingsAcknowledged(), SettingsAcknowledged()]
    assert pair.client.limits.max_frame_size == 65536
    body = random.Random(2).randbytes(30_000)
    pair.server.send_push(b"m", body)
    assert pair.server_to_client() == [PushReceived(1, b"m", (), body)]


def test_message_too_large_push_does_not_consume_a_delivery_id() -> None:
    pair = open_pair()
    announce_max_body_size(pair, 2048)
    with pytest.raises(MessageTooLarge):
        pair.server.send_push(b"m", b"p" * 2049)
    assert pair.server.unacked_deliveries == frozenset()
    assert pair.server.send_push(b"m", b"ok") == 1


def test_send_dictionary_not_in_the_servers_store() -> None:
    """The server holds what it delivers (it once switched to a dictionary its own codec
    lacked, and the next send_push raised UNKNOWN_DICTIONARY locally)."""
    pair = open_pair()
    dictionary = trained_dictionary(31)
    try:
        pair.server.send_dictionary(dictionary)
    except LocalProtocolError:
        return
    pair.server_to_client()
    body = sample_json(random.Random(0), 0)
    pair.server.send_push(b"m", body)
    assert pair.server_to_client() == [PushReceived(1, b"m", (), body)]


def test_send_hello_with_unknown_preset_leaves_the_connection_usable() -> None:
    """An unknown preset is refused before any state change (the client once stayed in
    HELLO_SENT with nothing queued)."""
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send_hello(Hello(device_id="d", preset_id=4242))
    assert client.state is State.IDLE
    client.send_hello(Hello(device_id="d"))
    assert client.send_request("op") == 1


def test_client_receive_limits_are_announced() -> None:
    """HELLO announces the client's receive limits (the server once assumed the defaults)."""
    pair = open_pair(client_limits=Limits(max_body_size=2048))
    assert pair.server.peer_max_body_size == 2048
