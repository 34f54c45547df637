"""Preset header tables, chosen by id in HELLO.

A preset is a versioned, never-edited list of header fields inserted into
both peers' HPACK dynamic tables at connection start, first entry first (so
the last entry ends up at dynamic index 62, the cheapest). Published presets
never change: a new set of entries gets a new id. Id 0 is the empty preset,
id 1 the generic mobile preset below; apps add their own (``channel preset
build`` makes one from a traffic sample) and register them on both sides.

A preset must fit the initial 4096-byte table with room to spare
(``MAX_PRESET_TABLE_BYTES``); as new entries are added the oldest (first
listed, so least useful) preset entries are evicted first.

Besides its table entries a preset declares how an app's headers travel:

* ``typed``: header names whose canonical values go in the typed section,
  and their kinds (``channel/wire/typed.py``); key *k* is the *k*-th pair.
  Absent: the generic list (``GENERIC_TYPED``), as for presets 0 and 1.
* ``connection``: names a client sends as connection-scoped headers (once
  per connection, re-attached by the server to every request; spec 9.11).
* ``never_indexed``: more names the encoder never inserts into the dynamic
  table (unique per message, or secret), besides the spec's fixed list.

The last two only guide encoders; a decoder needs the entries and the typed list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.typed import GENERIC_TYPED, TypedFields, TypedTable, typed_table

PresetEntries = tuple[tuple[str, str], ...]

#: RFC 7541 entry overhead, counted like HPACK does.
ENTRY_OVERHEAD = 32
#: Presets leave a quarter of the initial table for the connection's own entries.
MAX_PRESET_TABLE_BYTES = 3072


#: Most names a preset may list under ``connection`` or ``never_indexed``.
MAX_PRESET_NAMES = 32


@dataclass(frozen=True)
class Preset:
    preset_id: int
    name: str
    entries: PresetEntries
    typed: TypedFields = GENERIC_TYPED
    connection: tuple[str, ...] = ()
    never_indexed: tuple[str, ...] = ()

    @property
    def table_bytes(self) -> int:
        return sum(ENTRY_OVERHEAD + len(n.encode()) + len(v.encode()) for n, v in self.entries)

    @property
    def typed_table(self) -> TypedTable:
        return typed_table(self.typed)

    def __post_init__(self) -> None:
        if not 0 <= self.preset_id <= 2**32 - 1:
            raise ValueError("preset id must be 0 .. 2^32 - 1")
        if self.table_bytes > MAX_PRESET_TABLE_BYTES:
            raise ValueError(
                f"preset {self.preset_id} needs {self.table_bytes} table bytes, "
                f"limit {MAX_PRESET_TABLE_BYTES}"
            )
        typed_table(self.typed)  # raises ValueError naming the problem
        for what, names in (("connection", self.connection), ("never_indexed", self.never_indexed)):
            if len(names) > MAX_PRESET_NAMES:
                raise ValueError(f"preset '{what}' lists at most {MAX_PRESET_NAMES} names")
            for header in names:
                if not header or header != header.lower() or header.startswith(":"):
                    raise ValueError(f"preset '{what}': {header!r} is not a lowercase header name")

    def to_json(self) -> str:
        """One entry per line, so a diff of two presets reads like a diff of lists."""
        lines = ",\n".join(
            "  " + json.dumps(list(entry), ensure_ascii=False) for entry in self.entries
        )
        head = f'{{"id": {self.preset_id}, "name": {json.dumps(self.name)}'
        if self.typed != GENERIC_TYPED:
            typed = ", ".join(json.dumps(list(pair)) for pair in self.typed)
            head += f',\n "typed": [{typed}]'
        for what, names in (("connection", self.connection), ("never_indexed", self.never_indexed)):
            if names:
                head += f',\n "{what}": {json.dumps(list(names))}'
        return head + ',\n "entries": [\n' + lines + "\n]}\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Preset:
        """Parse a preset file; raises ``ValueError`` naming what is wrong."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise ValueError("preset file needs an integer 'id'")
        entries = _pairs(data.get("entries"), "entries", "[name, value]")
        typed = data.get("typed")
        return cls(
            data["id"],
            str(data.get("name", "")),
            entries,
            GENERIC_TYPED if typed is None else _pairs(typed, "typed", "[name, kind]"),
            _names(data.get("connection", []), "connection"),
            _names(data.get("never_indexed", []), "never_indexed"),
        )


def _pairs(value: object, what: str, shape: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in value
    ):
        raise ValueError(f"preset '{what}' must be a list of {shape} string pairs")
    return tuple((n, v) for n, v in value)


def _names(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f"preset '{what}' must be a list of header names")
    return tuple(value)


_MOBILE_V1: PresetEntries = (
    ("trace-id", ""),
    ("ts", ""),
    ("sign", ""),
    ("server-time", ""),
    ("collapse-key", ""),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("priority", "high"),
    ("priority", "normal"),
    ("retry", "1"),
    ("locale", "en-US"),
    ("locale", "zh-CN"),
    ("content-type", "application/json"),
    (":op", ""),
)

_REGISTRY: dict[int, Preset] = {
    0: Preset(0, "empty", ()),
    1: Preset(1, "mobile-v1", _MOBILE_V1),
}


def register_preset(preset: Preset) -> None:
    """Make a preset known to this process; an id never changes meaning."""
    existing = _REGISTRY.get(preset.preset_id)
    if existing is not None and _content(existing) != _content(preset):
        raise ValueError(f"preset id {preset.preset_id} is already registered with other content")
    _REGISTRY[preset.preset_id] = preset


def _content(preset: Preset) -> tuple[object, ...]:
    return (preset.entries, preset.typed, preset.connection, preset.never_indexed)


def known_presets() -> tuple[int, ...]:
    return tuple(sorted(_REGISTRY))


def preset_by_id(preset_id: int) -> Preset:
    """A registered preset; ``KeyError`` if none has this id."""
    return _REGISTRY[preset_id]


def preset_entries(preset_id: int) -> PresetEntries:
    return known_preset(preset_id).entries


def known_preset(preset_id: int) -> Preset:
    """A registered preset; ``ProtocolError(UNKNOWN_PRESET)`` if none has this id."""
    try:
        return _REGISTRY[preset_id]
    except KeyError:
        raise ProtocolError(
            ErrorCode.UNKNOWN_PRESET,
            f"preset table {preset_id} is unknown; known presets: {known_presets()}",
        ) from None
