"""Preset header tables, chosen by id in HELLO.

A preset is a versioned, append-never list of header fields inserted into
both peers' HPACK dynamic tables at connection start (first entry first, so
the last entry ends up at dynamic index 62). Published presets never change:
a new set of entries gets a new id. Id 0 is the empty preset.

Entries are picked for what a mobile app sends on almost every message, so a
fresh connection's first request is already small. Names whose values are
unique per message (trace-id, ts, sign) are listed with an empty value: the
name is then one index and only the value travels.
"""

from __future__ import annotations

from channel.wire.errors import ErrorCode, ProtocolError

PresetEntries = tuple[tuple[str, str], ...]

_MOBILE_V1: PresetEntries = (
    ("trace-id", ""),
    ("ts", ""),
    ("sign", ""),
    ("server-time", ""),
    ("collapse-key", ""),
    ("cache-control", "no-cache"),
    ("cache-control", "max-age=60"),
    ("priority", "high"),
    ("priority", "normal"),
    ("retry", "1"),
    ("locale", "en-US"),
    ("locale", "zh-CN"),
    ("content-type", "application/json"),
    (":op", ""),
)

PRESETS: dict[int, PresetEntries] = {
    0: (),
    1: _MOBILE_V1,
}


def preset_entries(preset_id: int) -> PresetEntries:
    try:
        return PRESETS[preset_id]
    except KeyError:
        raise ProtocolError(
            ErrorCode.UNKNOWN_PRESET,
            f"preset table {preset_id} is unknown; known presets: {sorted(PRESETS)}",
        ) from None
