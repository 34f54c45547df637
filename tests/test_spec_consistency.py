"""The tables and examples of ``protocol_spec/mmtp-v1.md`` against the code.

The specification was written from ``channel/wire/`` and must not drift from
it: every table that restates something the code defines (frame types and
flags, error codes, limits, HELLO / HELLO_ACK fields, SETTINGS ids, typed
field keys, preset 1, never-indexed names, state tables, protocol constants)
is parsed from the Markdown and compared with the code, and the hex examples
of sections 6 and 9.9 are rebuilt with the reference implementation and
looked up in the text. Tables are found by their section heading and their
column names, not by position, so editorial changes elsewhere do not break
these tests; a failure names the section and the row.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest
import zstandard

from channel.wire import frames, typed
from channel.wire import hello as hello_module
from channel.wire import messages as m
from channel.wire.body import MIN_COMPRESS_BYTES, BodyCodec
from channel.wire.connection import MAX_PING_PAYLOAD, Connection, Setting
from channel.wire.dictionaries import MAX_DICTIONARY_ID, Dictionary, DictionaryStore
from channel.wire.errors import CONNECTION_ERROR_CODES, ErrorCode, ProtocolError
from channel.wire.events import DictionaryReceived, Event
from channel.wire.fields import KIND_BYTES, KIND_VARINT, MAX_UNKNOWN_FIELDS, FieldSpec
from channel.wire.frames import ALLOWED_FLAGS, FrameType, encode_frame
from channel.wire.headers import MAX_SIZE_UPDATES, NEVER_INDEXED_NAMES, HeaderEncoder
from channel.wire.hello import Hello, HelloAck, decode_hello, decode_hello_ack
from channel.wire.limits import INITIAL_HEADER_TABLE_SIZE, Limits
from channel.wire.presets import ENTRY_OVERHEAD, MAX_PRESET_TABLE_BYTES, preset_entries
from channel.wire.state import RECEIVABLE, TRANSITIONS, Role, State
from channel.wire.varint import MAX_VARINT, MAX_VARINT_BYTES, encode_varint

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "protocol_spec" / "mmtp-v1.md"
DICT_PATH = ROOT / "protocol_spec" / "vectors" / "dict-7.mmtpdict"

_HEADING = re.compile(r"^(#{2,4})\s+(?:(\d+(?:\.\d+)*)\.?\s+)?(.*?)\s*$")


# --------------------------------------------------------------- Markdown parsing


@dataclass(frozen=True)
class Section:
    number: str  # "9.3", or "" for unnumbered headings
    title: str  # "Preset tables"
    body: str  # text up to the next heading of any level

    @property
    def label(self) -> str:
        return f"section {self.number} {self.title!r}" if self.number else repr(self.title)


@dataclass(frozen=True)
class Table:
    section: Section
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def records(self) -> Iterator[tuple[str, dict[str, str]]]:
        """Each row as ``(where, {column: cell})``; ``where`` names it in failure messages."""
        for number, row in enumerate(self.rows, 1):
            where = f"{self.section.label}, table row {number} ({' | '.join(row)})"
            yield where, dict(zip(self.columns, row, strict=True))


@cache
def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


@cache
def sections() -> tuple[Section, ...]:
    found: list[Section] = []
    number = title = ""
    body: list[str] = []
    in_code = False
    started = False
    for line in spec_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            if started:
                found.append(Section(number, title, "\n".join(body)))
            number, title, body, started = match.group(2) or "", match.group(3), [], True
        else:
            body.append(line)
    if started:
        found.append(Section(number, title, "\n".join(body)))
    return tuple(found)


def section(title: str) -> Section:
    """The one section whose heading title is ``title`` (without its number)."""
    matches = [s for s in sections() if s.title == title]
    assert len(matches) == 1, f"expected one section titled {title!r}, found {len(matches)}"
    return matches[0]


def _cells(line: str) -> tuple[str, ...]:
    inner = line.strip()
    assert inner.startswith("|") and inner.endswith("|"), line
    return tuple(cell.strip() for cell in inner[1:-1].split("|"))


def _tables_in(sec: Section) -> Iterator[Table]:
    lines = sec.body.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|--"):
            columns = _cells(lines[i])
            rows: list[tuple[str, ...]] = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                row = _cells(lines[i])
                assert len(row) == len(columns), (
                    f"{sec.label}: table row has {len(row)} cells, header has "
                    f"{len(columns)}: {lines[i]}"
                )
                rows.append(row)
                i += 1
            yield Table(sec, columns, tuple(rows))
        else:
            i += 1


def table(title: str, *columns: str) -> Table:
    """The one table with at least ``columns`` in a section titled ``title``."""
    candidates = [s for s in sections() if s.title == title]
    assert candidates, f"no section titled {title!r} in {SPEC_PATH.name}"
    found = [t for s in candidates for t in _tables_in(s) if all(c in t.columns for c in columns)]
    assert len(found) == 1, (
        f"expected one table with columns {columns} under a heading {title!r}, found {len(found)}"
    )
    return found[0]


def code_span(cell: str, where: str) -> str:
    match = re.search(r"`([^`]+)`", cell)
    assert match, f"{where}: expected a `code` name in {cell!r}"
    return match.group(1)


def leading_int(cell: str, where: str) -> int:
    match = re.match(r"\s*(\d+)", cell)
    assert match, f"{where}: expected a number at the start of {cell!r}"
    return int(match.group(1))


def power_expr(text: str, where: str) -> int:
    """``2^56 − 1`` / ``10^16`` / ``300`` as an int."""
    match = re.fullmatch(r"\s*(\d+)(?:\^(\d+))?(?:\s*[−-]\s*(\d+))?\s*", text)
    assert match, f"{where}: cannot read {text!r} as a number"
    value: int = int(match.group(1)) ** int(match.group(2) or 1)
    return value - int(match.group(3) or 0)


def assert_same_keys(
    label: str, in_spec: dict[Any, Any], in_code: dict[Any, Any], what: str
) -> None:
    missing = sorted(set(in_code) - set(in_spec), key=str)
    extra = sorted(set(in_spec) - set(in_code), key=str)
    assert not missing and not extra, (
        f"{label}: {what} missing from the spec: {missing}; in the spec but not the code: {extra}"
    )


# ------------------------------------------------------------------ frame types


def _flag_constant(frame_type: FrameType, flag: str) -> int | None:
    for name in (f"FLAG_{flag}", f"FLAG_{frame_type.name}_{flag}"):
        value = getattr(frames, name, None)
        if isinstance(value, int):
            return value
    return None


def test_frame_type_table_matches_frame_types_and_flags() -> None:
    tab = table("Frame types", "Type", "Name", "Flags", "Sent by", "Section")
    names: dict[int, str] = {}
    for where, row in tab.records():
        value = int(row["Type"], 16)
        names[value] = row["Name"]
        assert value in FrameType._value2member_map_, f"{where}: no FrameType {value:#x}"
        frame_type = FrameType(value)
        assert frame_type.name == row["Name"], f"{where}: code calls {value:#x} {frame_type.name}"
        flags = 0
        if row["Flags"] not in ("—", ""):
            for flag in row["Flags"].split(","):
                match = re.fullmatch(r"\s*([A-Z_]+)\s+0x([0-9a-fA-F]+)\s*", flag)
                assert match, f"{where}: cannot read flag {flag!r} (want 'NAME 0xN')"
                flag_name, flag_value = match.group(1), int(match.group(2), 16)
                constant = _flag_constant(frame_type, flag_name)
                assert constant == flag_value, (
                    f"{where}: flag {flag_name} is {constant!r} in frames.py, "
                    f"{flag_value:#x} in the spec"
                )
                flags |= flag_value
        allowed = ALLOWED_FLAGS.get(frame_type, 0)
        assert flags == allowed, (
            f"{where}: spec flags {flags:#x}, ALLOWED_FLAGS[{frame_type.name}] = {allowed:#x}"
        )
        receivers = {role for (role, _), types in RECEIVABLE.items() if frame_type in types}
        expected = {
            "client": {Role.SERVER},
            "server": {Role.CLIENT},
            "both": {Role.CLIENT, Role.SERVER},
        }.get(row["Sent by"])
        assert expected is not None, f"{where}: 'Sent by' must be client, server or both"
        assert receivers == expected, (
            f"{where}: sent by {row['Sent by']}, but state.RECEIVABLE lets "
            f"{sorted(r.value for r in receivers)} receive it"
        )
        target = [s for s in sections() if s.number == row["Section"]]
        assert target and frame_type.name in target[0].title, (
            f"{where}: section {row['Section']} should be the one describing {frame_type.name}"
        )
    assert_same_keys(tab.section.label, names, {t.value: t.name for t in FrameType}, "frame types")


# ------------------------------------------------------------------ error codes


def test_error_code_table_matches_error_codes() -> None:
    tab = table("Code table", "Code", "Name", "Level")
    codes: dict[int, str] = {}
    for where, row in tab.records():
        code = int(row["Code"])
        name = code_span(row["Name"], where)
        codes[code] = name
        assert code in ErrorCode._value2member_map_, f"{where}: no ErrorCode {code}"
        assert ErrorCode(code).name == name, f"{where}: code {code} is {ErrorCode(code).name}"
        level = row["Level"]
        if ErrorCode(code) in CONNECTION_ERROR_CODES:
            assert level == "conn", (
                f"{where}: {name} is in CONNECTION_ERROR_CODES, so its level must be 'conn'"
            )
        if "stream" in level:
            assert ErrorCode(code) not in CONNECTION_ERROR_CODES, (
                f"{where}: {name} may be a stream error but is in CONNECTION_ERROR_CODES"
            )
    assert_same_keys(tab.section.label, codes, {c.value: c.name for c in ErrorCode}, "codes")
    sentence = re.search(
        r"Codes (\d+)–(\d+) are the ones a receiver raises itself", tab.section.body
    )
    assert sentence, f"{tab.section.label}: the 'Codes N–M are the ones ...' sentence is gone"
    low, high = int(sentence.group(1)), int(sentence.group(2))
    assert set(range(low, high + 1)) == {c.value for c in CONNECTION_ERROR_CODES}, (
        f"{tab.section.label}: 'Codes {low}–{high}' differs from CONNECTION_ERROR_CODES"
    )


# ----------------------------------------------------------------------- limits

HELLO_SPECS: dict[int, FieldSpec] = {s.number: s for s in hello_module._H.values()}
ACK_SPECS: dict[int, FieldSpec] = {s.number: s for s in hello_module._A.values()}


def _limits_with(where: str, **values: int) -> Limits:
    try:
        return Limits(**values)
    except ValueError as exc:
        raise AssertionError(f"{where}: Limits({values}) is refused: {exc}") from None


def test_limits_table_matches_limits() -> None:
    tab = table("Limits", "Limit", "Default", "Minimum", "Announced by")
    defaults = Limits()
    own_limit_of_setting: dict[int, str] = Connection._OWN_LIMITS
    seen: dict[str, int] = {}
    for where, row in tab.records():
        name = code_span(row["Limit"], where)
        assert hasattr(defaults, name), f"{where}: Limits has no field {name}"
        seen[name] = leading_int(row["Default"], where)
        actual = getattr(defaults, name)
        assert seen[name] == actual, f"{where}: default {seen[name]}, Limits().{name} = {actual}"
        minimum = row["Minimum"]
        if minimum == "—":
            _limits_with(where, **{name: 0})
        else:
            low = leading_int(minimum, where)
            _limits_with(where, **{name: low})
            with pytest.raises(ValueError):
                Limits(**{name: low - 1})
        announced = row["Announced by"]
        for frame_name, specs in (("HELLO", HELLO_SPECS), ("HELLO_ACK", ACK_SPECS)):
            pattern = rf"(?<![A-Z_]){frame_name} #(\d+)"
            for number in map(int, re.findall(pattern, announced)):
                spec = specs.get(number)
                assert spec is not None and spec.name == name, (
                    f"{where}: {frame_name} field {number} is "
                    f"{spec.name if spec else 'undefined'}, not {name}"
                )
            for spec in specs.values():
                if spec.name == name:
                    assert f"{frame_name} #{spec.number}" in announced, (
                        f"{where}: {frame_name} field {spec.number} announces {name}; "
                        f"say '{frame_name} #{spec.number}'"
                    )
        for setting in map(int, re.findall(r"SETTINGS (\d+)", announced)):
            assert own_limit_of_setting.get(setting) == name, (
                f"{where}: SETTINGS {setting} does not change {name} in Connection"
            )
        for setting, field_name in own_limit_of_setting.items():
            if field_name == name:
                assert f"SETTINGS {setting}" in announced, (
                    f"{where}: SETTINGS id {setting} changes {name}; say 'SETTINGS {setting}'"
                )
    fields = {f.name: f.default for f in dataclasses.fields(Limits)}
    assert_same_keys(tab.section.label, seen, fields, "Limits fields")


def test_protocol_constants_table() -> None:
    tab = table("Limits", "Constant", "Value")
    values = {row["Constant"]: (where, row["Value"]) for where, row in tab.records()}
    checks: dict[str, Callable[[str, str], None]] = {
        "Varint length": lambda where, cell: _check_varint_constant(where, cell),
        "PING payload": lambda where, cell: _check_int(where, cell, MAX_PING_PAYLOAD),
        "Compression threshold": lambda where, cell: _check_int(where, cell, MIN_COMPRESS_BYTES),
        "Initial HPACK table size": lambda where, cell: _check_int(
            where, cell, INITIAL_HEADER_TABLE_SIZE
        ),
        "Preset table space": lambda where, cell: _check_int(where, cell, MAX_PRESET_TABLE_BYTES),
        "Typed hex / base64 value": lambda where, cell: _check_range(
            where, cell, 1, typed.MAX_TYPED_BYTES
        ),
        "Typed fields per preset": lambda where, cell: _check_int(
            where, cell, typed.MAX_TYPED_FIELDS
        ),
        "Dictionary id": lambda where, cell: _check_range(where, cell, 1, MAX_DICTIONARY_ID),
        "SETTINGS pairs": lambda where, cell: _check_int(where, cell, m.MAX_SETTINGS_PAIRS),
        "Unknown tagged fields": lambda where, cell: _check_int(where, cell, MAX_UNKNOWN_FIELDS),
        "HELLO dictionary ids": lambda where, cell: _check_int(
            where, cell, hello_module.MAX_HELLO_DICTIONARIES
        ),
        "HPACK size updates": lambda where, cell: _check_int(where, cell, MAX_SIZE_UPDATES),
    }
    for constant, check in checks.items():
        assert constant in values, f"{tab.section.label}: constant {constant!r} is missing"
        check(*values[constant])


def _check_int(where: str, cell: str, expected: int) -> None:
    numbers = [int(n) for n in re.findall(r"\d+", cell)]
    assert expected in numbers, f"{where}: expected {expected} in {cell!r}"


def _check_range(where: str, cell: str, low: int, high: int) -> None:
    parts = re.split(r"\s*(?:…|–)\s*", cell.replace(" bytes", ""))
    assert len(parts) == 2, f"{where}: expected a range 'low … high' in {cell!r}"
    assert (power_expr(parts[0], where), power_expr(parts[1], where)) == (low, high), (
        f"{where}: expected {low} … {high}"
    )


def _check_varint_constant(where: str, cell: str) -> None:
    match = re.fullmatch(r"at most (\d+) bytes \(values ≤ (.+)\)", cell)
    assert match, f"{where}: cannot read {cell!r}"
    assert int(match.group(1)) == MAX_VARINT_BYTES, f"{where}: MAX_VARINT_BYTES differs"
    assert power_expr(match.group(2), where) == MAX_VARINT, f"{where}: MAX_VARINT differs"


# ---------------------------------------------------------- HELLO and HELLO_ACK

#: FieldSpec names that differ from the dataclass attribute holding the value.
ATTRIBUTE_OF_FIELD = {"dictionary": "dictionaries"}


@dataclass(frozen=True)
class HandshakeFrame:
    title: str
    specs: dict[int, FieldSpec]
    cls: type[Hello] | type[HelloAck]
    minimal_payload: bytes  # version 1 and the required fields only
    decode: Callable[[bytes], Hello | HelloAck]


HANDSHAKE_FRAMES = [
    HandshakeFrame(
        "HELLO fields",
        HELLO_SPECS,
        Hello,
        bytes.fromhex("0201050164"),
        lambda payload: decode_hello(payload, Limits()),
    ),
    HandshakeFrame(
        "HELLO_ACK fields", ACK_SPECS, HelloAck, bytes.fromhex("0201"), decode_hello_ack
    ),
]


def _default_in_spec(cell: str, where: str) -> object:
    text = cell.strip()
    if re.match(r"\d", text):
        return leading_int(text, where)
    if text == '""':
        return ""
    if text == "empty":
        return b""
    if text == "none":
        return ()
    raise AssertionError(f"{where}: cannot read default {cell!r}")


def _code_raises(action: Callable[[], object], code: ErrorCode, where: str, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        action()
    assert info.value.code is code, f"{where}: {why} raises {info.value.code.name}, not {code.name}"


@pytest.mark.parametrize("frame", HANDSHAKE_FRAMES, ids=lambda f: f.title)
def test_handshake_field_table(frame: HandshakeFrame) -> None:
    tab = table(frame.title, "#", "Name", "Kind", "Default")
    hints = typing.get_type_hints(frame.cls)
    class_defaults = {f.name: f.default for f in dataclasses.fields(frame.cls)}
    decoded = frame.decode(frame.minimal_payload)
    in_spec: dict[int, str] = {}
    for where, row in tab.records():
        number = int(row["#"])
        name = code_span(row["Name"], where)
        in_spec[number] = name
        spec = frame.specs.get(number)
        assert spec is not None, f"{where}: hello.py defines no field {number}"
        assert spec.name == name, f"{where}: field {number} is {spec.name} in hello.py"
        kind = row["Kind"]
        expected_kind = KIND_VARINT if kind.startswith("varint") else KIND_BYTES
        assert kind.startswith(("varint", "bytes")), f"{where}: kind must be varint or bytes"
        assert spec.kind == expected_kind, f"{where}: kind {kind!r}, FieldSpec.kind {spec.kind}"
        assert spec.repeated == ("repeated" in kind), f"{where}: 'repeated' differs from FieldSpec"
        most = re.search(r"at most (\d+)", kind)
        assert spec.max_count == (int(most.group(1)) if most else None), (
            f"{where}: 'at most' differs from FieldSpec.max_count {spec.max_count}"
        )
        attribute = ATTRIBUTE_OF_FIELD.get(name, name)
        assert attribute in hints, f"{where}: {frame.cls.__name__} has no attribute {attribute}"
        if expected_kind == KIND_BYTES:
            python_type = str if "UTF-8" in kind else bytes
            assert hints[attribute] is python_type, (
                f"{where}: {frame.cls.__name__}.{attribute} is {hints[attribute]}; the kind "
                f"{kind!r} means {python_type.__name__}"
            )
        default = row["Default"]
        if name == "version":
            assert "UNSUPPORTED_VERSION" in default and default.startswith("0"), (
                f"{where}: an absent version is 0 and refused with UNSUPPORTED_VERSION"
            )
            _code_raises(
                lambda: frame.decode(frame.minimal_payload[2:]),
                ErrorCode.UNSUPPORTED_VERSION,
                where,
                "a payload without version",
            )
            continue
        if "REQUIRED unless" in row["Meaning"]:
            # device_id (7.2): "" only beside a token; the minimal payload has none.
            assert class_defaults[attribute] == _default_in_spec(default, where), where
            _code_raises(
                lambda: frame.decode(frame.minimal_payload[:2]),
                ErrorCode.FIELD_ERROR,
                where,
                f"a payload without {name} (and without a token)",
            )
            continue
        if "REQUIRED" in default:
            assert class_defaults[attribute] is dataclasses.MISSING, (
                f"{where}: required in the spec, but {frame.cls.__name__}.{attribute} has a default"
            )
            _code_raises(
                lambda: frame.decode(frame.minimal_payload[:2]),
                ErrorCode.FIELD_ERROR,
                where,
                f"a payload without {name}",
            )
            continue
        value = _default_in_spec(default, where)
        assert getattr(decoded, attribute) == value, (
            f"{where}: an absent {name} decodes to {getattr(decoded, attribute)!r}, "
            f"the spec says {value!r}"
        )
        assert class_defaults[attribute] == value, (
            f"{where}: {frame.cls.__name__}.{attribute} defaults to {class_defaults[attribute]!r}"
        )
    assert_same_keys(
        tab.section.label, in_spec, {n: s.name for n, s in frame.specs.items()}, "fields"
    )
    covered = {ATTRIBUTE_OF_FIELD.get(n, n) for n in in_spec.values()}
    assert covered == set(hints), (
        f"{tab.section.label}: {frame.cls.__name__} attributes without a row: "
        f"{sorted(set(hints) - covered)}"
    )


# --------------------------------------------------------------------- SETTINGS


def _open_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.send_hello(Hello(device_id="d"))
    server.receive_data(client.data_to_send())
    server.accept()
    client.receive_data(server.data_to_send())
    return client, server


def _receive_settings(setting: int, value: int) -> None:
    client, _ = _open_pair()
    client.receive_data(encode_frame(FrameType.SETTINGS, 0, m.encode_settings(((setting, value),))))


def _accepts_settings(setting: int, value: int, where: str) -> None:
    try:
        _receive_settings(setting, value)
    except ProtocolError as exc:
        raise AssertionError(
            f"{where}: the spec allows SETTINGS {setting} = {value}, the code refuses it: {exc}"
        ) from None


def test_settings_table_matches_setting_ids() -> None:
    tab = table("SETTINGS identifiers", "Id", "Name", "Value")
    in_code = {
        value: name
        for name, value in vars(Setting).items()
        if name.isupper() and isinstance(value, int)
    }
    in_spec: dict[int, str] = {}
    for where, row in tab.records():
        setting = int(row["Id"])
        name = code_span(row["Name"], where)
        in_spec[setting] = name
        assert in_code.get(setting) == name, f"{where}: Setting.{name} is not {setting}"
        value = row["Value"]
        bound = re.fullmatch(r"≥ (\d+), else `FIELD_ERROR`", value)
        if bound:
            low = int(bound.group(1))
            _accepts_settings(setting, low, where)
            _code_raises(
                partial(_receive_settings, setting, low - 1),
                ErrorCode.FIELD_ERROR,
                where,
                f"SETTINGS {name} = {low - 1}",
            )
        else:
            assert value == "any", f"{where}: value must be 'any' or '≥ N, else `FIELD_ERROR`'"
            _accepts_settings(setting, 0, where)
    assert_same_keys(tab.section.label, in_spec, in_code, "SETTINGS ids")


# ----------------------------------------------------------------- typed fields


def test_generic_typed_field_table_matches_the_generic_list() -> None:
    tab = table("Typed header fields", "Key", "Header name", "Kind")
    in_spec = []
    for where, row in tab.records():
        key = int(row["Key"])
        assert key == len(in_spec) + 1, f"{where}: keys are 1, 2, 3, ... in order"
        in_spec.append((code_span(row["Header name"], where), row["Kind"].strip()))
    assert tuple(in_spec) == typed.GENERIC_TYPED, (
        f"{tab.section.label}: generic typed fields differ from typed.GENERIC_TYPED"
    )


#: A canonical sample of every kind, its wire bytes (epoch 1000 ms) and a non-canonical value.
_KIND_SAMPLES = {
    "hex": ("ab12", b"\x02\xab\x12", "AB12"),
    "hex-upper": ("AB12", b"\x02\xab\x12", "ab12"),
    "uuid": (
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        bytes.fromhex("6ba7b8109dad11d180b400c04fd430c8"),
        "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
    ),
    "uuid-upper": (
        "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
        bytes.fromhex("6ba7b8109dad11d180b400c04fd430c8"),
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    ),
    "time-ms": ("1005", b"\x0a", "01005"),
    "time-s": ("3", b"\x04", "03"),
    "uint": ("300", b"\xac\x02", "0300"),
    "base64url": ("q83v", b"\x03\xab\xcd\xef", "q83v="),
    "base64": ("q83v", b"\x03\xab\xcd\xef", "q83"),
    "traceparent": (
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        bytes.fromhex("004bf92f3577b34da6a3ce929d0e0e473600f067aa0ba902b701"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    ),
    # The section's example: 38.9 in a {1} hole is 389, zigzag 778; then a raw text "a".
    "template": ("db;dur=38.9;a", b"\x8a\x06\x01a", "db;dur=38.90;a"),
}
#: The template the template sample is checked with.
_SAMPLE_TEMPLATE = "template:db;dur={1};{s}"


def test_typed_kind_table_matches_the_codec() -> None:
    tab = table("Typed header fields", "Kind", "Canonical header value", "Value bytes on the wire")
    kinds = [row["Kind"].strip() for _, row in tab.records()]
    assert tuple(kinds) == typed.KINDS, f"{tab.section.label}: kinds differ from typed.KINDS"
    for kind, (sample, wire, other) in _KIND_SAMPLES.items():
        table_ = typed.TypedTable((("x", _SAMPLE_TEMPLATE if kind == "template" else kind),))
        rest, section = table_.split([("x", sample)], 1000)
        assert (rest, section) == ((), b"\x01" + wire), f"{kind}: {sample} -> {section.hex()}"
        assert table_.decode(section, 1000, None, 1 << 20) == [("x", sample)], kind
        assert table_.split([("x", other)], 1000) == ((("x", other),), b""), (
            f"{kind}: {other!r} is not canonical and must go through HPACK"
        )
    echo = typed.TypedTable((("x", "echo"),))
    assert echo.split([("x", "v")], 0, "v") == ((), b"\x01")
    assert echo.decode(b"\x01", 0, "v", 1 << 20) == [("x", "v")]


# --------------------------------------------------------- presets, HPACK names


def test_preset_1_table_matches_preset_entries() -> None:
    tab = table("Preset tables", "Listed", "Index", "Name", "Value")
    entries = preset_entries(1)
    assert len(tab.rows) == len(entries), (
        f"{tab.section.label}: {len(tab.rows)} rows, preset 1 has {len(entries)} entries"
    )
    for (where, row), (position, (name, value)) in zip(
        tab.records(), enumerate(entries, 1), strict=True
    ):
        assert int(row["Listed"]) == position, f"{where}: expected listed position {position}"
        index = 62 + len(entries) - position
        assert int(row["Index"]) == index, f"{where}: dynamic index after loading is {index}"
        assert code_span(row["Name"], where) == name, f"{where}: entry {position} is {name!r}"
        spec_value = "" if row["Value"] == "(empty)" else code_span(row["Value"], where)
        assert spec_value == value, f"{where}: entry {position} value is {value!r}"
    space = sum(ENTRY_OVERHEAD + len(n.encode()) + len(v.encode()) for n, v in entries)
    claim = re.search(r"\((\d+) bytes of table space\)", tab.section.body)
    assert claim and int(claim.group(1)) == space, (
        f"{tab.section.label}: preset 1 takes {space} bytes of table space"
    )


def test_never_indexed_names_match() -> None:
    sec = section("Never-indexed names")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", sec.body)]
    lists = [p for p in paragraphs if re.fullmatch(r"`[^`]+`(?:, `[^`]+`)*", p)]
    assert len(lists) == 1, f"{sec.label}: expected one paragraph listing the names, found {lists}"
    names = set(re.findall(r"`([^`]+)`", lists[0]))
    assert names == set(NEVER_INDEXED_NAMES), (
        f"{sec.label}: missing {sorted(NEVER_INDEXED_NAMES - names)}, "
        f"extra {sorted(names - NEVER_INDEXED_NAMES)}"
    )


# --------------------------------------------------------------- state machines


def _role_states(column: str, where: str) -> list[tuple[Role, State]]:
    role_name, _, states = column.partition(" ")
    role = Role(role_name.lower())
    out = []
    for state in states.split("/"):
        state = state.strip()
        assert state in State.__members__, f"{where}: unknown state {state!r}"
        out.append((role, State[state]))
    return out


def test_receive_table_matches_state_tables() -> None:
    tab = table("Frames each role may receive", "Frame")
    where_header = f"{tab.section.label}, header"
    columns = {c: _role_states(c, where_header) for c in tab.columns if c != "Frame"}
    covered = {pair for pairs in columns.values() for pair in pairs}
    assert covered == set(RECEIVABLE), (
        f"{where_header}: columns cover {sorted((r.value, s.value) for r, s in covered)}, "
        f"RECEIVABLE has {sorted((r.value, s.value) for r, s in RECEIVABLE)}"
    )
    seen: set[FrameType] = set()
    for where, row in tab.records():
        frame_type = FrameType[row["Frame"]]
        seen.add(frame_type)
        for column, pairs in columns.items():
            allowed = "✓" in row[column]
            for role, state in pairs:
                actual = frame_type in RECEIVABLE[(role, state)]
                assert allowed == actual, (
                    f"{where}: column {column!r}: the spec says "
                    f"{'allowed' if allowed else 'STATE_ERROR'}, RECEIVABLE says "
                    f"{'allowed' if actual else 'STATE_ERROR'} for {role.value} {state.value}"
                )
    assert seen == set(FrameType), f"{tab.section.label}: rows missing for {set(FrameType) - seen}"


def test_transition_table_matches_state_transitions() -> None:
    tab = table("Transitions", "Role", "From", "Event", "To")
    in_spec = set()
    for where, row in tab.records():
        if row["Role"] == "both":
            assert row["To"] == "CLOSED", f"{where}: only the ERROR → CLOSED row is for both roles"
            continue
        in_spec.add((Role(row["Role"]), State[row["From"]], State[row["To"]]))
    in_code = {(role, state, to) for (role, state, _), to in TRANSITIONS.items()}
    assert in_spec == in_code, (
        f"{tab.section.label}: only in the spec {in_spec - in_code}; "
        f"only in state.TRANSITIONS {in_code - in_spec}"
    )


# ----------------------------------------------------------------------- varints


def test_varint_table() -> None:
    tab = table("Varints", "Value", "Encoding")
    for where, row in tab.records():
        value = power_expr(row["Value"], where)
        encoding = bytes.fromhex(code_span(row["Encoding"], where))
        assert encode_varint(value) == encoding, (
            f"{where}: {value} encodes as {encode_varint(value).hex(' ')}"
        )


# ---------------------------------------------------------------- hex examples


def _hex_runs(text: str) -> list[str]:
    """Byte sequences written in a section: code blocks (hex at the start of each
    line, annotations after it) and inline `xx xx` spans, as hex strings."""
    runs: list[str] = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        collected = []
        for line in block.splitlines():
            match = re.match(r"^ {0,7}((?:[0-9a-f]{2}(?: |$))+)", line)
            if match:
                collected.append(match.group(1).replace(" ", ""))
        runs.append("".join(collected))
    for span in re.findall(r"`((?:[0-9a-f]{2}\s+)*[0-9a-f]{2})`", text):
        runs.append(re.sub(r"\s+", "", span))
    return runs


def _assert_shown(runs: Sequence[str], label: str, what: str, produced: bytes) -> None:
    assert any(produced.hex() in run for run in runs), (
        f"{label}: the example of {what} is not in the text; the reference implementation "
        f"now produces {produced.hex(' ')}"
    )


def _section_6_runs() -> list[str]:
    return [
        run
        for s in sections()
        if s.number == "6" or s.number.startswith("6.")
        for run in _hex_runs(s.body)
    ]


def test_section_6_examples_match_the_reference_implementation() -> None:
    """Replay the connection described at the start of section 6 and find every frame."""
    runs = _section_6_runs()
    label = "section 6"
    spec_zstd = re.search(r"libzstd (\d+)\.(\d+)\.(\d+) at level 5", spec_text())
    assert spec_zstd, "section 6: the libzstd version of the compressed examples is not stated"
    same_zstd = tuple(map(int, spec_zstd.groups())) == tuple(zstandard.ZSTD_VERSION)
    dictionary = Dictionary.from_file_bytes(DICT_PATH.read_bytes())
    client = Connection(Role.CLIENT, body_codec=BodyCodec(DictionaryStore([dictionary])))
    server = Connection(Role.SERVER, body_codec=BodyCodec(DictionaryStore([dictionary])))

    def check(
        sender: Connection, receiver: Connection, what: str, compressed: bool = False
    ) -> None:
        sent = sender.data_to_send()
        if same_zstd or not compressed:
            _assert_shown(runs, label, what, sent)
        receiver.receive_data(sent)
        reply = receiver.data_to_send()
        if reply:
            _assert_shown(runs, label, f"the answer to {what}", reply)
            sender.receive_data(reply)

    chat = b'{"type":"chat","title":"New message","body":"See you at 8","from":"ann","badge":1}'
    push = b'{"type":"chat","title":"Bob","body":"Dinner at 8?","from":"bob","badge":2}'
    trace = "3da95cd2167b75dfb948f82a8317cba0"
    client.send_hello(
        Hello(
            device_id="dev-42",
            app_id="demo",
            token=b"tok",
            dictionaries=(dictionary.dict_id,),
            preset_id=1,
            platform="ios",
            client_time_ms=1_764_000_000_000,
        )
    )
    check(client, server, "HELLO")
    client.send_request("user.get", b'{"id":7}', [("locale", "zh-CN")])
    check(client, server, "the pipelined REQUEST")
    server.accept(
        session_id=b"S1", resume_ticket=b"TKT", heartbeat_s=240, server_time_ms=1_764_000_000_500
    )
    check(server, client, "HELLO_ACK")
    server.send_response(1, b'{"name":"Ann"}', [("content-type", "application/json")])
    check(server, client, "the first RESPONSE")
    client.send_request("feed.list", chat, [("trace-id", trace), ("ts", "1764000000123")])
    check(client, server, "the REQUEST with typed fields", compressed=True)
    server.send_request("device.locate")
    check(server, client, "the server-initiated REQUEST")
    server.send_response(1, b"ok", [("trace-id", trace), ("server-time", "1764000000130")])
    check(server, client, "the RESPONSE with a trace-id echo")
    client.send_response(2, status=ErrorCode.FORBIDDEN)
    check(client, server, "the FORBIDDEN RESPONSE")
    server.send_push(b"m-0001", push, [("collapse-key", "chat-9")])
    check(server, client, "the compressed PUSH", compressed=True)
    server.send_push(b"m-0002", b"hi")
    check(server, client, "the raw PUSH")
    prepared = server.prepare_push(
        b"bc-77",
        b'{"title":"Sale"}',
        [("content-type", "application/json"), ("message-id", "bc-77")],
    )
    server.send_prepared_push(prepared)
    check(server, client, "the prepared PUSH")
    client.send_ack(1, 2)
    check(client, server, "ACK")
    client.send_ping(bytes.fromhex("000000000000002a"))
    check(client, server, "PING")
    server.send_settings([(Setting.HEARTBEAT_S, 300), (Setting.MAX_CONCURRENT_STREAMS, 100)])
    check(server, client, "SETTINGS")


def test_standalone_examples_match_the_reference_implementation() -> None:
    runs = _section_6_runs()
    label = "section 6"
    _assert_shown(
        runs,
        label,
        "GOAWAY",
        encode_frame(
            FrameType.GOAWAY,
            0,
            m.encode_goaway(ErrorCode.SHUTTING_DOWN, 5000, "gw2.example.com:443", "deploy"),
        ),
    )
    for stream_id, code, retry, message in (
        (1, ErrorCode.RATE_LIMITED, 2000, "slow down"),
        (0, ErrorCode.AUTH_EXPIRED, 0, "token expired"),
        (0, ErrorCode.NO_ERROR, 0, ""),
    ):
        frame = encode_frame(FrameType.ERROR, 0, m.encode_error(stream_id, code, retry, message))
        _assert_shown(runs, label, f"ERROR {code.name}", frame)

    smallest = Connection(Role.CLIENT)
    smallest.send_hello(Hello(device_id="d"))
    _assert_shown(runs, label, "the smallest HELLO", smallest.data_to_send())
    small_frames = Connection(Role.CLIENT, limits=Limits(max_frame_size=1024))
    small_frames.send_hello(Hello(device_id="d"))
    hello_payload = small_frames.data_to_send()[2:]
    field = bytes.fromhex("148008")  # field 10 max_frame_size = 1024, as the text shows it
    assert field in hello_payload, f"{label}: a client with max_frame_size 1024 sends {field.hex()}"
    _assert_shown(runs, label, "HELLO field 10 = 1024", field)

    smallest_server = Connection(Role.SERVER)
    smallest_server.receive_data(encode_frame(FrameType.HELLO, 0, bytes.fromhex("0201050164")))
    smallest_server.accept()
    _assert_shown(runs, label, "the smallest HELLO_ACK", smallest_server.data_to_send())

    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.send_hello(Hello(device_id="d", preset_id=1))
    server.receive_data(client.data_to_send())
    server.accept()
    client.receive_data(server.data_to_send())
    client.send_request("search", b"q")
    request = client.data_to_send()
    _assert_shown(runs, label, "the REQUEST before CANCEL", request)
    server.receive_data(request)
    client.send_cancel(1)
    cancel = client.data_to_send()
    _assert_shown(runs, label, "CANCEL", cancel)
    server.receive_data(cancel)
    _assert_shown(runs, label, "the ERROR answering CANCEL", server.data_to_send())

    content = b"0123456789abcdefghij"
    chunks = encode_frame(
        FrameType.DICT, 0, m.encode_dict_chunk(9, len(content), 0, content[:12])
    ) + encode_frame(
        FrameType.DICT,
        frames.FLAG_DICT_LAST,
        m.encode_dict_chunk(9, len(content), 12, content[12:]),
    )
    _assert_shown(runs, label, "DICT", chunks)
    receiver, _ = _open_pair()
    events: list[Event] = receiver.receive_data(chunks)
    assert events == [DictionaryReceived(Dictionary(9, content))], (
        f"{label}: the DICT example must be accepted, got {events}"
    )


def test_string_literal_example() -> None:
    sec = section("String literals")
    block = HeaderEncoder(0).encode([("x-city", "上海")])
    _assert_shown(_hex_runs(sec.body), sec.label, "x-city: 上海", block)
