"""Typed header fields: compact binary forms for ids, timestamps and numbers.

Unique per-message values are HPACK's worst case: a 32-hex-digit trace id
costs ~24 bytes as a Huffman literal and can never be indexed. MMTP sends
headers that a connection's preset declares as *typed*, when their value is
in the canonical form of the declared kind, in a *typed section* instead
(frame flag ``FLAG_TYPED``)::

    typed section = varint length, then entries: varint key, value

The preset's ``typed`` list (``channel/wire/presets.py``) numbers the entries:
key *k* is the *k*-th ``[name, kind]`` pair (1-based). The generic list
(``GENERIC_TYPED``, presets 0 and 1 and any preset file without a ``typed``
list) is::

    1 trace-id hex   2 ts time-ms   3 server-time time-ms   4 sign hex
    5 trace-id echo  6 request-id hex

Kinds and their value encodings (spec section 9.8):

===========  ================================================  =====================
kind         canonical header value                            wire value
===========  ================================================  =====================
hex          lowercase hex, even length, 2-128 digits          v n, n bytes
hex-upper    uppercase hex, even length, 2-128 digits          v n, n bytes
uuid         lowercase 8-4-4-4-12 hex                          16 bytes
uuid-upper   uppercase 8-4-4-4-12 hex                          16 bytes
time-ms      decimal ms, no leading zero, < 10^16              zigzag(value - epoch_ms)
time-s       decimal s, no leading zero, < 10^13               zigzag(value - epoch_ms // 1000)
uint         decimal, no leading zero, < 2^56                  varint value
base64url    unpadded base64url of 1-64 bytes                  v n, n bytes
base64       padded standard base64 of 1-64 bytes              v n, n bytes
echo         (RESPONSE only) the request's first field of      nothing
             this name
===========  ================================================  =====================

The *epoch* of a direction is the time its sender announced in its handshake
frame (HELLO ``client_time_ms`` for client to server, HELLO_ACK
``server_time_ms`` for server to client; 0 if absent), so both ends know it
before the first typed field. Values not in canonical form travel through
HPACK unchanged. Decoded typed headers follow the HPACK-coded ones, in
section order.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.varint import MAX_VARINT, decode_varint_complete, encode_varint

Header = tuple[str, str]
TypedFields = tuple[tuple[str, str], ...]

HEX = "hex"
HEX_UPPER = "hex-upper"
UUID = "uuid"
UUID_UPPER = "uuid-upper"
TIME_MS = "time-ms"
TIME_S = "time-s"
UINT = "uint"
BASE64URL = "base64url"
BASE64 = "base64"
ECHO = "echo"
KINDS = (HEX, HEX_UPPER, UUID, UUID_UPPER, TIME_MS, TIME_S, UINT, BASE64URL, BASE64, ECHO)

#: The generic typed fields: presets 0 and 1, and preset files without a ``typed`` list.
GENERIC_TYPED: TypedFields = (
    ("trace-id", HEX),
    ("ts", TIME_MS),
    ("server-time", TIME_MS),
    ("sign", HEX),
    ("trace-id", ECHO),
    ("request-id", HEX),
)
TRACE_ID = "trace-id"
#: Longest byte string a hex or base64 field carries.
MAX_TYPED_BYTES = 64
MAX_HEX_BYTES = MAX_TYPED_BYTES
#: Most entries a preset's typed list may have (keys stay one byte).
MAX_TYPED_FIELDS = 64
_MAX_TIME_MS = 10**16
_MAX_TIME_S = 10**13
_UUID_LOWER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_UPPER = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
_HEX_LOWER = frozenset("0123456789abcdef")
_HEX_UPPER = frozenset("0123456789ABCDEF")
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


# ----------------------------------------------------------------- canonical forms


def _decimal(value: str, limit: int) -> int | None:
    """The value of a canonical decimal (ASCII digits, no leading zero, < limit)."""
    if not value or len(value) > 17 or not value.isascii() or not value.isdigit():
        return None
    if len(value) > 1 and value[0] == "0":
        return None
    number = int(value)
    return number if number < limit else None


def _hex_bytes(value: str, digits: frozenset[str]) -> bytes | None:
    if 0 < len(value) <= 2 * MAX_TYPED_BYTES and len(value) % 2 == 0 and digits.issuperset(value):
        return bytes.fromhex(value)
    return None


def _b64_bytes(value: str, url: bool) -> bytes | None:
    """Decoded bytes of a canonical base64(url) value: re-encoding gives it back."""
    if not value or len(value) > 4 * ((MAX_TYPED_BYTES + 2) // 3):
        return None
    if url:
        if not _B64URL.issuperset(value) or len(value) % 4 == 1:
            return None
        padded = value + "=" * (-len(value) % 4)
    else:
        body = value.rstrip("=")
        if len(value) % 4 or len(value) - len(body) > 2 or not _B64.issuperset(body):
            return None
        padded = value
    try:
        raw = base64.b64decode(padded, altchars=b"-_" if url else None, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not 0 < len(raw) <= MAX_TYPED_BYTES or _b64_text(raw, url) != value:
        return None
    return raw


def _b64_text(raw: bytes, url: bool) -> str:
    if url:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return base64.b64encode(raw).decode()


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def encode_value(kind: str, value: str, epoch_ms: int) -> bytes | None:
    """The wire form of ``value`` as ``kind`` (None: not canonical, it goes through HPACK)."""
    raw: bytes | None
    if kind in (HEX, HEX_UPPER):
        raw = _hex_bytes(value, _HEX_LOWER if kind == HEX else _HEX_UPPER)
    elif kind in (BASE64URL, BASE64):
        raw = _b64_bytes(value, kind == BASE64URL)
    elif kind in (UUID, UUID_UPPER):
        pattern = _UUID_LOWER if kind == UUID else _UUID_UPPER
        return bytes.fromhex(value.replace("-", "")) if pattern.fullmatch(value) else None
    elif kind in (TIME_MS, TIME_S):
        number = _decimal(value, _MAX_TIME_MS if kind == TIME_MS else _MAX_TIME_S)
        if number is None:
            return None
        epoch = epoch_ms if kind == TIME_MS else epoch_ms // 1000
        delta = _zigzag(number - epoch)
        return encode_varint(delta) if delta <= MAX_VARINT else None
    elif kind == UINT:
        number = _decimal(value, MAX_VARINT + 1)
        return None if number is None else encode_varint(number)
    else:
        return None
    if raw is None:
        return None
    return encode_varint(len(raw)) + raw


def decode_value(kind: str, section: bytes, offset: int, epoch_ms: int) -> tuple[str, int]:
    """Decode one value of ``kind`` at ``offset``; return (header value, next offset)."""
    end = len(section)
    if kind in (HEX, HEX_UPPER, BASE64URL, BASE64):
        length, offset = decode_varint_complete(section, offset)
        if not 0 < length <= MAX_TYPED_BYTES or offset + length > end:
            raise ProtocolError(ErrorCode.FIELD_ERROR, f"typed {kind} length {length}")
        raw = section[offset : offset + length]
        if kind == HEX:
            text = raw.hex()
        elif kind == HEX_UPPER:
            text = raw.hex().upper()
        else:
            text = _b64_text(raw, kind == BASE64URL)
        return text, offset + length
    if kind in (UUID, UUID_UPPER):
        if offset + 16 > end:
            raise ProtocolError(ErrorCode.FIELD_ERROR, "typed uuid runs past the section")
        h = section[offset : offset + 16].hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return (text if kind == UUID else text.upper()), offset + 16
    number, offset = decode_varint_complete(section, offset)
    if kind == UINT:
        return str(number), offset
    epoch = epoch_ms if kind == TIME_MS else epoch_ms // 1000
    limit = _MAX_TIME_MS if kind == TIME_MS else _MAX_TIME_S
    value = epoch + _unzigzag(number)
    if not 0 <= value < limit:
        raise ProtocolError(ErrorCode.FIELD_ERROR, f"typed time {value} out of range")
    return str(value), offset


# ---------------------------------------------------------------------- the table


@dataclass(frozen=True)
class TypedTable:
    """A preset's typed fields: key k is ``fields[k - 1]``."""

    fields: TypedFields
    #: Name -> (key, kind) of the non-echo entries.
    by_name: dict[str, tuple[int, str]] = field(init=False, repr=False, compare=False)
    #: The echo entry's key and name (0, "" if the table has none).
    echo_key: int = field(init=False, compare=False)
    echo_name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        problem = typed_fields_problem(self.fields)
        if problem:
            raise ValueError(problem)
        by_name: dict[str, tuple[int, str]] = {}
        echo_key, echo_name = 0, ""
        for key, (name, kind) in enumerate(self.fields, start=1):
            if kind == ECHO:
                echo_key, echo_name = key, name
            else:
                by_name[name] = (key, kind)
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(self, "echo_key", echo_key)
        object.__setattr__(self, "echo_name", echo_name)

    def echo_value_of(self, headers: Sequence[Header]) -> str | None:
        """The value an ECHO in the answer to a request with ``headers`` stands for."""
        name = self.echo_name
        if not name:
            return None
        for header_name, value in headers:
            if header_name == name:
                return value
        return None

    def split(
        self, headers: Sequence[Header], epoch_ms: int, echo_value: str | None = None
    ) -> tuple[tuple[Header, ...], bytes]:
        """Separate headers that have a typed form; return (rest for HPACK, typed section)."""
        rest: list[Header] = []
        typed = bytearray()
        by_name = self.by_name
        for header in headers:
            name, value = header
            if echo_value is not None and name == self.echo_name and value == echo_value:
                typed += encode_varint(self.echo_key)
                continue
            entry = by_name.get(name)
            if entry is not None:
                wire = encode_value(entry[1], value, epoch_ms)
                if wire is not None:
                    typed += encode_varint(entry[0]) + wire
                    continue
            rest.append(header)
        return tuple(rest), bytes(typed)

    def decode(
        self, section: bytes, epoch_ms: int, echo_value: str | None, max_list_size: int
    ) -> list[Header]:
        """Decode a typed section into headers; unknown keys are a FIELD_ERROR.

        Decoded headers count against ``max_list_size`` (RFC 7541 sizes) like
        HPACK ones: a one-byte echo entry expands to a whole value.
        """
        headers: list[Header] = []
        offset = 0
        end = len(section)
        list_size = 0
        fields = self.fields
        while offset < end:
            key, offset = decode_varint_complete(section, offset)
            if not 1 <= key <= len(fields):
                raise ProtocolError(ErrorCode.FIELD_ERROR, f"unknown typed field key {key}")
            name, kind = fields[key - 1]
            if kind == ECHO:
                if echo_value is None:
                    raise ProtocolError(
                        ErrorCode.FIELD_ERROR, f"{name} echo with no {name} on the request"
                    )
                value = echo_value
            else:
                value, offset = decode_value(kind, section, offset, epoch_ms)
            headers.append((name, value))
            list_size += len(name.encode()) + len(value.encode()) + 32
            if list_size > max_list_size:
                raise ProtocolError(
                    ErrorCode.HEADER_LIST_TOO_LARGE,
                    f"typed fields exceed max_header_list_size {max(max_list_size, 0)}",
                )
        return headers


def typed_fields_problem(fields: TypedFields) -> str:
    """Why a preset's typed list is invalid ("" if it is fine)."""
    if len(fields) > MAX_TYPED_FIELDS:
        return f"a preset declares at most {MAX_TYPED_FIELDS} typed fields, got {len(fields)}"
    seen: set[str] = set()
    echoes = 0
    for name, kind in fields:
        if kind not in KINDS:
            return f"typed field {name!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})"
        if not _NAME.fullmatch(name):
            return f"typed field name {name!r} must be a lowercase header name"
        if kind == ECHO:
            echoes += 1
            if echoes > 1:
                return "a preset declares at most one echo field"
        elif name in seen:
            return f"typed field {name!r} is declared twice"
        else:
            seen.add(name)
    return ""


_TABLES: dict[TypedFields, TypedTable] = {}


def typed_table(fields: TypedFields) -> TypedTable:
    """The (shared) table of a typed list."""
    table = _TABLES.get(fields)
    if table is None:
        table = _TABLES[fields] = TypedTable(fields)
    return table


GENERIC_TABLE = typed_table(GENERIC_TYPED)


def split_typed(
    headers: Sequence[Header], epoch_ms: int, echo_trace_id: str | None = None
) -> tuple[tuple[Header, ...], bytes]:
    """``GENERIC_TABLE.split`` (tools that think in the generic fields)."""
    return GENERIC_TABLE.split(headers, epoch_ms, echo_trace_id)


def trace_id_of(headers: Sequence[Header]) -> str | None:
    return GENERIC_TABLE.echo_value_of(headers)
