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
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from channel.wire.errors import ErrorCode, ProtocolError

PresetEntries = tuple[tuple[str, str], ...]

#: RFC 7541 entry overhead, counted like HPACK does.
ENTRY_OVERHEAD = 32
#: Presets leave a quarter of the initial table for the connection's own entries.
MAX_PRESET_TABLE_BYTES = 3072


@dataclass(frozen=True)
class Preset:
    preset_id: int
    name: str
    entries: PresetEntries

    @property
    def table_bytes(self) -> int:
        return sum(ENTRY_OVERHEAD + len(n.encode()) + len(v.encode()) for n, v in self.entries)

    def __post_init__(self) -> None:
        if self.preset_id < 0:
            raise ValueError("preset id must be >= 0")
        if self.table_bytes > MAX_PRESET_TABLE_BYTES:
            raise ValueError(
                f"preset {self.preset_id} needs {self.table_bytes} table bytes, "
                f"limit {MAX_PRESET_TABLE_BYTES}"
            )

    def to_json(self) -> str:
        """One entry per line, so a diff of two presets reads like a diff of lists."""
        lines = ",\n".join(
            "  " + json.dumps(list(entry), ensure_ascii=False) for entry in self.entries
        )
        head = f'{{"id": {self.preset_id}, "name": {json.dumps(self.name)}, "entries": [\n'
        return head + lines + "\n]}\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Preset:
        """Parse a preset file; raises ``ValueError`` naming what is wrong."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise ValueError("preset file needs an integer 'id'")
        entries = data.get("entries")
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
            for e in entries
        ):
            raise ValueError("preset 'entries' must be a list of [name, value] string pairs")
        return cls(data["id"], str(data.get("name", "")), tuple((n, v) for n, v in entries))


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
    if existing is not None and existing.entries != preset.entries:
        raise ValueError(f"preset id {preset.preset_id} is already registered with other entries")
    _REGISTRY[preset.preset_id] = preset


def known_presets() -> tuple[int, ...]:
    return tuple(sorted(_REGISTRY))


def preset_by_id(preset_id: int) -> Preset:
    """A registered preset; ``KeyError`` if none has this id."""
    return _REGISTRY[preset_id]


def preset_entries(preset_id: int) -> PresetEntries:
    try:
        return _REGISTRY[preset_id].entries
    except KeyError:
        raise ProtocolError(
            ErrorCode.UNKNOWN_PRESET,
            f"preset table {preset_id} is unknown; known presets: {known_presets()}",
        ) from None
