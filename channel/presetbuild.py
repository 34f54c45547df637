"""Build an app-specific preset from a traffic sample (``channel preset build``).

Besides the table entries, the preset learns how this app's headers travel
(spec sections 9.3, 9.8, 9.11):

* **connection-scoped names**: request headers that most requests carry and
  whose value rarely changes within a session (identity, user agent, a
  session cookie, a bearer token renewed now and then): the client sends them
  once per connection, and again in the connection block when one changes;
  one among them that looks like a secret is listed never-indexed as well, so
  even that block sends it as a never-indexed literal (spec 9.12);
* **typed fields**: names whose values are (almost) always canonical for one
  kind (UUIDs, hex ids, timestamps in ms or s, numbers, base64, W3C
  traceparent), names whose values share one shape with varying numbers or
  words in it (a template such as ``template:app;dur={1}, db;dur={1}``), and
  the response header that echoes a request's value;
* **never-indexed names**: names that look like secrets, and names whose
  values are unique per message (indexing them only evicts useful entries);
* **entries**: the most frequent (name, value) pairs HPACK would index -- every
  ``:op`` and header that is none of the above -- that fit the preset budget,
  the most frequent listed last (dynamic index 62, evicted last).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from channel.wire.headers import NEVER_INDEXED_NAMES
from channel.wire.presets import ENTRY_OVERHEAD, MAX_PRESET_NAMES, MAX_PRESET_TABLE_BYTES, Preset
from channel.wire.typed import (
    BASE64,
    BASE64URL,
    ECHO,
    HEX,
    HEX_UPPER,
    MAX_TYPED_FIELDS,
    TEMPLATE_PREFIX,
    TIME_MS,
    TIME_S,
    TRACEPARENT,
    UINT,
    UUID,
    UUID_UPPER,
    TypedFields,
    ValueTemplate,
    encode_value,
)

#: Past ~60 entries, indices need two bytes (62 + 65 > 127), so more rarely pay.
MAX_PRESET_ENTRIES = 60
#: A name is typed as a kind when at least this share of its values is canonical for it...
TYPED_SHARE = 0.98
#: ...and its values vary: a value that repeats is one byte as an indexed HPACK entry.
TYPED_DISTINCT_SHARE = 0.1
#: A response name is the echo when at least this share of its values repeat the request's.
ECHO_SHARE = 0.9
#: Connection-scoped: on at least this share of requests...
CONNECTION_PRESENCE = 0.9
#: ...and its value changes (from the session's previous request carrying it) on at
#: most this share of them. A change costs one literal in the connection block,
#: about what HPACK pays for a new value anyway; staying costs nothing where HPACK
#: pays an index each time, or the whole value for a secret (token renewals: ~0.2 %).
CONNECTION_CHANGE_SHARE = 0.02
#: Never indexed: at least this share of a name's values is unique in the sample.
UNIQUE_SHARE = 0.9
#: Least messages (or sessions) a name must appear in before it is classified.
MIN_SUPPORT = 20
#: Kinds tried, best first when several cover a name's values equally.
KIND_ORDER = (
    UUID, UUID_UPPER, TRACEPARENT, TIME_MS, TIME_S, UINT, HEX, HEX_UPPER, BASE64URL, BASE64,
)  # fmt: skip
#: A name gets a numbers template when this share of its values has the template's shape
#: (the others go through HPACK as before)...
TEMPLATE_SHARE = 0.9
#: ...and the holes' varints are at most this share of the values' length (a template
#: whose numbers are most of the value gains little over a Huffman literal).
TEMPLATE_WIRE_SHARE = 0.5
#: A template with text holes must cost at most this share of the values' HPACK
#: literals (text holes are HPACK strings themselves: only the literals are saved).
TEXT_TEMPLATE_WIRE_SHARE = 0.8
#: A number in a value: its fraction digits become the hole's.
_NUMBER = re.compile(r"-?[0-9]+(?:\.([0-9]+))?")
#: Where a value splits into words for a template with text holes (kept as literals).
_DELIMITERS = re.compile(r"([;,=\s]+)")
_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
#: Plausible times (2001-09-09 .. 2286-11-20): other numbers are not timestamps.
_TIME_RANGE = {TIME_MS: (10**12, 10**13), TIME_S: (10**9, 10**10)}
#: Name parts that mark a secret (RFC 7541 7.1.3: never index them).
_SECRET = re.compile(
    r"(^|[-_.])(token|secret|passw\w*|session|sid|auth\w*|cookie|otp|pin|sig|signature"
    r"|credentials?|(api|access|private)[-_]?key)($|[-_.])"
)

Msg = dict[str, Any]
Header = tuple[str, str]


def _headers(message: Msg) -> list[Header]:
    return [(str(n).lower(), str(v)) for n, v in message.get("headers") or ()]


def _canonical(kind: str, value: str) -> bool:
    if encode_value(kind, value, 0) is None:
        return False
    bounds = _TIME_RANGE.get(kind)
    return bounds is None or bounds[0] <= int(value) < bounds[1]


def detect_connection_names(
    messages: Sequence[Msg], max_change_share: float = CONNECTION_CHANGE_SHARE
) -> tuple[str, ...]:
    """Request header names present on most requests whose value rarely changes
    within a session (at most ``max_change_share`` of the requests carrying them)."""
    requests = [m for m in messages if m.get("kind") == "request"]
    presence: Counter[str] = Counter()
    changes: Counter[str] = Counter()
    sessions: dict[str, set[object]] = defaultdict(set)
    last: dict[tuple[object, str], tuple[str, ...]] = {}
    for message in requests:
        session = message.get("session")
        value_of: dict[str, tuple[str, ...]] = defaultdict(tuple)
        for name, value in _headers(message):
            value_of[name] += (value,)
        for name, value in value_of.items():
            previous = last.get((session, name))
            changes[name] += previous is not None and previous != value
            last[(session, name)] = value
            sessions[name].add(session)
        presence.update(list(value_of))
    names = [
        name
        for name, count in presence.most_common()
        if count >= CONNECTION_PRESENCE * len(requests)
        and len(sessions[name]) >= MIN_SUPPORT
        and changes[name] <= max_change_share * count
    ]
    return tuple(names[:MAX_PRESET_NAMES])


def detect_typed_fields(messages: Sequence[Msg], exclude: Iterable[str] = ()) -> TypedFields:
    """``[name, kind]`` pairs for names whose values are canonical for one kind, plus
    the echo pair, most frequent names first."""
    skip = set(exclude)
    values: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        for name, value in _headers(message):
            if name not in skip and not name.startswith(":"):
                values[name].append(value)
    typed: list[Header] = []
    for name, seen in sorted(values.items(), key=lambda item: -len(item[1])):
        if len(seen) < MIN_SUPPORT or len(set(seen)) < TYPED_DISTINCT_SHARE * len(seen):
            continue
        best = max(
            KIND_ORDER, key=lambda k: (sum(_canonical(k, v) for v in seen), -KIND_ORDER.index(k))
        )
        if sum(_canonical(best, v) for v in seen) >= TYPED_SHARE * len(seen):
            typed.append((name, best))
            continue
        template = learn_value_template(seen)
        if template is not None:
            typed.append((name, TEMPLATE_PREFIX + template))
    echo = _detect_echo(messages, skip)
    if echo is not None:
        typed.append((echo, ECHO))
    return tuple(typed[:MAX_TYPED_FIELDS])


def _shape(value: str) -> str:
    """``value`` with each number replaced by a hole of its fraction digits."""
    return _NUMBER.sub(lambda m: f"{{{len(m.group(1) or '')}}}", value)


def learn_value_template(values: Sequence[str]) -> str | None:
    """The template most of ``values`` fit, if it pays; None otherwise. First a
    template with number holes only (``TEMPLATE_WIRE_SHARE`` of the values' length),
    then one with a text hole for each word that varies (``TEXT_TEMPLATE_WIRE_SHARE``
    of their HPACK literals); either must fit ``TEMPLATE_SHARE`` of the values."""
    plain = [v for v in values if "{" not in v and "}" not in v]
    if not plain:
        return None
    shape = Counter(_shape(v) for v in plain).most_common(1)[0][0]
    fit = _fit(shape, values)
    if fit and sum(w for w, _ in fit) <= TEMPLATE_WIRE_SHARE * sum(len(v) for _, v in fit):
        return shape
    shape = _word_shape(plain)
    fit = _fit(shape, values) if shape else []
    hpack_bytes = sum(min(len(_HUFFMAN.encode(v.encode())), len(v)) + 2 for _, v in fit)
    if fit and sum(w for w, _ in fit) <= TEXT_TEMPLATE_WIRE_SHARE * hpack_bytes:
        return shape
    return None


def _fit(shape: str, values: Sequence[str]) -> list[tuple[int, str]]:
    """(wire bytes, value) of the values ``shape`` encodes; empty when that is too few."""
    try:
        template = ValueTemplate.parse(shape)
    except ValueError:
        return []
    fit = [(len(w), v) for v in values if (w := template.encode(v)) is not None]
    return fit if len(fit) >= TEMPLATE_SHARE * len(values) else []


def _word_shape(values: Sequence[str]) -> str | None:
    """The template of the most common word layout: words that are the same in every
    value of that layout stay literal, the others become holes (``{N}`` when they are
    all canonical numbers with N fraction digits, else ``{s}``)."""
    layouts: dict[tuple[str, ...], list[list[str]]] = defaultdict(list)
    for value in values:
        parts = _DELIMITERS.split(value)
        layouts[tuple(parts[1::2])].append(parts[0::2])
    delimiters, rows = max(layouts.items(), key=lambda item: len(item[1]))
    pieces: list[str] = []
    for column, words in enumerate(zip(*rows, strict=True)):
        if len(set(words)) == 1:
            pieces.append(words[0])
        else:
            shapes = {_shape(w) for w in words}
            number = len(shapes) == 1 and shapes.pop() in {f"{{{n}}}" for n in range(10)}
            pieces.append(_shape(words[0]) if number else "{s}")
        if column < len(delimiters):
            pieces.append(delimiters[column])
    return "".join(pieces)


def _detect_echo(messages: Sequence[Msg], skip: set[str]) -> str | None:
    """The response header that most often repeats the value of its request's."""
    echoed: Counter[str] = Counter()
    carried: Counter[str] = Counter()
    pending: dict[tuple[object, object], list[dict[str, str]]] = defaultdict(list)
    for message in messages:
        key = (message.get("session"), message.get("op"))
        if message.get("kind") == "request":
            pending[key].append(dict(reversed(_headers(message))))
        elif message.get("kind") == "response" and pending[key]:
            request = pending[key].pop(0)
            for name, value in _headers(message):
                if name in skip:
                    continue
                carried[name] += 1
                echoed[name] += request.get(name) == value
    candidates = [
        (count, name)
        for name, count in echoed.items()
        if count >= MIN_SUPPORT and count >= ECHO_SHARE * carried[name]
    ]
    return max(candidates)[1] if candidates else None


def detect_never_indexed(
    messages: Sequence[Msg], typed: TypedFields, connection: Sequence[str]
) -> tuple[str, ...]:
    """Names that look like secrets or whose values are unique per message. A
    connection-scoped secret is listed too: the connection block then sends it as a
    never-indexed literal, and so does a request that overrides it (spec 9.12)."""
    scoped = set(connection)
    handled = {name for name, kind in typed if kind != ECHO} | NEVER_INDEXED_NAMES
    values: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        for name, value in _headers(message):
            if name not in handled:
                values[name].append(value)
    names = []
    for name, seen in sorted(values.items(), key=lambda item: -len(item[1])):
        secret = bool(_SECRET.search(name))
        unique = len(seen) >= MIN_SUPPORT and len(set(seen)) >= UNIQUE_SHARE * len(seen)
        if secret or (unique and name not in scoped):
            names.append(name)
    return tuple(names[:MAX_PRESET_NAMES])


def count_indexable_pairs(messages: Iterable[Msg], preset: Preset | None = None) -> Counter[Header]:
    """(name, value) pairs HPACK would index under ``preset``'s declarations."""
    table = preset.typed_table if preset is not None else None
    skip = NEVER_INDEXED_NAMES
    if preset is not None:
        skip = skip | set(preset.connection) | set(preset.never_indexed)
    counts: Counter[Header] = Counter()
    for message in messages:
        headers = _headers(message)
        if table is not None:
            rest, _typed = table.split(headers, 0, None)
        else:
            from channel.wire.typed import split_typed

            rest, _typed = split_typed(headers, 0, None)
        if message.get("kind") == "request" and message.get("op"):
            counts[(":op", str(message["op"]))] += 1
        for name, value in rest:
            if name not in skip:
                counts[(name, value)] += 1
    return counts


def build_preset(
    messages: Iterable[Msg],
    preset_id: int,
    name: str,
    max_table_bytes: int = MAX_PRESET_TABLE_BYTES,
    max_entries: int = MAX_PRESET_ENTRIES,
    min_count: int | None = None,
    detect: bool = True,
    max_change_share: float = CONNECTION_CHANGE_SHARE,
) -> Preset:
    """The preset of an app (see the module docstring); ``detect=False`` keeps the
    generic typed fields and learns table entries only. A pair becomes an entry when
    it occurs at least ``min_count`` times (default: in 0.2 % of the messages, at
    least twice): rarer values only take space the connection's own entries need.
    ``max_change_share``: see ``detect_connection_names``."""
    sample = list(messages)
    if min_count is None:
        min_count = max(2, len(sample) // 500)
    if detect:
        connection = detect_connection_names(sample, max_change_share)
        typed = detect_typed_fields(sample, exclude=connection)
        never = detect_never_indexed(sample, typed, connection)
        declared = Preset(preset_id, name, (), typed, connection, never)
    else:
        declared = Preset(preset_id, name, ())
    chosen: list[Header] = []
    used = 0
    for pair, count in count_indexable_pairs(sample, declared).most_common():
        if count < min_count or len(chosen) >= max_entries:
            break
        size = ENTRY_OVERHEAD + len(pair[0].encode()) + len(pair[1].encode())
        if used + size > max_table_bytes:
            continue
        chosen.append(pair)
        used += size
    chosen.reverse()
    return Preset(
        preset_id, name, tuple(chosen), declared.typed, declared.connection, declared.never_indexed
    )
