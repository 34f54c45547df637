"""The ClientHello reader: real ClientHellos, every split, malformed input, fuzzing."""

from __future__ import annotations

import ssl
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.security.clienthello import (
    MAX_CLIENT_HELLO_BYTES,
    ClientHello,
    MalformedClientHello,
    fatal_alert,
    read_client_hello,
)


def client_hello_bytes(alpn: list[str] | None, *, tls12: bool = False) -> bytes:
    """The first flight of a real Python ``ssl`` client (its ClientHello records)."""
    return _client_hello_bytes(tuple(alpn) if alpn is not None else None, tls12)


@cache
def _client_hello_bytes(alpn: tuple[str, ...] | None, tls12: bool) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn is not None:
        context.set_alpn_protocols(list(alpn))
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def records(message: bytes, sizes: list[int]) -> bytes:
    """``message`` (a handshake message) re-framed as handshake records of ``sizes``."""
    out = bytearray()
    offset = 0
    for size in sizes:
        chunk = message[offset : offset + size]
        if not chunk:
            break
        out += bytes((22, 3, 1)) + len(chunk).to_bytes(2, "big") + chunk
        offset += len(chunk)
    if offset < len(message):
        rest = message[offset:]
        out += bytes((22, 3, 1)) + len(rest).to_bytes(2, "big") + rest
    return bytes(out)


def handshake_message(flight: bytes) -> bytes:
    """The handshake message inside a one-record ClientHello flight."""
    return flight[5 : 5 + int.from_bytes(flight[3:5], "big")]


@pytest.mark.parametrize(
    ("alpn", "expected"),
    [
        (["mmtp/1"], (b"mmtp/1",)),
        (["h2"], (b"h2",)),
        (["h2", "mmtp/1"], (b"h2", b"mmtp/1")),
        (None, None),
    ],
)
def test_real_client_hellos(alpn: list[str] | None, expected: tuple[bytes, ...] | None) -> None:
    for tls12 in (False, True):
        flight = client_hello_bytes(alpn, tls12=tls12)
        assert read_client_hello(flight) == ClientHello(expected)
        # Every prefix is "not yet", never an error or a wrong answer.
        assert all(read_client_hello(flight[:n]) is None for n in range(len(flight)))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=20))
def test_a_client_hello_split_over_records(sizes: list[int]) -> None:
    message = handshake_message(client_hello_bytes(["h2", "mmtp/1"]))
    flight = records(message, sizes)
    assert read_client_hello(flight) == ClientHello((b"h2", b"mmtp/1"))


def _with_extensions(extensions: bytes) -> bytes:
    body = (
        b"\x03\x03"
        + b"\x00" * 32
        + b"\x00"  # no session id
        + b"\x00\x02\x13\x01"  # one suite
        + b"\x01\x00"  # null compression
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(message, [len(message)])


def _alpn_extension(names: list[bytes]) -> bytes:
    listed = b"".join(bytes((len(n),)) + n for n in names)
    body = len(listed).to_bytes(2, "big") + listed
    return b"\x00\x10" + len(body).to_bytes(2, "big") + body


def test_hand_made_alpn_among_other_extensions() -> None:
    other = b"\x00\x00\x00\x00"  # server_name, empty
    flight = _with_extensions(other + _alpn_extension([b"mmtp/1"]) + other)
    assert read_client_hello(flight) == ClientHello((b"mmtp/1",))


@pytest.mark.parametrize(
    "flight",
    [
        b"\x17\x03\x03\x00\x01\x00",  # application data first
        b"\x16\x02\x00\x00\x01\x00",  # SSL 2-style version byte
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01" + b"\x00" * (1 << 14 | 1),  # fragment over 2**14
        records(b"\x02\x00\x00\x00", [4]),  # a ServerHello
        records(b"\x01" + (MAX_CLIENT_HELLO_BYTES + 1).to_bytes(3, "big"), [4]),
        _with_extensions(_alpn_extension([b"a"]) + _alpn_extension([b"b"])),
        _with_extensions(_alpn_extension([b""])),
        _with_extensions(b"\x00\x10\x00\x02\x00\x00"),  # an empty protocol list
        _with_extensions(b"\x00\x10\x00\x05\x00\x02\x01a"),  # a name past its list
        records(b"\x01\x00\x00\x05\x03\x03\x00\x00\x00", [9]),  # random cut short
    ],
    ids=[
        "application-data",
        "ssl2-version",
        "empty-record",
        "record-too-long",
        "server-hello",
        "client-hello-too-long",
        "two-alpn",
        "empty-name",
        "empty-list",
        "name-past-list",
        "truncated-body",
    ],
)
def test_malformed_starts_are_refused(flight: bytes) -> None:
    with pytest.raises(MalformedClientHello):
        read_client_hello(flight)


def test_fatal_alert_record() -> None:
    assert fatal_alert(120) == bytes.fromhex("15 03 03 00 02 02 78")


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_give_an_answer_or_malformed(data: bytes) -> None:
    try:
        result = read_client_hello(data)
    except MalformedClientHello:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=1000, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 600),
)
def test_mutated_real_client_hellos_give_an_answer_or_malformed(
    flips: list[tuple[int, int]], cut: int
) -> None:
    flight = bytearray(client_hello_bytes(["h2", "mmtp/1"]))
    for position, value in flips:
        flight[position % len(flight)] = value
    try:
        result = read_client_hello(bytes(flight[: max(cut, 5)]))
    except MalformedClientHello:
        return
    assert result is None or isinstance(result, ClientHello)
