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
traceparent  W3C trace context: 2-32-16-2 lowercase hex       26 bytes
             digits joined by ``-``
template:T   template T with a number or text in each hole     per hole: a zigzag varint
                                                                or an HPACK string
echo         (RESPONSE only) the request's first field of      nothing
             this name
===========  ================================================  =====================

A *template* kind is ``template:`` followed by a template: literal text with
holes, for header values of a fixed shape whose parts vary, such as
``app;dur={1}, db;dur={1}``. A hole ``{N}`` (N = 0-9, the fraction digits of a
decimal number) carries ``zigzag(value * 10^N)``; a hole ``{s}`` carries text
as an HPACK string literal; see ``ValueTemplate``.

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

from hpack.exceptions import HPACKDecodingError
from hpack.hpack import decode_integer, encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman

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
TRACEPARENT = "traceparent"
TEMPLATE = "template"
ECHO = "echo"
KINDS = (
    HEX, HEX_UPPER, UUID, UUID_UPPER, TIME_MS, TIME_S, UINT, BASE64URL, BASE64, TRACEPARENT,
    TEMPLATE, ECHO,
)  # fmt: skip
#: A template kind is this prefix and a template.
TEMPLATE_PREFIX = TEMPLATE + ":"

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
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: Limits of a template: its length, holes, and digits per number.
MAX_TEMPLATE_CHARS = 128
MAX_TEMPLATE_HOLES = 8
MAX_NUMBER_DIGITS = 16
_HOLE = re.compile(r"\{([0-9s])\}")
#: The ``fractions`` entry of a text hole ``{s}``.
TEXT_HOLE = -1
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@dataclass(frozen=True)
class ValueTemplate:
    """A value shape with holes: ``literals[0] hole literals[1] ... hole literals[n]``.

    A hole ``{N}`` matches a canonical decimal with exactly N fraction digits:
    an optional ``-``, the integer part without leading zeros (``0`` alone
    allowed), then ``.`` and N digits when N > 0; not ``-0`` (nor ``-0.00``),
    at most 16 digits. Its wire form is ``zigzag(value * 10^N)``, so
    ``38.9`` in a ``{1}`` hole is zigzag(389) = 778. A hole ``{s}`` matches
    the shortest non-empty text up to the next literal (the rest of the value
    when it is last) and travels as an HPACK string literal (Huffman-coded
    when shorter). Matching is left to right, so the template is refused
    when a ``{0}`` hole is followed by a digit or two holes touch.
    """

    literals: tuple[str, ...]
    fractions: tuple[int, ...]

    @staticmethod
    def parse(template: str) -> ValueTemplate:
        """The template of ``template`` (ValueError naming the problem)."""
        if len(template) > MAX_TEMPLATE_CHARS or not template.isascii():
            raise ValueError(f"a template must be ASCII of <= {MAX_TEMPLATE_CHARS} chars")
        parts = _HOLE.split(template)
        literals = tuple(parts[0::2])
        fractions = tuple(TEXT_HOLE if n == "s" else int(n) for n in parts[1::2])
        if not fractions or len(fractions) > MAX_TEMPLATE_HOLES:
            raise ValueError(f"template needs 1-{MAX_TEMPLATE_HOLES} holes: {template!r}")
        for i, literal in enumerate(literals):
            if "{" in literal or "}" in literal or not literal.isprintable():
                raise ValueError(f"template {template!r}: bad literal {literal!r}")
            if 0 < i < len(literals) - 1 and not literal:
                raise ValueError(f"template {template!r}: two holes touch")
            if i > 0 and fractions[i - 1] == 0 and literal[:1].isdigit():
                raise ValueError(f"template {template!r}: a digit follows a {{0}} hole")
        return ValueTemplate(literals, fractions)

    def encode(self, value: str) -> bytes | None:
        """The holes' wire forms, or None when ``value`` does not have this shape."""
        literals = self.literals
        if not value.startswith(literals[0]):
            return None
        at = len(literals[0])
        out = bytearray()
        for fraction, literal in zip(self.fractions, literals[1:], strict=True):
            if fraction == TEXT_HOLE:
                end = value.find(literal, at + 1) if literal else len(value)
                if end <= at:
                    return None
                out += hpack_string(value[at:end].encode())
                at = end + len(literal)
                continue
            number, at = _scan_number(value, at, fraction)
            if number is None or not value.startswith(literal, at):
                return None
            out += encode_varint(_zigzag(number))
            at += len(literal)
        return bytes(out) if at == len(value) else None

    def decode(self, section: bytes, offset: int) -> tuple[str, int]:
        """The value whose holes start at ``offset``; (value, next offset)."""
        text = [self.literals[0]]
        for fraction, literal in zip(self.fractions, self.literals[1:], strict=True):
            if fraction == TEXT_HOLE:
                hole, offset = _read_hpack_string(section, offset)
                text += (hole, literal)
                continue
            zigzag, offset = decode_varint_complete(section, offset)
            number = _unzigzag(zigzag)
            if abs(number) >= 10**MAX_NUMBER_DIGITS:
                raise ProtocolError(ErrorCode.FIELD_ERROR, f"typed number {number} out of range")
            text += (_number_text(number, fraction), literal)
        return "".join(text), offset


def _scan_number(value: str, at: int, fraction: int) -> tuple[int | None, int]:
    """The canonical number of ``fraction`` fraction digits at ``value[at:]``, and its end."""
    start = at
    negative = value.startswith("-", at)
    at += negative
    digits_start = at
    while at < len(value) and value[at].isdigit() and value[at].isascii():
        at += 1
    whole = value[digits_start:at]
    if not whole or (len(whole) > 1 and whole[0] == "0"):
        return None, start
    digits = whole
    if fraction:
        frac = value[at + 1 : at + 1 + fraction]
        if not value.startswith(".", at) or len(frac) != fraction or not frac.isdigit():
            return None, start
        if not frac.isascii():
            return None, start
        digits += frac
        at += 1 + fraction
    if len(digits) > MAX_NUMBER_DIGITS or (negative and int(digits) == 0):
        return None, start
    return (-int(digits) if negative else int(digits)), at


def hpack_string(raw: bytes) -> bytes:
    """An HPACK string literal (RFC 7541 5.2), Huffman-coded when that is shorter."""
    coded = _HUFFMAN.encode(raw)
    if len(coded) < len(raw):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(raw), 7)) + raw


def _read_hpack_string(section: bytes, offset: int) -> tuple[str, int]:
    """The text of the HPACK string literal at ``offset`` (FIELD_ERROR when malformed)."""
    if offset >= len(section):
        raise ProtocolError(ErrorCode.FIELD_ERROR, "typed text runs past the section")
    try:
        length, used = decode_integer(section[offset:], 7)
    except HPACKDecodingError as exc:
        raise ProtocolError(ErrorCode.FIELD_ERROR, "typed text length") from exc
    start = offset + used
    if start + length > len(section):
        raise ProtocolError(ErrorCode.FIELD_ERROR, "typed text runs past the section")
    raw = section[start : start + length]
    try:
        text = (decode_huffman(raw) if section[offset] & 0x80 else raw).decode()
    except (HPACKDecodingError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.FIELD_ERROR, "typed text is not valid") from exc
    return text, start + length


def _number_text(number: int, fraction: int) -> str:
    sign = "-" if number < 0 else ""
    whole, part = divmod(abs(number), 10**fraction)
    return f"{sign}{whole}.{part:0{fraction}d}" if fraction else f"{sign}{whole}"


_TEMPLATES: dict[str, ValueTemplate] = {}


def value_template(kind: str) -> ValueTemplate | None:
    """The template of a ``template:`` kind (None for other kinds; ValueError if invalid)."""
    if not kind.startswith(TEMPLATE_PREFIX):
        return None
    template = _TEMPLATES.get(kind)
    if template is None:
        template = ValueTemplate.parse(kind[len(TEMPLATE_PREFIX) :])
        if len(_TEMPLATES) < 4096:  # presets are few; bound the cache anyway
            _TEMPLATES[kind] = template
    return template


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
    elif kind == TRACEPARENT:
        return bytes.fromhex(value.replace("-", "")) if _TRACEPARENT.fullmatch(value) else None
    elif kind.startswith(TEMPLATE_PREFIX):
        template = value_template(kind)
        return None if template is None else template.encode(value)
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
    if kind == TRACEPARENT:
        if offset + 26 > end:
            raise ProtocolError(ErrorCode.FIELD_ERROR, "typed traceparent runs past the section")
        h = section[offset : offset + 26].hex()
        return f"{h[:2]}-{h[2:34]}-{h[34:50]}-{h[50:]}", offset + 26
    template = value_template(kind)
    if template is not None:
        return template.decode(section, offset)
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
        try:
            template = value_template(kind)
        except ValueError as exc:
            return f"typed field {name!r}: {exc}"
        if template is None and (kind not in KINDS or kind == TEMPLATE):
            known = ", ".join(k if k != TEMPLATE else TEMPLATE_PREFIX + "TEMPLATE" for k in KINDS)
            return f"typed field {name!r}: unknown kind {kind!r} (known: {known})"
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
