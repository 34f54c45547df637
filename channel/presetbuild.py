"""Build an app-specific HPACK preset table from a traffic sample.

Counts the (name, value) pairs that HPACK would index — every ``:op`` and
app header except never-indexed names and values that travel as typed
fields — and keeps the most frequent ones that fit the preset budget. The
most frequent pair is listed last, so it gets dynamic index 62 (one byte)
and is the last to be evicted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from channel.wire.headers import NEVER_INDEXED_NAMES
from channel.wire.presets import ENTRY_OVERHEAD, MAX_PRESET_TABLE_BYTES, Preset
from channel.wire.typed import split_typed

#: Past ~60 entries, indices need two bytes (62 + 65 > 127), so more rarely pay.
MAX_PRESET_ENTRIES = 60


def count_indexable_pairs(messages: Iterable[dict[str, Any]]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for message in messages:
        headers = [(str(n), str(v)) for n, v in message.get("headers", ())]
        rest, _typed = split_typed(headers, 0, None)
        if message.get("kind") == "request" and message.get("op"):
            counts[(":op", str(message["op"]))] += 1
        for name, value in rest:
            if name not in NEVER_INDEXED_NAMES:
                counts[(name, value)] += 1
    return counts


def build_preset(
    messages: Iterable[dict[str, Any]],
    preset_id: int,
    name: str,
    max_table_bytes: int = MAX_PRESET_TABLE_BYTES,
    max_entries: int = MAX_PRESET_ENTRIES,
    min_count: int = 2,
) -> Preset:
    """The most frequent indexable pairs that fit, least frequent first."""
    chosen: list[tuple[str, str]] = []
    used = 0
    for pair, count in count_indexable_pairs(messages).most_common():
        if count < min_count or len(chosen) >= max_entries:
            break
        size = ENTRY_OVERHEAD + len(pair[0].encode()) + len(pair[1].encode())
        if used + size > max_table_bytes:
            continue
        chosen.append(pair)
        used += size
    chosen.reverse()
    return Preset(preset_id, name, tuple(chosen))
