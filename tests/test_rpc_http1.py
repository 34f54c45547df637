"""The sans-I/O HTTP/1.1 client codec (``channel.rpc.http1``): literal bytes in, events out.

Unit tests for each framing, limit and malformation, then property tests: any
valid response parses the same however it is split, chunked bodies round-trip,
and garbage never raises anything but ``H1ProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.rpc.http1 import (
    BodyTooLarge,
    ClientConnection,
    Data,
    EndOfMessage,
    Event,
    H1ErrorCode,
    H1ProtocolError,
    Headers,
    Limits,
    LocalProtocolError,
    Response,
    State,
    encode_chunked,
    encode_request,
)


@dataclass
class Parsed:
    response: Response
    body: bytes
    trailers: Headers


def awaiting(limits: Limits | None = None) -> ClientConnection:
    conn = ClientConnection(limits)
    conn.send_request("POST", "/rpc/x", host="up:8080", body=b"{}")
    return conn


def collect(events: list[Event]) -> Parsed:
    responses = [e for e in events if isinstance(e, Response)]
    ends = [e for e in events if isinstance(e, EndOfMessage)]
    assert len(responses) == 1 and len(ends) == 1, events
    assert isinstance(events[0], Response) and events[-1] is ends[0]
    body = b"".join(e.data for e in events if isinstance(e, Data))
    return Parsed(responses[0], body, ends[0].trailers)


def parse(data: bytes, *, eof: bool = False, limits: Limits | None = None) -> Parsed:
    conn = awaiting(limits)
    events = conn.receive_data(data)
    if eof:
        events += conn.receive_data(b"")
    return collect(events)


def error_code(data: bytes, *, eof: bool = False, limits: Limits | None = None) -> H1ErrorCode:
    conn = awaiting(limits)
    with pytest.raises(H1ProtocolError) as info:
        conn.receive_data(data)
        if eof:
            conn.receive_data(b"")
    assert conn.state is State.ERROR and not conn.keep_alive
    return info.value.code


# -- requests --------------------------------------------------------------------


def test_request_bytes() -> None:
    data = encode_request(
        "POST",
        "/rpc/account.get",
        host="10.0.0.1:9001",
        headers=[("content-type", "application/json"), ("x-channel-device-id", "d1")],
        body=b'{"a":1}',
    )
    assert data == (
        b"POST /rpc/account.get HTTP/1.1\r\n"
        b"host: 10.0.0.1:9001\r\n"
        b"user-agent: channel-gateway\r\n"
        b"content-length: 7\r\n"
        b"content-type: application/json\r\n"
        b"x-channel-device-id: d1\r\n"
        b"\r\n"
        b'{"a":1}'
    )


def test_a_device_user_agent_replaces_the_gateways() -> None:
    """A device's own user-agent (a connection-scoped header, say) goes up alone: two
    user-agent fields made aiohttp upstreams answer 400."""
    data = encode_request(
        "POST", "/rpc/x", host="h", headers=[("user-agent", "Chirp/7.1")], body=b""
    )
    assert data.count(b"user-agent:") == 1 and b"user-agent: Chirp/7.1\r\n" in data


def test_framing_names_are_whole_names_in_any_case() -> None:
    """``User-Agent`` in any case replaces the gateway's; names that merely contain a
    framing or user-agent name go up as they are, among others, in any position."""
    headers = [
        ("x-host", "a"),
        ("hostname", "b"),
        ("content-length-hint", "c"),
        ("User-Agent", "Chirp/7.1"),
        ("x-user-agent", "d"),
    ]
    data = encode_request("POST", "/rpc/x", host="h", headers=headers, body=b"")
    assert b"user-agent: channel-gateway" not in data
    for name, value in headers:
        assert f"\r\n{name}: {value}\r\n".encode() in data
    with pytest.raises(LocalProtocolError):
        encode_request("POST", "/rpc/x", host="h", headers=[*headers, ("HOST", "e")], body=b"")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-a", "1\r\nx-channel-user-id: evil"),
        ("x-a", "line\nbreak"),
        ("x-a", "nul\x00"),
        ("x a", "1"),
        ("x-a\r\n", "1"),
        ("", "1"),
        ("Content-Length", "5"),
        ("host", "evil"),
        ("transfer-encoding", "chunked"),
    ],
)
def test_request_refuses_bad_or_framing_headers(name: str, value: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request("POST", "/rpc/x", host="h", headers=[(name, value)], body=b"")


@pytest.mark.parametrize("target", ["rpc/x", "/rpc/a b", "/rpc/\r\n", ""])
def test_request_refuses_bad_targets(target: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request("POST", target, host="h", headers=[], body=b"")


def test_request_in_the_wrong_state_is_refused() -> None:
    conn = awaiting()
    with pytest.raises(LocalProtocolError):
        conn.send_request("POST", "/rpc/x", host="h")
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


# -- responses -------------------------------------------------------------------

SIMPLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello"


def test_content_length_response_in_one_piece() -> None:
    conn = awaiting()
    events = conn.receive_data(SIMPLE)
    assert events == [
        Response(
            200,
            "OK",
            Headers([("content-type", "application/json"), ("content-length", "5")]),
            "1.1",
        ),
        Data(b"hello"),
        EndOfMessage(Headers()),
    ]
    assert conn.state is State.DONE and conn.keep_alive
    conn.start_next_cycle()
    assert conn.state is State.IDLE
    conn.send_request("POST", "/rpc/y", host="h")
    assert collect(conn.receive_data(SIMPLE)).body == b"hello"


def test_headers_are_case_insensitive_and_repeats_are_kept() -> None:
    parsed = parse(
        b"HTTP/1.1 200 OK\r\nX-Tag: a\r\nx-tag: b\r\nSet-Cookie:  c=1 \r\nContent-Length: 0\r\n\r\n"
    )
    headers = parsed.response.headers
    assert headers.get("X-TAG") == "a"
    assert headers.getall("x-Tag") == ["a", "b"]
    assert headers.get("set-cookie") == "c=1"
    assert "SET-COOKIE" in headers and "missing" not in headers
    assert headers.get("missing", "dflt") == "dflt"
    assert next(iter(headers)) == ("x-tag", "a")
    assert len(headers) == 4


def test_status_line_variants() -> None:
    assert parse(b"HTTP/1.1 204\r\n\r\n").response.reason == ""
    assert parse(b"HTTP/1.1 404 Not  Found \r\nContent-Length: 0\r\n\r\n").response.reason == (
        "Not  Found "
    )


def test_obs_fold_is_joined_with_a_space() -> None:
    parsed = parse(b"HTTP/1.1 200 OK\r\nX-A: one\r\n  two\r\n\ttwo-b\r\nContent-Length: 0\r\n\r\n")
    assert parsed.response.headers.get("x-a") == "one two two-b"


def test_chunked_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"6 ; ext\r\n world\r\n"
        b"0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
    )
    parsed = parse(data)
    assert parsed.body == b"hello world"
    assert list(parsed.trailers) == [("x-checksum", "abc"), ("x-more", "1")]


def test_close_delimited_body_ends_at_eof_and_is_not_reusable() -> None:
    conn = awaiting()
    events = conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
    events += conn.receive_data(b"part two")
    assert not conn.keep_alive and conn.state is State.BODY_UNTIL_EOF
    events += conn.receive_data(b"")
    assert collect(events).body == b"part one, part two"
    assert conn.state is State.CLOSED


def test_interim_responses_are_skipped() -> None:
    parsed = parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + SIMPLE
    )
    assert parsed.response.status == 200 and parsed.body == b"hello"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_ignore_content_length(status: int) -> None:
    conn = awaiting()
    events = conn.receive_data(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert collect(events).body == b""
    assert conn.state is State.DONE and conn.keep_alive


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_connection_close_and_http10_are_not_reusable(head: bytes) -> None:
    conn = awaiting()
    collect(conn.receive_data(head))
    assert conn.state is State.DONE and not conn.keep_alive
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_data_after_a_complete_response_makes_it_not_reusable() -> None:
    conn = awaiting()
    assert collect(conn.receive_data(SIMPLE + b"HTTP/1.1 200 OK\r\n")).body == b"hello"
    assert not conn.keep_alive
    conn = awaiting()
    collect(conn.receive_data(SIMPLE))
    assert conn.keep_alive
    assert conn.receive_data(b"surprise") == []
    assert not conn.keep_alive


def test_bytes_while_idle_make_it_not_reusable() -> None:
    conn = ClientConnection()
    assert conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") == []
    assert not conn.keep_alive


def test_eof_before_any_byte_vs_in_the_middle() -> None:
    conn = awaiting()
    with pytest.raises(H1ProtocolError) as info:
        conn.receive_data(b"")
    assert info.value.code is H1ErrorCode.NO_RESPONSE and not conn.response_started
    assert error_code(b"HTTP/1.1 200 OK\r\nContent-Len", eof=True) is H1ErrorCode.INCOMPLETE
    assert error_code(SIMPLE[:-1], eof=True) is H1ErrorCode.INCOMPLETE
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    assert error_code(chunked, eof=True) is H1ErrorCode.INCOMPLETE


def test_eof_when_idle_closes_quietly() -> None:
    conn = awaiting()
    collect(conn.receive_data(SIMPLE))
    assert conn.receive_data(b"") == []
    assert conn.state is State.CLOSED and not conn.keep_alive


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", H1ErrorCode.BAD_STATUS_LINE),
        (b"HTTP/1.1 20 OK\r\n\r\n", H1ErrorCode.BAD_STATUS_LINE),
        (b"HTTP/1.1 2000 OK\r\n\r\n", H1ErrorCode.BAD_STATUS_LINE),
        (b"ICY 200 OK\r\n\r\n", H1ErrorCode.BAD_STATUS_LINE),
        (b"HTTP/1.1 200 OK\r\nNo-Colon\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 200 OK\r\nName : 1\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 200 OK\r\n folded-first: 1\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", H1ErrorCode.BAD_HEADER),
        (b"HTTP/1.1 101 Switching\r\n\r\n", H1ErrorCode.UNEXPECTED_UPGRADE),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            H1ErrorCode.BAD_CONTENT_LENGTH,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", H1ErrorCode.BAD_CONTENT_LENGTH),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", H1ErrorCode.BAD_CONTENT_LENGTH),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", H1ErrorCode.BAD_CONTENT_LENGTH),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n", H1ErrorCode.BAD_CONTENT_LENGTH),
        (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", H1ErrorCode.BAD_CONTENT_LENGTH),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            H1ErrorCode.BAD_TRANSFER_ENCODING,
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", H1ErrorCode.BAD_TRANSFER_ENCODING),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            H1ErrorCode.BAD_TRANSFER_ENCODING,
        ),
    ],
)
def test_malformed_heads(data: bytes, code: H1ErrorCode) -> None:
    assert error_code(data) is code


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\n",
        b"-5\r\n",
        b"+5\r\n",
        b"0x5\r\n",
        b" 5\r\n",
        b"5_0\r\n",
        b"\r\n",
        b"1234567890abcdef0\r\n",  # would overflow any sane size
        b"5\r\nhelloXX",  # data not followed by CRLF
        b"5\nhello\r\n",  # bare LF in the size line
    ],
)
def test_bad_chunks(body: bytes) -> None:
    assert error_code(CHUNKED_HEAD + body) is H1ErrorCode.BAD_CHUNK


def test_errors_are_final() -> None:
    conn = awaiting()
    with pytest.raises(H1ProtocolError):
        conn.receive_data(b"garbage\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(SIMPLE)


# -- limits ----------------------------------------------------------------------


def test_head_limit_whole_and_trickled() -> None:
    limits = Limits(max_head_bytes=100)
    big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    assert error_code(big, limits=limits) is H1ErrorCode.HEAD_TOO_LARGE
    # No end of head in sight: refused once the buffer passes the limit, not at EOF.
    conn = awaiting(limits)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(H1ProtocolError) as info:
        for _ in range(100):
            conn.receive_data(b"X-Long: aaaaaaaa\r\n")
    assert info.value.code is H1ErrorCode.HEAD_TOO_LARGE
    # Interim answers count too: endless 100 Continue cannot go on for ever.
    conn = awaiting(limits)
    with pytest.raises(H1ProtocolError) as info:
        for _ in range(10):
            conn.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert info.value.code is H1ErrorCode.HEAD_TOO_LARGE


def test_header_count_limit() -> None:
    limits = Limits(max_headers=3)
    ok = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n"
    assert parse(ok, limits=limits).response.status == 200
    many = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nContent-Length: 0\r\n\r\n"
    assert error_code(many, limits=limits) is H1ErrorCode.TOO_MANY_HEADERS
    trailers = CHUNKED_HEAD + b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"
    assert error_code(trailers, limits=limits) is H1ErrorCode.TOO_MANY_HEADERS


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",  # refused from the head alone
        CHUNKED_HEAD + b"6\r\nhello \r\n5\r\n",  # refused at the size line that passes it
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11,  # close-delimited
    ],
)
def test_body_limit(data: bytes) -> None:
    limits = Limits(max_body_bytes=10)
    conn = awaiting(limits)
    with pytest.raises(BodyTooLarge) as info:
        conn.receive_data(data)
    assert info.value.code is H1ErrorCode.BODY_TOO_LARGE and info.value.limit == 10
    assert parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10, limits=limits)


def test_chunk_line_limit() -> None:
    limits = Limits(max_chunk_line_bytes=16)
    assert error_code(CHUNKED_HEAD + b"5;" + b"e" * 20, limits=limits) is H1ErrorCode.BAD_CHUNK
    assert parse(CHUNKED_HEAD + b"5;e=1\r\nhello\r\n0\r\n\r\n", limits=limits).body == b"hello"


# -- properties ------------------------------------------------------------------

_TOKEN_CHARS = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"
_FRAMING = {"content-length", "transfer-encoding", "connection"}
names = st.text(_TOKEN_CHARS, min_size=1, max_size=12).filter(lambda n: n.lower() not in _FRAMING)
values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
fields = st.lists(st.tuples(names, values), max_size=8)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[str, str]], bytes, bool]:
    """(wire bytes, status, headers, body, needs EOF) of a valid response."""
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 429, 500, 503]))
    headers = draw(fields)
    body = b"" if status in (204, 304) else draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "eof"]))
    interim = draw(st.integers(0, 2))
    wire = [b"HTTP/1.1 100 Continue\r\n\r\n"] * interim
    wire.append(b"HTTP/1.1 %d Reason Phrase\r\n" % status)
    wire += [f"{n}: {v}\r\n".encode() for n, v in headers]
    if framing == "length":
        wire.append(b"Content-Length: %d\r\n\r\n" % len(body))
        wire.append(body)
    elif framing == "chunked":
        wire.append(b"Transfer-Encoding: chunked\r\n\r\n")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        wire.append(encode_chunked(pieces))
    else:
        wire.append(b"\r\n")
        wire.append(body)
    needs_eof = framing == "eof" and status not in (204, 304)
    return b"".join(wire), status, headers, body, needs_eof


def feed(pieces: list[bytes], eof: bool) -> Parsed:
    conn = awaiting()
    events: list[Event] = []
    for piece in pieces:
        events += conn.receive_data(piece)
    if eof:
        events += conn.receive_data(b"")
    return collect(events)


@settings(max_examples=300, deadline=None)
@given(responses(), st.lists(st.integers(0, 2000), max_size=8))
def test_any_split_parses_the_same(
    response: tuple[bytes, int, list[tuple[str, str]], bytes, bool], cuts: list[int]
) -> None:
    wire, status, headers, body, needs_eof = response
    whole = feed([wire], needs_eof)
    assert whole.response.status == status
    assert whole.body == body
    sent = [(n.lower(), v) for n, v in headers]
    assert [h for h in whole.response.headers if h[0] not in _FRAMING] == sent
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert feed([p for p in pieces if p], needs_eof) == whole
    assert feed([wire[i : i + 1] for i in range(len(wire))], needs_eof) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=6), fields)
def test_chunked_round_trip(chunks: list[bytes], trailers: list[tuple[str, str]]) -> None:
    parsed = parse(CHUNKED_HEAD + encode_chunked(chunks, trailers))
    assert parsed.body == b"".join(chunks)
    assert list(parsed.trailers) == [(n.lower(), v) for n, v in trailers]


_PREFIXES = [b"", b"HTTP/1.1 200 OK\r\n", CHUNKED_HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_PREFIXES), st.lists(st.binary(max_size=64), max_size=6), st.booleans())
def test_garbage_raises_only_protocol_errors(prefix: bytes, pieces: list[bytes], eof: bool) -> None:
    conn = awaiting(Limits(max_head_bytes=256, max_headers=4, max_body_bytes=64))
    try:
        for piece in [prefix, *pieces]:
            if piece:
                conn.receive_data(piece)
        if eof:
            conn.receive_data(b"")
    except H1ProtocolError:
        assert conn.state is State.ERROR and not conn.keep_alive


def _field_ok(name: str, value: str) -> bool:
    token = bool(name) and all(c in _TOKEN_CHARS for c in name)
    framing = name.lower() in {"host", "content-length", "transfer-encoding"}
    return token and not framing and not any(c in value for c in "\r\n\x00")


_NASTY = _TOKEN_CHARS[:20] + " :\r\n\x00\tHoSt-CONTENT-LENGTHtransfer-encoding"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.text(_NASTY, max_size=16), st.text(_NASTY, max_size=8)), max_size=5))
def test_request_header_checks_accept_exactly_the_valid_fields(
    headers: list[tuple[str, str]],
) -> None:
    """The bulk check in encode_request agrees with a per-field reading of the rules."""
    valid = all(_field_ok(n, v) for n, v in headers)
    try:
        data = encode_request("POST", "/rpc/x", host="h", headers=headers, body=b"")
    except LocalProtocolError:
        assert not valid
        return
    assert valid
    lines = data.split(b"\r\n")
    assert lines[4 : 4 + len(headers)] == [f"{n}: {v}".encode() for n, v in headers]
    assert lines[4 + len(headers) :] == [b"", b""]


# -- receive_whole: the one-read answer, the same as receive_data ---------------------

_WHOLE_CASES = [
    # (answer, taken by receive_whole)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b \r\n\r\nhello", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}", True),
    (b"HTTP/1.1 503 \r\nContent-Length: 1\r\nRetry-After: 3\r\n\r\nx", True),
    (b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, Close\r\n\r\nok", True),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
    # everything below is left to receive_data
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", False),  # split: more to come
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", False),  # extra
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\nok", False),  # over the limit
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\n\r\nuntil eof", False),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 101 Switching\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n\r\nok", False),  # bare LF
    (b"HTTP/1.1 200 OK\r\nX-A: \x00\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\n folded\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n  more\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    (b"garbage\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", False),  # no end of head yet
]


def _feed(codec: ClientConnection, data: bytes) -> tuple[str, object]:
    try:
        return "events", codec.receive_data(data)
    except H1ProtocolError as exc:
        return "error", exc.code


@pytest.mark.parametrize(("data", "taken"), _WHOLE_CASES)
def test_receive_whole_matches_receive_data(data: bytes, taken: bool) -> None:
    limits = Limits(max_body_bytes=1000, max_headers=10)
    whole, general = ClientConnection(limits), ClientConnection(limits)
    whole.begin_request()
    general.begin_request()
    got = whole.receive_whole(data)
    expected = _feed(general, data)
    assert (got is not None) == taken
    if got is None:
        # Nothing changed: receive_data then does exactly what it does on a fresh codec.
        assert (whole.state, whole.keep_alive, whole.response_started) == (
            State.AWAIT_HEAD,
            True,
            False,
        )
        assert _feed(whole, data) == expected
    else:
        kind, events = expected
        assert kind == "events"
        assert isinstance(events, list)
        response, body = got
        assert events[0] == response
        assert b"".join(e.data for e in events if isinstance(e, Data)) == body
        assert isinstance(events[-1], EndOfMessage)
        assert len(events) == (3 if body else 2)
    assert (whole.state, whole.keep_alive, whole.response_started) == (
        general.state,
        general.keep_alive,
        general.response_started,
    )
    if whole.state is State.DONE and whole.keep_alive:
        whole.start_next_cycle()
        whole.begin_request()
        assert whole.receive_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!") is not None


def test_receive_whole_only_at_the_start_of_an_answer() -> None:
    codec = ClientConnection()
    assert codec.receive_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") is None  # idle
    codec.begin_request()
    assert codec.receive_data(b"HTTP/1.1 200 OK\r\n") == []
    # Part of the head is buffered: the rest is not a whole answer of its own.
    assert codec.receive_whole(b"Content-Length: 0\r\n\r\n") is None
    assert [type(e) for e in codec.receive_data(b"Content-Length: 0\r\n\r\n")] == [
        Response,
        EndOfMessage,
    ]
