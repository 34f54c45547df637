"""Regenerate ``protocol_spec/vectors/`` from the reference implementation.

Run ``.venv/bin/python scripts/generate_vectors.py`` after a deliberate wire
change (and change the spec in the same commit). The vectors are what other
implementations test against; ``tests/test_vectors.py`` checks that this
implementation still produces and accepts exactly these bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import zstandard

from channel.wire import BodyCodec, Connection, Dictionary, DictionaryStore, Limits, Role
from channel.wire.errors import ProtocolError
from channel.wire.frames import FLAG_CONN, FLAG_HEADERS, FrameType, encode_frame
from channel.wire.headers import encode_context_free
from channel.wire.presets import Preset, register_preset
from channel.wire.varint import encode_varint
from channel.wire.vectors import event_to_json, perform

VECTORS = Path(__file__).resolve().parent.parent / "protocol_spec" / "vectors"
TEST_DICT_FILE = "dict-7.mmtpdict"
TEST_DICT_ID = 7
TEST_PRESET_FILE = "preset-9.json"
TEST_PRESET_ID = 9

#: The vectors' application preset: typed fields of every kind, connection-scoped
#: headers and an extra never-indexed name. Frozen like the dictionary.
TEST_PRESET = Preset(
    TEST_PRESET_ID,
    "vectors-app",
    (
        ("x-app-lang", "en"),
        ("accept", "application/json"),
        (":op", "feed.list"),
    ),
    typed=(
        ("x-request-id", "uuid-upper"),
        ("x-client-ts", "time-s"),
        ("x-trace", "hex"),
        ("x-trace", "echo"),
        ("x-seq", "uint"),
        ("x-nonce", "base64url"),
        ("x-sig", "base64"),
        ("x-span", "hex-upper"),
        ("x-event-id", "uuid"),
        ("x-at", "time-ms"),
        ("traceparent", "traceparent"),
        ("server-timing", "template:app;dur={1}, db;dur={1}"),
        ("x-geo", "template:{5};{5};{0}"),
        ("set-cookie", "template:sid={s}; Path=/; Max-Age={0}; HttpOnly"),
    ),
    connection=("cookie", "user-agent", "x-device-model"),
    never_indexed=("x-session-hint",),
)


def test_preset() -> Preset:
    """The vectors' app preset, written once and registered in this process."""
    path = VECTORS / TEST_PRESET_FILE
    if not path.exists():
        path.write_text(TEST_PRESET.to_json(), encoding="utf-8")
    preset = Preset.from_json(path.read_text(encoding="utf-8"))
    register_preset(preset)
    return preset


def test_dictionary() -> Dictionary:
    """The vectors' dictionary: trained once from the synthetic corpus, then frozen."""
    path = VECTORS / TEST_DICT_FILE
    if path.exists():
        return Dictionary.from_file_bytes(path.read_bytes())
    from channel.corpus import generate_corpus, message_body_bytes

    samples = [message_body_bytes(m) for m in generate_corpus(300, seed=7)]
    trained = zstandard.train_dictionary(4096, samples, threads=1)
    dictionary = Dictionary(TEST_DICT_ID, trained.as_bytes())
    path.write_bytes(dictionary.to_file_bytes())
    return dictionary


HELLO = {
    "device_id": "a1b2c3d4-0000-4000-8000-00000000d001",
    "app_id": "com.example.wallet",
    "token": {"hex": "00" * 4 + "746f6b656e"},
    "preset_id": 1,
    "app_version": "8.12.3",
    "platform": "android",
    "client_time_ms": 1_764_000_000_000,
}
ACCEPT = {
    "session_id": {"hex": "5e5510000000000000000000000000aa"},
    "resume_ticket": {"hex": "7c" * 48},
    "heartbeat_s": 240,
    "server_time_ms": 1_764_000_000_000,
}
BALANCE_BODY = '{"userId":"2088031882206968","assetTypes":["BALANCE","YUEBAO"],"currency":"CNY"}'
BALANCE_REPLY = (
    '{"code":"SUCCESS","data":{"balance":"2881.25","currency":"CNY",'
    '"yuebao":{"amount":"66398.07","yesterdayProfit":"0.29"}}}'
)
PUSH_BODY = (
    '{"type":"payment.received","title":"收款到账","amount":"128.50","currency":"CNY",'
    '"payer":"小明","tradeNo":"2026112622001400000000000001"}'
)


def _req(op: str, trace: str, body: str = BALANCE_BODY) -> dict[str, Any]:
    return {
        "op": op,
        "headers": [
            ["trace-id", trace],
            ["ts", "1764000000123"],
            ["locale", "zh-CN"],
            ["content-type", "application/json"],
        ],
        "body": body,
    }


def _app_req(
    request_id: str,
    seq: int,
    *,
    cookie: str = "sid=Zm9vYmFy.8; theme=dark",
    user_agent: str | None = "Feedly/5.2.0 (iPhone15,2; iOS 17.5.1)",
    model: str | None = None,
) -> dict[str, Any]:
    headers = [
        ["x-request-id", request_id],
        ["x-client-ts", "1764000001"],
        ["x-trace", "4bf92f3577b34da6a3ce929d0e0e4736"],
        ["x-seq", str(seq)],
        ["x-nonce", "q83vEjRWeJq83vEjRWeJqw"],
        ["cookie", cookie],
        ["x-app-lang", "en"],
    ]
    if user_agent is not None:
        headers.append(["user-agent", user_agent])
    if model is not None:
        headers.append(["x-device-model", model])
    return {"op": "feed.list", "headers": headers, "body": '{"cursor":"c-00017","limit":20}'}


def _shaped_req(geo: str) -> dict[str, Any]:
    return {
        "op": "feed.list",
        "headers": [
            ["traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            ["x-geo", geo],
        ],
        "body": '{"cursor":"c-00018","limit":20}',
    }


def _shaped_reply(timing: str, cookie: str | None = None) -> dict[str, Any]:
    headers = [["server-timing", timing]]
    if cookie is not None:
        headers.append(["set-cookie", cookie])
    return {"stream_id": 1, "headers": headers, "body": "{}"}


def _app_reply(stream_id: int) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "headers": [
            ["x-trace", "4bf92f3577b34da6a3ce929d0e0e4736"],
            ["x-sig", "MEUCIQDxrzW2Wq8="],
            ["x-span", "00F067AA0BA902B7"],
            ["x-event-id", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"],
            ["x-at", "1764000000999"],
            ["x-session-hint", "warm"],
        ],
        "body": '{"items":[],"next":null}',
    }


CONVERSATIONS: list[dict[str, Any]] = [
    {
        "name": "full-conversation",
        "description": (
            "Handshake with preset 1 and two requests pipelined behind HELLO; responses; "
            "pushes compressed with dictionary 7 and a batch ACK; a server-initiated request "
            "answered by the device; PING/PONG; SETTINGS; CANCEL; GOAWAY. The HPACK dynamic "
            "tables evolve across frames (the second request reuses entries the first added)."
        ),
        "client_dictionaries": [TEST_DICT_ID],
        "server_dictionaries": [TEST_DICT_ID],
        "steps": [
            ("client", "send_hello", {**HELLO, "dictionaries": [TEST_DICT_ID]}),
            (
                "client",
                "send_request",
                _req("account.balance.get", "3da95cd2167b75dfb948f82a8317cba0"),
            ),
            (
                "client",
                "send_request",
                _req("account.balance.get", "3da95cd2167b75dfb948f82a8317cba1"),
            ),
            ("server", "accept", ACCEPT),
            (
                "server",
                "send_response",
                {
                    "stream_id": 1,
                    "headers": [
                        ["server-time", "1764000000200"],
                        ["content-type", "application/json"],
                    ],
                    "body": BALANCE_REPLY,
                },
            ),
            (
                "server",
                "send_response",
                {
                    "stream_id": 3,
                    "status": 0,
                    "headers": [
                        ["server-time", "1764000000201"],
                        ["content-type", "application/json"],
                    ],
                    "body": BALANCE_REPLY,
                },
            ),
            (
                "server",
                "send_push",
                {
                    "message_id": {"hex": "019a2b3c4d5e6f7081920001"},
                    "headers": [["priority", "high"], ["collapse-key", "balance"]],
                    "body": PUSH_BODY,
                },
            ),
            (
                "server",
                "send_push",
                {
                    "message_id": {"hex": "019a2b3c4d5e6f7081920002"},
                    "headers": [["priority", "high"], ["collapse-key", "balance"]],
                    "body": PUSH_BODY,
                },
            ),
            ("client", "send_ack", {"delivery_ids": [1, 2]}),
            (
                "server",
                "send_request",
                {
                    "op": "device.location.get",
                    "headers": [["trace-id", "aa0000000000000000000000000000bb"]],
                    "body": '{"accuracy":"coarse"}',
                },
            ),
            (
                "client",
                "send_response",
                {"stream_id": 2, "headers": [], "body": '{"lat":"31.23","lng":"121.47"}'},
            ),
            ("client", "send_ping", {"payload": {"hex": ""}}),
            ("server", "send_settings", {"settings": [[1, 8192], [5, 180]]}),
            ("client", "send_request", _req("bill.list.query", "3da95cd2167b75dfb948f82a8317cba2")),
            ("client", "send_cancel", {"stream_id": 1}),
            (
                "server",
                "send_goaway",
                {
                    "code": "SHUTTING_DOWN",
                    "reconnect_after_ms": 1500,
                    "alternate_endpoint": "gw2.example.com:443",
                    "message": "deploy",
                },
            ),
            ("client", "send_request", None),
        ],
    },
    {
        "name": "prepared-push-and-dictionary-delivery",
        "description": (
            "The server delivers dictionary 7 in DICT chunks (the client announced a small "
            "max_frame_size), then sends a broadcast push prepared once (context-free header "
            "block) compressed with the new dictionary."
        ),
        "client_dictionaries": [],
        "server_dictionaries": [TEST_DICT_ID],
        "client_limits": {"max_frame_size": 1024},
        "steps": [
            ("client", "send_hello", HELLO),
            ("server", "accept", ACCEPT),
            ("server", "send_dictionary", {"dict_id": TEST_DICT_ID}),
            (
                "server",
                "send_prepared_push",
                {
                    "message_id": {"hex": "019a2b3c4d5e6f7081920003"},
                    "headers": [["priority", "normal"], ["content-type", "application/json"]],
                    "body": PUSH_BODY,
                },
            ),
            ("client", "send_ack", {"delivery_ids": [1]}),
        ],
    },
    {
        "name": "app-preset-typed-and-connection-headers",
        "description": (
            "Preset 9 (vectors/preset-9.json): typed fields of every kind, the server's "
            "echo of x-trace, and connection-scoped headers: the first request sets cookie "
            "and user-agent in a connection header block, the second sends none, the third "
            "changes the cookie, drops user-agent and sets x-device-model; the server "
            "re-attaches them to every request."
        ),
        "client_dictionaries": [TEST_DICT_ID],
        "server_dictionaries": [TEST_DICT_ID],
        "steps": [
            (
                "client",
                "send_hello",
                {**HELLO, "preset_id": TEST_PRESET_ID, "dictionaries": [TEST_DICT_ID]},
            ),
            ("client", "send_request", _app_req("7C9E6679-7425-40DE-944B-E07FC1F90AE7", 1)),
            ("server", "accept", ACCEPT),
            ("server", "send_response", _app_reply(1)),
            ("client", "send_request", _app_req("0E1D5E0E-6C4F-4C0C-9B9D-1A7D1F7C0B01", 2)),
            ("server", "send_response", _app_reply(1)),
            (
                "client",
                "send_request",
                _app_req(
                    "0E1D5E0E-6C4F-4C0C-9B9D-1A7D1F7C0B02",
                    3,
                    cookie="sid=Zm9vYmFy.9; theme=dark",
                    user_agent=None,
                    model="Pixel 8",
                ),
            ),
        ],
    },
    {
        "name": "app-preset-traceparent-and-value-templates",
        "description": (
            "Preset 9 keys 11-14: a W3C traceparent travels as 26 bytes; x-geo and "
            "server-timing have templates with number holes, each a zigzag varint of the "
            "number times 10^fraction digits (negative numbers too); set-cookie has a text "
            "hole (an HPACK string literal, Huffman-coded here) and a number hole; a value "
            "that does not fit its template (server-timing without a fraction digit, a "
            "set-cookie with other attributes) goes through HPACK."
        ),
        "client_dictionaries": [TEST_DICT_ID],
        "server_dictionaries": [TEST_DICT_ID],
        "steps": [
            (
                "client",
                "send_hello",
                {**HELLO, "preset_id": TEST_PRESET_ID, "dictionaries": [TEST_DICT_ID]},
            ),
            ("client", "send_request", _shaped_req("51.86645;-4.41320;35")),
            ("server", "accept", ACCEPT),
            (
                "server",
                "send_response",
                _shaped_reply(
                    "app;dur=102.4, db;dur=0.9",
                    "sid=Zm9vYmFyYmF6cXV4; Path=/; Max-Age=3600; HttpOnly",
                ),
            ),
            ("client", "send_request", _shaped_req("0.00000;0.00001;0")),
            (
                "server",
                "send_response",
                _shaped_reply("app;dur=12, db;dur=3.0", "sid=x; Path=/; Secure"),
            ),
        ],
    },
    {
        "name": "paced-dictionary-delivery",
        "description": (
            "The device holds no dictionary; the server announces dictionary 7 as the one "
            "to use and delivers it in chunks between other frames (a RESPONSE "
            "goes out between two chunks); once the last chunk is in, both directions "
            "compress with it."
        ),
        "client_dictionaries": [],
        "server_dictionaries": [TEST_DICT_ID],
        "steps": [
            ("client", "send_hello", {**HELLO, "preset_id": 0}),
            (
                "client",
                "send_request",
                _req("account.balance.get", "3da95cd2167b75dfb948f82a8317cba3"),
            ),
            ("server", "accept", {**ACCEPT, "newest_dictionary": TEST_DICT_ID}),
            (
                "server",
                "send_dictionary_chunk",
                {"dict_id": TEST_DICT_ID, "offset": 0, "max_chunk_bytes": 1500},
            ),
            (
                "server",
                "send_response",
                {
                    "stream_id": 1,
                    "headers": [["server-time", "1764000000210"]],
                    "body": BALANCE_REPLY,
                },
            ),
            (
                "server",
                "send_dictionary_chunk",
                {"dict_id": TEST_DICT_ID, "offset": 1500, "max_chunk_bytes": 65536},
            ),
            (
                "client",
                "send_request",
                _req("account.balance.get", "3da95cd2167b75dfb948f82a8317cba4"),
            ),
            (
                "server",
                "send_response",
                {
                    "stream_id": 1,
                    "headers": [["server-time", "1764000000230"]],
                    "body": BALANCE_REPLY,
                },
            ),
        ],
    },
    {
        "name": "hello-device-id-from-token",
        "description": (
            "A HELLO with a token and no resume ticket leaves device_id out (section 7.2, "
            '"Device id from the token"): field 2 is absent, the server accepts it.'
        ),
        "client_dictionaries": [],
        "server_dictionaries": [],
        "steps": [
            (
                "client",
                "send_hello",
                {k: v for k, v in HELLO.items() if k != "device_id"} | {"preset_id": 0},
            ),
            ("server", "accept", ACCEPT),
        ],
    },
    {
        "name": "rejected-token",
        "description": "The server refuses the device's token: ERROR on stream 0, then close.",
        "client_dictionaries": [],
        "server_dictionaries": [],
        "steps": [
            ("client", "send_hello", {**HELLO, "preset_id": 0}),
            (
                "server",
                "reject",
                {"code": "AUTH_EXPIRED", "message": "token expired at 2026-11-26T00:00:00Z"},
            ),
        ],
    },
]


def _store(ids: list[int], dictionary: Dictionary) -> DictionaryStore:
    return DictionaryStore([dictionary] if TEST_DICT_ID in ids else [])


def run_conversation(spec: dict[str, Any], dictionary: Dictionary) -> list[dict[str, Any]]:
    connections = {
        "client": Connection(
            Role.CLIENT,
            limits=Limits(**spec.get("client_limits", {})),
            body_codec=BodyCodec(_store(spec["client_dictionaries"], dictionary)),
        ),
        "server": Connection(
            Role.SERVER, body_codec=BodyCodec(_store(spec["server_dictionaries"], dictionary))
        ),
    }
    steps: list[dict[str, Any]] = []
    for actor, action, args in spec["steps"]:
        peer = "server" if actor == "client" else "client"
        if args is None:  # a step that must fail locally (documented in the vector)
            steps.append(
                {
                    "actor": actor,
                    "action": "send_request",
                    "args": {"op": "any"},
                    "local_error": "LocalProtocolError",
                }
            )
            continue
        perform(connections[actor], action, args, {TEST_DICT_ID: dictionary})
        sent = connections[actor].data_to_send()
        events = connections[peer].receive_data(sent)
        reply = connections[peer].data_to_send()
        step = {
            "actor": actor,
            "action": action,
            "args": args,
            "hex": sent.hex(),
            "events": [event_to_json(e) for e in events],
        }
        if reply:  # automatic answers: PONG, SETTINGS ACK, ERROR(CANCELLED)
            step["auto_reply_hex"] = reply.hex()
            step["auto_reply_events"] = [
                event_to_json(e) for e in connections[actor].receive_data(reply)
            ]
        steps.append(step)
    return steps


def _frame(frame_type: FrameType, flags: int, payload: bytes) -> str:
    return encode_frame(frame_type, flags, payload).hex()


def _hello_hex(**overrides: Any) -> str:
    client = Connection(Role.CLIENT)
    perform(client, "send_hello", {**HELLO, **overrides}, {})
    return client.data_to_send().hex()


def invalid_vectors() -> list[dict[str, Any]]:
    """Inputs a receiver must refuse, with the code of the ERROR it sends."""
    hello = _hello_hex()
    hello_v0 = _hello_hex(preset_id=0)
    handshake = "after-hello"  # the server has received `hello` and accepted
    literal_op = b"\x00\x03:op\x01x"  # literal without indexing, new name
    typed_request = lambda section: _frame(  # noqa: E731
        FrameType.REQUEST,
        0x5,
        b"\x01" + bytes([len(literal_op)]) + literal_op + encode_varint(len(section)) + section,
    )
    echo_bomb = b"\x01\x10" + b"\xaa" * 16 + b"\x05" * 600
    app = "after-app-hello"  # the server has received the HELLO with preset 9, accepted
    op_block = encode_context_free([(":op", "x")])

    def request(*, conn: bytes = b"", typed: bytes = b"", own: bytes = op_block) -> str:
        flags = FLAG_HEADERS | (FLAG_CONN if conn else 0) | (0x4 if typed else 0)
        payload = b"\x01" + encode_varint(len(own)) + own
        if conn:
            payload += encode_varint(len(conn)) + conn
        if typed:
            payload += encode_varint(len(typed)) + typed
        return _frame(FrameType.REQUEST, flags, payload)

    big_cookie = [("cookie", "c" * 1000), ("x-a", "a" * 1000)]
    cases: list[dict[str, Any]] = [
        {
            "name": "conn-block-with-pseudo-header",
            "role": "server",
            "prefix": handshake,
            "hex": request(conn=encode_context_free([(":op", "y")])),
            "error": "FIELD_ERROR",
            "note": "a connection header block may hold plain fields and :drop only",
        },
        {
            "name": "conn-block-drop-without-name",
            "role": "server",
            "prefix": handshake,
            "hex": request(conn=encode_context_free([(":drop", "")])),
            "error": "FIELD_ERROR",
        },
        {
            "name": "conn-block-empty",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(
                FrameType.REQUEST,
                FLAG_HEADERS | FLAG_CONN,
                b"\x01" + encode_varint(len(op_block)) + op_block + b"\x00",
            ),
            "error": "FIELD_ERROR",
            "note": "a section announced by its flag may not be empty",
        },
        {
            "name": "conn-block-over-connection-limit",
            "role": "server",
            "prefix": handshake,
            "hex": request(conn=encode_context_free(big_cookie)),
            "error": "HEADER_LIST_TOO_LARGE",
            "note": "2,064 bytes of connection headers exceed max_connection_header_list_size 2048",
        },
        {
            "name": "conn-headers-push-request-over-list-limit",
            "role": "server",
            "prefix": handshake,
            "hex": request(
                conn=encode_context_free([("cookie", "c" * 1900)]),
                own=encode_context_free([(":op", "x"), ("x-b", "b" * 14400)]),
            ),
            "error": "HEADER_LIST_TOO_LARGE",
            "note": "the request's own 14,441 bytes fit 16384; with its connection headers not",
        },
        {
            "name": "conn-flag-on-a-server-request",
            "role": "client",
            "prefix": "accepted",
            "hex": _frame(
                FrameType.REQUEST,
                FLAG_HEADERS | FLAG_CONN,
                b"\x02"
                + encode_varint(len(op_block))
                + op_block
                + encode_varint(len(op_block))
                + encode_context_free([("cookie", "x")]),
            ),
            "error": "PROTOCOL_ERROR",
            "note": "only a client sends connection headers",
        },
        {
            "name": "conn-flag-on-a-response",
            "role": "client",
            "prefix": "accepted-with-open-stream",
            "hex": _frame(FrameType.RESPONSE, 0x8, b"\x01\x00"),
            "error": "PROTOCOL_ERROR",
        },
        {
            "name": "typed-uuid-past-section",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x01" + b"\xab" * 15),
            "error": "FIELD_ERROR",
            "note": "key 1 of preset 9 is a uuid-upper: 16 bytes",
        },
        {
            "name": "typed-base64-empty",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x06\x00"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "typed-time-s-out-of-range",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x02" + encode_varint(2 * 10**13)),
            "error": "FIELD_ERROR",
            "note": "1764000000 + 10^13 is not below 10^13",
        },
        {
            "name": "typed-key-past-preset-list",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0f\x00"),
            "error": "FIELD_ERROR",
            "note": "preset 9 declares 14 typed fields",
        },
        {
            "name": "typed-traceparent-past-section",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0b" + b"\x00" * 25),
            "error": "FIELD_ERROR",
            "note": "key 11 of preset 9 is a traceparent: 26 bytes",
        },
        {
            "name": "typed-template-hole-missing",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0d" + encode_varint(4) + encode_varint(6)),
            "error": "FIELD_ERROR",
            "note": "key 13 (x-geo) has three holes; the section ends after two",
        },
        {
            "name": "typed-template-number-out-of-range",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0c" + encode_varint(2 * 10**16) + encode_varint(0)),
            "error": "FIELD_ERROR",
            "note": "a hole's number must stay below 10^16 in magnitude",
        },
        {
            "name": "typed-text-hole-past-section",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0e\x05ab"),
            "error": "FIELD_ERROR",
            "note": "key 14's text hole says 5 raw bytes; 2 follow",
        },
        {
            "name": "typed-text-hole-bad-huffman",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0e\x81\x00" + encode_varint(0)),
            "error": "FIELD_ERROR",
            "note": "a Huffman string of one 0x00 byte: padding that is not the EOS prefix",
        },
        {
            "name": "typed-text-hole-not-utf8",
            "role": "server",
            "prefix": app,
            "hex": request(typed=b"\x0e\x01\xff" + encode_varint(0)),
            "error": "FIELD_ERROR",
        },
        {
            "name": "typed-unknown-key",
            "role": "server",
            "prefix": handshake,
            "hex": typed_request(b"\x09\x00"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "typed-echo-on-a-request",
            "role": "server",
            "prefix": handshake,
            "hex": typed_request(b"\x05"),
            "error": "FIELD_ERROR",
            "note": "a trace-id echo only exists in a RESPONSE to a request that had one",
        },
        {
            "name": "typed-hex-length-past-section",
            "role": "server",
            "prefix": handshake,
            "hex": typed_request(b"\x01\x10\xaa"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "typed-fields-over-header-list-limit",
            "role": "client",
            "prefix": "accepted-with-open-stream",
            "hex": _frame(
                FrameType.RESPONSE,
                0x4,
                b"\x01\x00" + encode_varint(len(echo_bomb)) + echo_bomb,
            ),
            "error": "HEADER_LIST_TOO_LARGE",
            "note": "600 one-byte echoes of a 32-digit trace-id exceed 16384",
        },
        {
            "name": "first-frame-not-hello",
            "role": "server",
            "prefix": "none",
            "hex": _frame(FrameType.PING, 0, b""),
            "error": "STATE_ERROR",
        },
        {
            "name": "unknown-frame-type",
            "role": "server",
            "prefix": "none",
            "hex": "f000",
            "error": "UNKNOWN_FRAME_TYPE",
        },
        {
            "name": "undefined-flags",
            "role": "server",
            "prefix": "none",
            "hex": "0800",
            "error": "PROTOCOL_ERROR",
        },
        {
            "name": "frame-too-large",
            "role": "server",
            "prefix": "none",
            "hex": "00" + encode_varint(256 * 1024 + 1).hex(),
            "error": "FRAME_SIZE_ERROR",
            "note": "refused from the length alone, before the payload arrives",
        },
        {
            "name": "overlong-varint-length",
            "role": "server",
            "prefix": "none",
            "hex": "00" + "ff" * 8 + "01",
            "error": "VARINT_ERROR",
        },
        {
            "name": "non-minimal-varint",
            "role": "server",
            "prefix": "none",
            "hex": "008000",
            "error": "VARINT_ERROR",
        },
        {
            "name": "hello-version-2",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO, 0, bytes.fromhex("0202") + bytes.fromhex("0503") + b"dev"
            ),
            "error": "UNSUPPORTED_VERSION",
        },
        {
            "name": "hello-without-device-id",
            "role": "server",
            "prefix": "none",
            "hex": _frame(FrameType.HELLO, 0, bytes.fromhex("0201")),
            "error": "FIELD_ERROR",
        },
        {
            "name": "hello-without-device-id-with-ticket",
            "role": "server",
            "prefix": "none",
            # version 1, token "tok", resume_ticket "tkt": a ticket needs its device id.
            "hex": _frame(
                FrameType.HELLO,
                0,
                bytes.fromhex("0201")
                + bytes.fromhex("0903")
                + b"tok"
                + bytes.fromhex("0b03")
                + b"tkt",
            ),
            "error": "FIELD_ERROR",
        },
        {
            "name": "hello-duplicate-field",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO,
                0,
                bytes.fromhex("0201")
                + bytes.fromhex("0503")
                + b"dev"
                + bytes.fromhex("0503")
                + b"dev",
            ),
            "error": "FIELD_ERROR",
        },
        {
            "name": "hello-field-past-end",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO, 0, bytes.fromhex("0201") + bytes.fromhex("0510") + b"dev"
            ),
            "error": "FIELD_ERROR",
        },
        {
            "name": "hello-unknown-preset",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO,
                0,
                bytes.fromhex("0201") + bytes.fromhex("0503") + b"dev" + bytes.fromhex("0e63"),
            ),
            "error": "UNKNOWN_PRESET",
        },
        {
            "name": "hello-table-size-below-4096",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO,
                0,
                bytes.fromhex("0201") + bytes.fromhex("0503") + b"dev" + bytes.fromhex("128001"),
            ),
            "error": "FIELD_ERROR",
        },
        {
            "name": "second-hello",
            "role": "server",
            "prefix": handshake,
            "hex": hello,
            "error": "STATE_ERROR",
        },
        {
            "name": "request-stream-0",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 0, b"\x00"),
            "error": "STREAM_ID_ERROR",
        },
        {
            "name": "request-server-parity",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 1, b"\x02\x01\x80"),
            "error": "STREAM_ID_ERROR",
        },
        {
            "name": "request-without-op",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 0, b"\x01{}"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "response-unknown-stream",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.RESPONSE, 0, b"\x02\x00"),
            "error": "STREAM_ID_ERROR",
        },
        {
            "name": "push-to-server",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.PUSH, 0, b"\x01\x01\xaa"),
            "error": "STATE_ERROR",
        },
        {
            "name": "hpack-bad-index",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 1, b"\x01\x02\xff\x7f"),
            "error": "HEADER_ERROR",
            "note": "indexed field 0xff7f → index 254 past both tables",
        },
        {
            "name": "hpack-table-size-update-above-max",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 1, b"\x01\x03\x3f\xe1\x3f"),
            "error": "TABLE_SIZE_ERROR",
            "note": "dynamic table size update to 8192 when 4096 was announced",
        },
        {
            "name": "hpack-three-size-updates",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(
                FrameType.REQUEST,
                1,
                b"\x01" + encode_varint(3 + len(literal_op)) + b"\x20\x20\x20" + literal_op,
            ),
            "error": "HEADER_ERROR",
            "note": "RFC 7541 4.2 allows at most two size updates at the start of a block",
        },
        {
            "name": "settings-17-pairs",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.SETTINGS, 0, b"".join(bytes([0x40 + i, 0]) for i in range(17))),
            "error": "FIELD_ERROR",
            "note": "at most 16 pairs per SETTINGS, unknown ids (0x40...) included",
        },
        {
            "name": "settings-id-twice",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.SETTINGS, 0, b"\x05\x3c\x05\x78"),
            "error": "FIELD_ERROR",
            "note": "HEARTBEAT_S given twice in one frame",
        },
        {
            "name": "settings-longer-than-16-pairs",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.SETTINGS, 0, b"\x00" * 257),
            "error": "FIELD_ERROR",
            "note": "257 bytes cannot be 16 pairs of 8-byte varints: refused from the length",
        },
        {
            "name": "hello-33-unknown-fields",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO,
                0,
                bytes.fromhex("0201") + bytes.fromhex("0503") + b"dev" + b"\xfe\x01\x00" * 33,
            ),
            "error": "FIELD_ERROR",
            "note": "field 127 (varint 0) 33 times: at most 32 unknown fields",
        },
        {
            "name": "hello-33-dictionaries",
            "role": "server",
            "prefix": "none",
            "hex": _frame(
                FrameType.HELLO,
                0,
                bytes.fromhex("0201")
                + bytes.fromhex("0503")
                + b"dev"
                + b"".join(b"\x0c" + bytes([i]) for i in range(1, 34)),
            ),
            "error": "FIELD_ERROR",
        },
        {
            "name": "hello-larger-than-max-hello-size",
            "role": "server",
            "prefix": "none",
            "hex": "00" + encode_varint(8 * 1024 + 1).hex(),
            "error": "FRAME_SIZE_ERROR",
            "note": "the first frame is refused from its length above max_hello_size (8192)",
        },
        {
            "name": "zstd-unknown-dictionary",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(
                FrameType.REQUEST, 3, b"\x01\x01\xbe\x09" + bytes.fromhex("2010") + b"x" * 16
            ),
            "error": "UNKNOWN_DICTIONARY",
        },
        {
            "name": "zstd-without-content-size",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 3, b"\x01\x01\xbe\x00" + _zstd_no_size()),
            "error": "COMPRESSION_ERROR",
        },
        {
            "name": "zstd-declares-256MiB",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 3, b"\x01\x01\xbe\x00" + _zstd_bomb_header()),
            "error": "BODY_TOO_LARGE",
            "note": "refused from the frame header before any decompression",
        },
        {
            "name": "zstd-trailing-bytes",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.REQUEST, 3, b"\x01\x01\xbe\x00" + _zstd_small() + b"\x00"),
            "error": "COMPRESSION_ERROR",
        },
        {
            "name": "ack-empty",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.ACK, 0, b""),
            "error": "FIELD_ERROR",
        },
        {
            "name": "ping-payload-9-bytes",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.PING, 0, b"123456789"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "settings-ack-with-payload",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.SETTINGS, 1, b"\x01\x01"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "goaway-endpoint-past-end",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.GOAWAY, 0, b"\x00\x00\x09ab"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "dict-to-server",
            "role": "server",
            "prefix": handshake,
            "hex": _frame(FrameType.DICT, 1, b"\x07\x01\x00x"),
            "error": "STATE_ERROR",
        },
        {
            "name": "client-gets-request-before-hello-ack",
            "role": "client",
            "prefix": "hello-sent",
            "hex": _frame(FrameType.REQUEST, 0, b"\x02"),
            "error": "STATE_ERROR",
        },
        {
            "name": "push-delivery-id-not-increasing",
            "role": "client",
            "prefix": "accepted",
            "hex": _frame(FrameType.PUSH, 0, b"\x01\x01\xaa{}")
            + _frame(FrameType.PUSH, 0, b"\x01\x01\xab{}"),
            "error": "PROTOCOL_ERROR",
        },
        {
            "name": "push-empty-message-id",
            "role": "client",
            "prefix": "accepted",
            "hex": _frame(FrameType.PUSH, 0, b"\x01\x00{}"),
            "error": "FIELD_ERROR",
        },
        {
            "name": "dict-chunk-out-of-order",
            "role": "client",
            "prefix": "accepted",
            "hex": _frame(FrameType.DICT, 0, b"\x07\x04\x00ab")
            + _frame(FrameType.DICT, 1, b"\x07\x04\x03cd"),
            "error": "DICTIONARY_ERROR",
        },
        {
            "name": "dict-too-large",
            "role": "client",
            "prefix": "accepted",
            "hex": _frame(FrameType.DICT, 1, b"\x07" + encode_varint(10 * 1024 * 1024) + b"\x00ab"),
            "error": "DICTIONARY_ERROR",
        },
    ]
    del hello_v0
    return cases


def _zstd_params(**kwargs: Any) -> zstandard.ZstdCompressionParameters:
    return zstandard.ZstdCompressionParameters.from_level(
        3,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_checksum=False,
        write_dict_id=False,
        **kwargs,
    )


def _zstd_small() -> bytes:
    return zstandard.ZstdCompressor(
        compression_params=_zstd_params(write_content_size=True)
    ).compress(b"hello hello hello hello")


def _zstd_no_size() -> bytes:
    compressor = zstandard.ZstdCompressor(compression_params=_zstd_params(write_content_size=False))
    obj = compressor.compressobj()
    return obj.compress(b"hello hello hello hello") + obj.flush()


def _zstd_bomb_header() -> bytes:
    """A frame whose header declares 256 MiB: only its first block is included."""
    compressor = zstandard.ZstdCompressor(compression_params=_zstd_params(write_content_size=True))
    return compressor.compress(b"\x00" * (256 * 1024 * 1024))[:64]


def check_invalid(case: dict[str, Any]) -> str:
    """Run one invalid case against the reference implementation; return the error code."""
    connection = prepared_receiver(case["role"], case["prefix"])
    try:
        connection.receive_data(bytes.fromhex(case["hex"]))
    except ProtocolError as exc:
        return exc.code.name
    return "NO_ERROR"


def prepared_receiver(role: str, prefix: str) -> Connection:
    """A receiver in the state a case's ``prefix`` names (see vectors/README.md)."""
    server = Connection(Role.SERVER, limits=Limits())
    client = Connection(Role.CLIENT)
    perform(client, "send_hello", APP_HELLO if prefix == "after-app-hello" else HELLO, {})
    hello = client.data_to_send()
    if role == "server":
        if prefix == "none":
            return server
        server.receive_data(hello)
        perform(server, "accept", ACCEPT, {})
        server.data_to_send()
        return server
    if prefix == "hello-sent":
        return client
    server.receive_data(hello)
    perform(server, "accept", ACCEPT, {})
    client.receive_data(server.data_to_send())
    if prefix == "accepted-with-open-stream":
        perform(client, "send_request", OPEN_STREAM_REQUEST, {})
        client.data_to_send()
    return client


OPEN_STREAM_REQUEST = {"op": "x", "headers": [["trace-id", "aa" * 16]]}
APP_HELLO = {**HELLO, "preset_id": TEST_PRESET_ID}
PREFIXES = {
    "none": "a fresh receiver: nothing received yet",
    "after-hello": (
        "server role: it received the client's HELLO made from `hello_args` (preset 1), "
        "then called accept with `accept_args`"
    ),
    "after-app-hello": (
        "server role: as `after-hello`, but the HELLO is `app_hello_args` (preset 9, "
        "the vectors' app preset)"
    ),
    "hello-sent": "client role: it sent HELLO from `hello_args` and has received nothing",
    "accepted": (
        "client role: it sent HELLO from `hello_args` and received the HELLO_ACK the server "
        "makes from `accept_args`"
    ),
    "accepted-with-open-stream": (
        "as `accepted`, then the client sent `open_stream_request` (stream 1, with a trace-id)"
    ),
    "open_stream_request": OPEN_STREAM_REQUEST,
    "hello_args": HELLO,
    "app_hello_args": APP_HELLO,
    "accept_args": ACCEPT,
}


def varint_vectors() -> dict[str, Any]:
    values = [0, 1, 127, 128, 255, 300, 16383, 16384, 2097151, 2097152, 2**32 - 1, 2**56 - 1]
    return {
        "valid": [{"value": v, "hex": encode_varint(v).hex()} for v in values],
        "invalid": [
            {"hex": "8000", "error": "VARINT_ERROR", "note": "non-minimal (trailing zero group)"},
            {"hex": "ff00", "error": "VARINT_ERROR", "note": "non-minimal (127 with a zero group)"},
            {"hex": "ffffffffffffffff01", "error": "VARINT_ERROR", "note": "longer than 8 bytes"},
        ],
    }


def main() -> int:
    VECTORS.mkdir(parents=True, exist_ok=True)
    dictionary = test_dictionary()
    test_preset()
    meta = {"zstd_version": zstandard.ZSTD_VERSION, "mmtp_version": 1}
    conversations = [
        {
            "name": spec["name"],
            "description": spec["description"],
            "client_dictionaries": spec["client_dictionaries"],
            "server_dictionaries": spec["server_dictionaries"],
            "client_limits": spec.get("client_limits", {}),
            "steps": run_conversation(spec, dictionary),
        }
        for spec in CONVERSATIONS
    ]
    cases = invalid_vectors()
    for case in cases:
        got = check_invalid(case)
        if got != case["error"]:
            print(
                f"invalid vector {case['name']}: expected {case['error']}, got {got}",
                file=sys.stderr,
            )
            return 1
    outputs = {
        "varint.json": varint_vectors(),
        "conversations.json": {
            "meta": meta,
            "dictionary_file": TEST_DICT_FILE,
            "preset_files": [TEST_PRESET_FILE],
            "conversations": conversations,
        },
        "invalid.json": {
            "meta": meta,
            "preset_files": [TEST_PRESET_FILE],
            "prefixes": PREFIXES,
            "cases": cases,
        },
    }
    for name, content in outputs.items():
        (VECTORS / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {VECTORS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
