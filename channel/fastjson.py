"""JSON on the hot paths (API bodies, receipts): orjson, with the standard library's
answers wherever the two would differ.

``orjson`` parses and writes several times faster than ``json``, which matters
where every push passes: the API's request and response bodies and the receipt
stream. ``loads`` falls back to ``json.loads`` on anything orjson refuses
(``NaN``, lone surrogates, nesting past 1024), so the API's validators see what
they saw before, with one difference: an integer beyond 64 bits comes back as a
float. Every integer field is checked with ``type(x) is int`` and a range, so it
is refused as before, with the same 400 naming the field. JSON nested deeper
than ``json.loads`` can recurse is a ``DecodeError`` like any other bad JSON,
never a ``RecursionError``: callers parse what devices and backends send and
catch ``DecodeError`` only. ``dumps`` writes compact UTF-8 (non-ASCII
characters as themselves, not ``\\u`` escapes), and falls back to
``json.dumps`` for what orjson cannot write (integers beyond 64 bits,
non-string keys).
"""

from __future__ import annotations

import json

import orjson

#: Both libraries' parse errors (orjson's is a ValueError too).
DecodeError = ValueError


def loads(raw: bytes | str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except RecursionError:
            raise DecodeError("JSON nested too deeply to parse") from None


def dumps(obj: object) -> bytes:
    """Compact JSON, UTF-8 encoded."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
