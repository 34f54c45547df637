"""Read the ALPN protocols a TLS ClientHello offers, before OpenSSL answers it.

Python's ``ssl`` cannot fail a handshake whose client offers no ALPN protocol
we speak: OpenSSL goes on without ALPN. MMTP requires the handshake to fail
(spec section 3.2, RFC 7301 section 3.2: alert ``no_application_protocol``).
The gateway's TLS engine sees the ClientHello bytes before OpenSSL does, so it
reads them here and refuses such a client itself.

Sans-I/O and bounded: ``read_client_hello(data)`` takes the bytes received so
far (TLS records from the start of the connection) and returns ``None`` while
the ClientHello is incomplete, a ``ClientHello`` once it is whole, or raises
``MalformedClientHello``. A ClientHello longer than ``MAX_CLIENT_HELLO_BYTES``
is malformed here: real ones are 200 bytes to ~2 KB (post-quantum key shares
included), and this bounds what a connection makes us buffer before TLS.
The grammar is RFC 8446 section 4.1.2.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest ClientHello handshake message accepted (its body, after the 4-byte header).
MAX_CLIENT_HELLO_BYTES = 16 * 1024
#: TLS record and handshake constants (RFC 8446 sections 5.1 and 4).
_RECORD_HEADER = 5
_HANDSHAKE_RECORD = 22
_MAX_RECORD_FRAGMENT = 1 << 14
_CLIENT_HELLO = 1
_EXTENSION_ALPN = 16

#: Alert descriptions (RFC 8446 section 6): what a refused client is told.
ALERT_DECODE_ERROR = 50
ALERT_NO_APPLICATION_PROTOCOL = 120


class MalformedClientHello(ValueError):
    """The bytes are not the start of a TLS connection this reader understands."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    #: Protocols of the ALPN extension, in the client's order; None: no ALPN extension.
    alpn_protocols: tuple[bytes, ...] | None


def fatal_alert(description: int) -> bytes:
    """A plaintext fatal alert record (before ServerHello nothing is encrypted)."""
    return bytes((21, 3, 3, 0, 2, 2, description))


def read_client_hello(data: bytes | bytearray) -> ClientHello | None:
    """The ClientHello at the start of ``data``; None if more bytes are needed."""
    message = _handshake_message(data)
    if message is None:
        return None
    return ClientHello(_alpn_protocols(message))


def _handshake_message(data: bytes | bytearray) -> memoryview | None:
    """The ClientHello body, joined from as many handshake records as it spans.

    Record headers are walked first and nothing is copied until the message is
    whole, so a client trickling its ClientHello costs a few header reads per
    arrival, not a copy of everything so far.
    """
    records: list[tuple[int, int]] = []  # (start, size) of each complete record's fragment
    header = bytearray()  # the handshake header (type, 3-byte length), once 4 bytes are in
    total = 0
    offset = 0
    while True:
        if len(header) == 4:
            if header[0] != _CLIENT_HELLO:
                raise MalformedClientHello("the first handshake message is not a ClientHello")
            length = int.from_bytes(header[1:4], "big")
            if length > MAX_CLIENT_HELLO_BYTES:
                raise MalformedClientHello(f"ClientHello of {length} bytes")
            if total >= 4 + length:
                joined = b"".join(data[start : start + size] for start, size in records)
                return memoryview(joined)[4 : 4 + length]
        if len(data) - offset < _RECORD_HEADER:
            return None
        if data[offset] != _HANDSHAKE_RECORD or data[offset + 1] != 3:
            raise MalformedClientHello("not a TLS handshake record")
        size = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if not 0 < size <= _MAX_RECORD_FRAGMENT:
            raise MalformedClientHello(f"record of {size} bytes")
        start = offset + _RECORD_HEADER
        if len(data) - start < size:
            return None
        records.append((start, size))
        header += data[start : start + min(size, 4 - len(header))]
        total += size
        offset = start + size


class _Reader:
    """A cursor over the ClientHello body; every read checks the bounds."""

    __slots__ = ("data", "offset")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise MalformedClientHello("ClientHello field runs past its end")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> memoryview:
        return self.take(self.number(length_size))

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


def _alpn_protocols(message: memoryview) -> tuple[bytes, ...] | None:
    hello = _Reader(message)
    hello.take(2 + 32)  # legacy_version, random
    if len(hello.vector(1)) > 32:
        raise MalformedClientHello("legacy_session_id longer than 32 bytes")
    suites = hello.vector(2)
    if not suites or len(suites) % 2:
        raise MalformedClientHello("cipher_suites empty or of odd length")
    if not hello.vector(1):
        raise MalformedClientHello("no legacy_compression_methods")
    if hello.left == 0:
        return None  # no extensions at all (no TLS 1.3 client does this)
    extensions = _Reader(hello.vector(2))
    if hello.left:
        raise MalformedClientHello("bytes after the extensions")
    alpn: tuple[bytes, ...] | None = None
    while extensions.left:
        kind = extensions.number(2)
        body = extensions.vector(2)
        if kind == _EXTENSION_ALPN:
            if alpn is not None:
                raise MalformedClientHello("two ALPN extensions")
            alpn = _protocol_names(body)
    return alpn


def _protocol_names(body: memoryview) -> tuple[bytes, ...]:
    reader = _Reader(body)
    names_reader = _Reader(reader.vector(2))
    if reader.left:
        raise MalformedClientHello("bytes after the ALPN protocol list")
    names = []
    while names_reader.left:
        name = names_reader.vector(1)
        if not name:
            raise MalformedClientHello("empty ALPN protocol name")
        names.append(bytes(name))
    if not names:
        raise MalformedClientHello("empty ALPN protocol list")
    return tuple(names)
