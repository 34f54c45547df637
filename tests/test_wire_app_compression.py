"""The wire core's per-app compression: preset-declared typed fields of every kind,
connection-scoped headers, paced dictionary delivery, per-app body usage (spec 9.3,
9.8, 9.11, 10.4, 10.5)."""

from __future__ import annotations

import pytest
from helpers import ConnectionPair, connection_error, make_codec, parse_frames, trained_dictionary

from channel.wire import (
    BodyCodec,
    Connection,
    DictionaryReceived,
    DictionaryStore,
    ErrorCode,
    Hello,
    Limits,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    RequestReceived,
    ResponseReceived,
    Role,
)
from channel.wire.body import RAW_BODY, BodyUsage
from channel.wire.connheaders import apply_connection_update, lift_connection_headers
from channel.wire.frames import FLAG_CONN, FLAG_TYPED, FrameType
from channel.wire.presets import Preset, register_preset
from channel.wire.typed import GENERIC_TYPED, TypedTable

APP_PRESET = Preset(
    31,
    "test-app",
    (("x-lang", "en"),),
    typed=(
        ("x-req", "uuid-upper"),
        ("x-when", "time-s"),
        ("x-trace", "hex"),
        ("x-trace", "echo"),
        ("x-n", "uint"),
        ("x-nonce", "base64url"),
    ),
    connection=("cookie", "user-agent"),
    never_indexed=("x-otp",),
)
register_preset(APP_PRESET)

COOKIE = ("cookie", "sid=abcdef0123456789; theme=dark")
AGENT = ("user-agent", "Demo/1.2 (Pixel 8; Android 14)")


def _pair(**kwargs: object) -> ConnectionPair:
    pair = ConnectionPair(**kwargs)  # type: ignore[arg-type]
    pair.handshake(Hello(device_id="d1", preset_id=APP_PRESET.preset_id, client_time_ms=10_000))
    return pair


def _request(pair: ConnectionPair, headers: list[tuple[str, str]]) -> RequestReceived:
    pair.client.send_request("feed.list", b"{}", headers)
    events = pair.client_to_server()
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    return events[0]


# ----------------------------------------------------------------- typed kinds


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        ("uuid-upper", "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"),
        ("hex-upper", "00FF"),
        ("time-ms", "1764000000123"),
        ("time-s", "1764000000"),
        ("time-s", "0"),
        ("uint", "72057594037927935"),
        ("base64url", "q83vEjRWeJq83vEjRWeJqw"),
        ("base64", "q83vEjRWeJq83vEjRWeJqw=="),
        ("base64", "QQ=="),
    ],
)
def test_each_kind_round_trips_its_canonical_values(kind: str, value: str) -> None:
    table = TypedTable((("x", kind),))
    rest, section = table.split([("x", value)], 1_764_000_000_500)
    assert rest == ()
    assert table.decode(section, 1_764_000_000_500, None, 1 << 20) == [("x", value)]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("uuid", "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"),
        ("hex-upper", "00ff"),
        ("time-s", "10000000000000"),
        ("uint", "72057594037927936"),
        ("uint", "007"),
        ("base64url", "q83vEjRWeJq83vEjRWeJqx"),  # unused bits set: not canonical
        ("base64", "QQ="),
        ("base64", "q83v+/"),
    ],
)
def test_non_canonical_values_go_through_hpack(kind: str, value: str) -> None:
    table = TypedTable((("x", kind),))
    assert table.split([("x", value)], 0) == ((("x", value),), b"")


@pytest.mark.parametrize(
    "fields",
    [
        (("x", "hexx"),),
        (("X-Up", "hex"),),
        (("x", "hex"), ("x", "uint")),
        (("x", "echo"), ("y", "echo")),
        tuple((f"x{i}", "hex") for i in range(65)),
    ],
)
def test_invalid_typed_lists_are_refused(fields: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError):
        TypedTable(fields)


def test_preset_file_round_trips_its_declarations() -> None:
    again = Preset.from_json(APP_PRESET.to_json())
    assert again == APP_PRESET
    generic = Preset.from_json('{"id": 40, "entries": [["a", "b"]]}')
    assert generic.typed == GENERIC_TYPED and generic.connection == ()
    with pytest.raises(ValueError, match="connection"):
        Preset.from_json('{"id": 40, "entries": [], "connection": ["Cookie"]}')


def test_app_preset_types_its_own_names_and_echoes_its_trace() -> None:
    pair = _pair()
    headers = [
        ("x-req", "7C9E6679-7425-40DE-944B-E07FC1F90AE7"),
        ("x-when", "11"),
        ("x-trace", "4bf92f3577b34da6"),
        ("x-n", "5"),
        ("trace-id", "aa" * 16),  # not typed under this preset
    ]
    pair.client.send_request("op", b"", headers)
    raw = pair.client.data_to_send()
    frame = parse_frames(raw)[0]
    assert frame.flags & FLAG_TYPED
    assert b"\xaa" * 16 not in frame.payload  # trace-id went through HPACK (Huffman)
    pair.server.receive_data(raw)
    pair.client.send_request("op2", b"", headers)
    request = pair.client_to_server()[0]
    assert isinstance(request, RequestReceived)
    assert sorted(request.headers) == sorted(headers)
    pair.server.send_response(request.stream_id, b"", [("x-trace", "4bf92f3577b34da6")])
    sent = pair.server.data_to_send()
    assert sent.endswith(b"\x01\x04")  # the typed section: one byte length, key 4 (echo)
    response = pair.client.receive_data(sent)
    assert isinstance(response[0], ResponseReceived)
    assert response[0].headers == (("x-trace", "4bf92f3577b34da6"),)


def test_preset_never_indexed_names_stay_out_of_the_table() -> None:
    pair = _pair()
    _request(pair, [("x-otp", "123456"), ("x-other", "v")])
    names = {name for name, _ in pair.server._decoder.table_entries()}  # type: ignore[union-attr]
    assert b"x-other" in names and b"x-otp" not in names


# ------------------------------------------------------- connection-scoped headers


def test_connection_headers_go_once_and_come_back_on_every_request() -> None:
    pair = _pair()
    first = [COOKIE, ("x-lang", "en"), AGENT]
    pair.client.send_request("feed.list", b"{}", first)
    raw = pair.client.data_to_send()
    assert parse_frames(raw)[0].flags & FLAG_CONN
    assert sorted(pair.server.receive_data(raw)[0].headers) == sorted(first)  # type: ignore[attr-defined]
    pair.client.send_request("feed.list", b"{}", first)
    raw = pair.client.data_to_send()
    assert not parse_frames(raw)[0].flags & FLAG_CONN
    assert COOKIE[1].encode() not in raw
    (request,) = pair.server.receive_data(raw)
    assert isinstance(request, RequestReceived)
    assert request.headers == (COOKIE, AGENT, ("x-lang", "en"))


def test_server_sees_exactly_the_request_headers() -> None:
    pair = _pair()
    sequence = [
        [COOKIE, ("x-lang", "en"), AGENT],
        [COOKIE, AGENT],
        [("cookie", "sid=changed"), AGENT, ("x-lang", "en")],
        [("x-lang", "en")],  # both connection headers gone: dropped
        [AGENT, AGENT],  # a name with two values
    ]
    for headers in sequence:
        request = _request(pair, headers)
        assert sorted(request.headers) == sorted(headers)
    assert pair.server.connection_headers == (AGENT, AGENT)
    assert pair.client.connection_headers == pair.server.connection_headers


def test_a_refused_request_still_updates_the_connection_headers() -> None:
    pair = _pair(server_limits=Limits(max_concurrent_streams=1))
    pair.client.send_request("slow", b"", [COOKIE])
    pair.client_to_server()
    pair.client.peer_max_concurrent_streams = 2  # the client ignores the limit on purpose
    pair.client.send_request("second", b"", [("cookie", "sid=new")])
    pair.client_to_server()
    assert pair.server.connection_headers == (("cookie", "sid=new"),)


def test_connection_headers_beyond_the_server_limit_are_refused_locally() -> None:
    pair = _pair()
    with pytest.raises(MessageTooLarge):
        pair.client.send_request("x", b"", [("cookie", "c" * 3000)])
    assert pair.client.connection_headers == ()
    request = _request(pair, [COOKIE])
    assert request.headers == (COOKIE,)


def test_explicit_connection_names_and_generic_presets() -> None:
    pair = ConnectionPair()
    pair.client = Connection(Role.CLIENT, connection_header_names=frozenset({"x-device"}))
    pair.handshake(Hello(device_id="d", preset_id=1))
    _request(pair, [("x-device", "pixel"), ("a", "b")])
    pair.client.send_request("y", b"", [("x-device", "pixel"), ("a", "b")])
    assert b"pixel" not in pair.client.data_to_send()


def test_server_role_never_sets_connection_headers() -> None:
    pair = _pair()
    pair.server.send_request("device.ping", b"", [COOKIE])
    frame = parse_frames(pair.server.data_to_send())[0]
    assert not frame.flags & FLAG_CONN


def test_conn_flag_from_a_server_is_a_protocol_error() -> None:
    pair = _pair()
    client = pair.client
    payload = bytes.fromhex("02") + b"\x04\x00\x01x\x01" + b"\x04\x00\x01y\x01"
    from channel.wire.frames import FLAG_HEADERS, encode_frame

    with pytest.raises(ProtocolError) as info:
        client.receive_data(encode_frame(FrameType.REQUEST, FLAG_HEADERS | FLAG_CONN, payload))
    assert info.value.code is ErrorCode.PROTOCOL_ERROR
    assert connection_error(client.data_to_send()).code == ErrorCode.PROTOCOL_ERROR


def test_lift_and_apply_agree() -> None:
    names = frozenset({"a", "b"})
    current = None
    for headers in ([("a", "1"), ("b", "2")], [("b", "3")], [("a", "1"), ("a", "2")], []):
        own, update, after = lift_connection_headers(headers, names, current)
        assert own == ()
        assert apply_connection_update(current, update) == after or not update
        current = after
        assert sorted(current or ()) == sorted(headers)


# --------------------------------------------------------- dictionary delivery


def test_dictionary_chunks_pace_the_delivery_and_switch_at_the_last() -> None:
    dictionary = trained_dictionary(12)
    server_codec = make_codec([dictionary])
    pair = ConnectionPair(server_codec=server_codec, client_codec=BodyCodec(DictionaryStore()))
    pair.client.send_hello(Hello(device_id="d"))
    pair.client_to_server()
    ack = pair.server.accept(newest_dictionary=12)
    assert ack.newest_dictionary == 12
    pair.server_to_client()
    offset = pair.server.send_dictionary_chunk(dictionary, 0, 1000)
    assert offset == 1000 and pair.server.outgoing_dictionary == 0
    assert pair.server_to_client() == []
    while offset < len(dictionary.content):
        offset = pair.server.send_dictionary_chunk(dictionary, offset, 1000)
    events = pair.server_to_client()
    assert isinstance(events[-1], DictionaryReceived)
    assert pair.server.outgoing_dictionary == 12 == pair.client.outgoing_dictionary
    with pytest.raises(LocalProtocolError):
        pair.server.send_dictionary_chunk(dictionary, len(dictionary.content))


def test_accept_refuses_to_announce_a_dictionary_it_does_not_hold() -> None:
    pair = ConnectionPair(server_codec=make_codec())
    pair.client.send_hello(Hello(device_id="d"))
    pair.client_to_server()
    with pytest.raises(LocalProtocolError):
        pair.server.accept(newest_dictionary=99)


def test_usage_counts_bodies_by_dictionary_for_the_devices_app() -> None:
    usage = {"a": BodyUsage()}
    codec = make_codec()
    pair = ConnectionPair(server_codec=codec, client_codec=make_codec())
    pair.server = Connection(Role.SERVER, body_codec=codec, usage_for_app=usage.get)
    pair.handshake(Hello(device_id="d", app_id="a", dictionaries=(7,)))
    body = b'{"type":"chat","text":"hello there","priority":"high","user":{"name":"bob"}}'
    request = _request(pair, [])
    pair.server.send_response(request.stream_id, body)
    pair.server.send_push(b"m1", b"tiny")
    pair.server_to_client()
    rows = usage["a"].by_dictionary
    assert rows[7][:3] == [1, len(body), rows[7][2]] and rows[7][2] < len(body)
    assert rows[RAW_BODY][0] == 1 and rows[RAW_BODY][3] == 1  # the push out, the request in
