"""Header blocks: HPACK (RFC 7541) with preset tables, never-indexed names and limits.

Each direction of a connection has one encoder (sender) and one decoder
(receiver). Both start with a 4096-byte dynamic table into which the
connection's preset entries are inserted, in listed order, before the first
block, so the very first message can already refer to them by index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import hpack
from hpack.exceptions import (
    HPACKDecodingError,
    HPACKError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.hpack import INDEX_INCREMENTAL, encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable, table_entry_size

from channel.wire.errors import ErrorCode, HeaderError
from channel.wire.limits import INITIAL_HEADER_TABLE_SIZE
from channel.wire.presets import known_preset
from channel.wire.typed import hpack_string

Header = tuple[str, str]
Headers = tuple[Header, ...]

#: Values that are unique per message (ids, timestamps, signatures) or secret:
#: sent as never-indexed literals so they neither churn the dynamic table nor
#: get stored where a compression side channel could probe them.
NEVER_INDEXED_NAMES = frozenset(
    {
        "authorization",
        "cookie",
        "set-cookie",
        "token",
        "sign",
        "signature",
        "trace-id",
        "request-id",
        "message-id",
        "ts",
        "server-time",
    }
)


#: Header blocks remembered per direction (see ``_BlockCache``).
BLOCK_CACHE_ENTRIES = 8


class _CountingTable(HeaderTable):
    """hpack's table plus a counter of insertions, so caches know it changed.

    Until its first insertion or shrink the table's entries are the preset's
    shared tuple (``_load_preset``), not a deque of its own: a connection
    whose headers all hit the preset or the static table never pays for a
    copy (a deque is 760 bytes). Every mutation goes through ``add`` or the
    ``maxsize`` setter, which make the copy first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.insertions = 0
        self.resizes = 0

    def _own_entries(self) -> None:
        if isinstance(self.dynamic_entries, tuple):
            self.dynamic_entries = deque(self.dynamic_entries)

    def add(self, name: bytes, value: bytes) -> None:
        self.insertions += 1
        self._own_entries()
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        # Any resize may evict entries, even one later undone by a regrow.
        self.resizes += 1
        if newmax <= 0 or newmax < self._current_size:
            self._own_entries()  # this resize evicts (pops) or clears
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever the table's content may have: insertions or resizes."""
        return self.insertions, self.resizes


class _BlockCache:
    """Reuse of HPACK work for header sets that left the dynamic table unchanged.

    Once a header set encodes (or a block decodes) without inserting into the
    table, the same input gives the same output for as long as the table
    stays as it was, so the result is kept with the table's insertion count
    and reused while that count holds. With ids and timestamps moved to typed
    fields, a warm connection's request headers are mostly such sets: this
    turns ~20 µs of pure-Python HPACK per side into a dict lookup.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[object, tuple[tuple[int, int], object]] = {}

    def get(self, key: object, version: tuple[int, int]) -> object | None:
        hit = self._entries.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        return None

    def put(self, key: object, version: tuple[int, int], value: object) -> None:
        if len(self._entries) >= BLOCK_CACHE_ENTRIES:
            # Entries made under an older table are useless; else drop the oldest.
            stale = [k for k, (made, _) in self._entries.items() if made != version]
            for k in stale or [next(iter(self._entries))]:
                del self._entries[k]
        self._entries[key] = (version, value)


#: Preset entries as hpack stores them (newest first) and their table size, built once
#: per process: every connection's tables then share the same tuples and bytes
#: instead of holding ~10 KB of copies each (measured with tracemalloc).
_PRESET_TABLES: dict[int, tuple[tuple[tuple[bytes, bytes], ...], int]] = {}


#: Never-indexed names per preset: the spec's list plus the preset's own.
_NEVER_INDEXED: dict[int, frozenset[str]] = {}


def never_indexed_names(preset_id: int) -> frozenset[str]:
    """Names the encoder of a connection with this preset never indexes."""
    names = _NEVER_INDEXED.get(preset_id)
    if names is None:
        extra = known_preset(preset_id).never_indexed
        names = NEVER_INDEXED_NAMES | frozenset(extra) if extra else NEVER_INDEXED_NAMES
        _NEVER_INDEXED[preset_id] = names
    return names


def _preset_table(preset_id: int) -> tuple[tuple[tuple[bytes, bytes], ...], int]:
    """The preset's entries as hpack stores them and their size (``ProtocolError`` if unknown)."""
    built = _PRESET_TABLES.get(preset_id)
    if built is None:
        encoded = [(n.encode(), v.encode()) for n, v in known_preset(preset_id).entries]
        size = sum(table_entry_size(n, v) for n, v in encoded)
        built = (tuple(reversed(encoded)), size)
        _PRESET_TABLES[preset_id] = built
    return built


def _load_preset(table: _CountingTable, preset_id: int) -> None:
    """Insert the preset's entries in listed order (last listed = index 62)."""
    entries, size = _preset_table(preset_id)
    if table.dynamic_entries or size > table.maxsize:
        for name, value in reversed(entries):  # the general path, with evictions
            table.add(name, value)
        return
    # Shared, not copied: the table copies it before its first change (_CountingTable).
    table.dynamic_entries = entries  # type: ignore[assignment]
    table._current_size = size


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC_NAME_INDEX = {name: entry[0] for name, entry in HeaderTable.STATIC_TABLE_MAPPING.items()}


class _ShortestStringEncoder(hpack.Encoder):
    """hpack's encoder, but each string literal Huffman-coded only when that is shorter.

    hpack always Huffman-codes when asked to; for UTF-8 text (Chinese values,
    say) Huffman makes a literal ~2.8 times longer. RFC 7541 lets the encoder
    choose per string.
    """

    def _encode_literal(
        self, name: bytes, value: bytes, indexbit: bytes, huffman: bool = False
    ) -> bytes:
        return b"".join((indexbit, hpack_string(name), hpack_string(value)))

    def _encode_indexed_literal(
        self, index: int, value: bytes, indexbit: bytes, huffman: bool = False
    ) -> bytes:
        prefix = encode_integer(index, 6 if indexbit == INDEX_INCREMENTAL else 4)
        prefix[0] |= ord(indexbit)
        return bytes(prefix) + hpack_string(value)

    def _encode_table_size_change(self) -> bytes:
        # RFC 7541 4.2: signal the smallest size since the last block, then the
        # final one. hpack replays every change in order, so a grow-then-shrink
        # between blocks would first announce a size the decoder no longer allows.
        changes: list[int] = self.table_size_changes
        self.table_size_changes = []
        if not changes:
            return b""
        smallest, final = min(changes), changes[-1]
        out = b""
        for size in (smallest,) if smallest == final else (smallest, final):
            update = encode_integer(size, 5)
            update[0] |= 0x20
            out += bytes(update)
        return out


class HeaderEncoder:
    """Sender side of one direction's HPACK context.

    The hpack state (encoder, table, block cache) is built on the first block
    that needs it: most connections of a push gateway sit idle, and an idle
    connection's context is just its settings. Peer table size changes made
    before that are replayed in order, so the first block is byte for byte
    what an eagerly built encoder would have produced.
    """

    __slots__ = (
        "_cache",
        "_encoder",
        "_max_table_size",
        "_never_indexed",
        "_preset_id",
        "_sizes",
        "_table",
    )

    def __init__(self, preset_id: int, max_table_size: int = INITIAL_HEADER_TABLE_SIZE) -> None:
        _preset_table(preset_id)  # an unknown preset fails here, not at the first block
        self._preset_id = preset_id
        self._never_indexed = never_indexed_names(preset_id)
        self._max_table_size = max_table_size
        #: Table size changes made before the hpack state existed (replayed in order).
        self._sizes: tuple[int, ...] = ()
        self._encoder: _ShortestStringEncoder | None = None
        self._table: _CountingTable | None = None
        self._cache: _BlockCache | None = None

    @property
    def built(self) -> bool:
        """Whether the hpack state exists (a block was encoded or a size update owed)."""
        return self._encoder is not None

    @property
    def never_indexed(self) -> frozenset[str]:
        """Names this encoder sends as never-indexed literals."""
        return self._never_indexed

    def _state(self) -> tuple[_ShortestStringEncoder, _CountingTable, _BlockCache]:
        encoder, table, cache = self._encoder, self._table, self._cache
        if encoder is None or table is None or cache is None:
            encoder = _ShortestStringEncoder()
            # One Huffman coder per process, not one per connection.
            encoder.huffman_coder = _HUFFMAN
            table = _CountingTable()
            encoder.header_table = table
            _load_preset(table, self._preset_id)
            for size in self._sizes:
                encoder.header_table_size = size
            self._sizes = ()
            cache = _BlockCache()
            self._encoder, self._table, self._cache = encoder, table, cache
        return encoder, table, cache

    def _table_size(self) -> int:
        if self._encoder is not None:
            return int(self._encoder.header_table_size)
        return self._sizes[-1] if self._sizes else HeaderTable.DEFAULT_SIZE

    def take_size_update(self) -> bytes:
        """The dynamic table size update this encoder owes, for a block built elsewhere.

        Context-free blocks (prepared pushes) do not pass through the encoder,
        so when the peer changed its table size the update is taken here and
        put in front of such a block; it is then no longer owed.
        """
        if self._encoder is None and not self._sizes:
            return b""
        encoder, table, _ = self._state()
        if not table.resized:
            return b""
        table.resized = False
        # Every pending change, in order: a shrink then regrow must show the shrink.
        return bytes(encoder._encode_table_size_change())

    def use_peer_table_size(self, peer_table_size: int) -> None:
        """Grow (or shrink) to what the peer's decoder announced, within our own cap."""
        size = min(peer_table_size, self._max_table_size)
        if size == self._table_size():
            return
        if self._encoder is not None:
            self._encoder.header_table_size = size
        else:
            self._sizes = (*self._sizes, size)

    def table_entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests and debugging)."""
        return list(self._state()[1].dynamic_entries)

    def encode(self, headers: Sequence[Header]) -> bytes:
        encoder, table, cache = self._state()
        key = tuple(headers)
        before = table.version
        if not table.resized:
            cached = cache.get(key, before)
            if cached is not None:
                assert isinstance(cached, bytes)
                return cached
        never = self._never_indexed
        fields = [
            (name, value, True) if name in never else (name, value) for name, value in headers
        ]
        had_resize = table.resized
        block = bytes(encoder.encode(fields, huffman=True))
        if table.version == before and not had_resize:
            cache.put(key, before, block)
        return block


class HeaderDecoder:
    """Receiver side of one direction's HPACK context, with limits.

    Like ``HeaderEncoder``, the hpack state is built on the first block.
    """

    __slots__ = (
        "_cache",
        "_decoder",
        "_max_header_list_size",
        "_max_table_size",
        "_preset_id",
        "_table",
    )

    def __init__(self, preset_id: int, max_table_size: int, max_header_list_size: int) -> None:
        _preset_table(preset_id)
        self._preset_id = preset_id
        self._max_table_size = max_table_size
        self._max_header_list_size = max_header_list_size
        self._decoder: hpack.Decoder | None = None
        self._table: _CountingTable | None = None
        self._cache: _BlockCache | None = None

    @property
    def built(self) -> bool:
        """Whether the hpack state exists (a block was decoded)."""
        return self._decoder is not None

    def _state(self) -> tuple[hpack.Decoder, _CountingTable, _BlockCache]:
        decoder, table, cache = self._decoder, self._table, self._cache
        if decoder is None or table is None or cache is None:
            decoder = hpack.Decoder(max_header_list_size=self._max_header_list_size)
            table = _CountingTable()
            decoder.header_table = table
            _load_preset(table, self._preset_id)
            decoder.max_allowed_table_size = self._max_table_size
            cache = _BlockCache()
            self._decoder, self._table, self._cache = decoder, table, cache
        return decoder, table, cache

    @property
    def max_header_list_size(self) -> int:
        return self._max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._max_header_list_size = value
        if self._decoder is not None:
            self._decoder.max_header_list_size = value
            # Cached results were checked against the old limit.
            self._cache = _BlockCache()

    @property
    def header_table_size(self) -> int:
        """The size the peer's encoder has set the table to (4096 until it says otherwise)."""
        if self._decoder is None:
            return HeaderTable.DEFAULT_SIZE
        return int(self._decoder.header_table_size)

    def allow_table_size(self, max_table_size: int) -> None:
        """Change the largest table the peer's encoder may use (SETTINGS)."""
        self._max_table_size = max_table_size
        if self._decoder is not None:
            self._decoder.max_allowed_table_size = max_table_size
            self._cache = _BlockCache()

    def table_entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests and debugging)."""
        return list(self._state()[1].dynamic_entries)

    def decode(self, block: bytes) -> Headers:
        decoder, table, cache = self._state()
        before = table.version
        cached = cache.get(block, before)
        if cached is not None:
            assert isinstance(cached, tuple)
            return cached
        _check_structure(block, self._max_header_list_size)
        headers = self._decode(decoder, block)
        if table.version == before:
            cache.put(block, before, headers)
        return headers

    @staticmethod
    def _decode(decoder: hpack.Decoder, block: bytes) -> Headers:
        try:
            decoded = decoder.decode(block)
        except OversizedHeaderListError as exc:
            raise HeaderError(ErrorCode.HEADER_LIST_TOO_LARGE, str(exc)) from None
        except InvalidTableSizeError as exc:
            raise HeaderError(ErrorCode.TABLE_SIZE_ERROR, str(exc)) from None
        except (HPACKDecodingError, InvalidTableIndex, HPACKError) as exc:
            raise HeaderError(ErrorCode.HEADER_ERROR, f"bad header block: {exc}") from None
        except (IndexError, ValueError, UnicodeDecodeError) as exc:
            # hpack lets a few malformed inputs escape as plain Python errors.
            raise HeaderError(ErrorCode.HEADER_ERROR, f"bad header block: {exc}") from None
        headers = tuple((str(name), str(value)) for name, value in decoded)
        for name, _ in headers:
            if not name:
                raise HeaderError(ErrorCode.HEADER_ERROR, "header with an empty name")
        return headers


#: RFC 7541 4.2: at most two dynamic table size updates, at the start of a block.
MAX_SIZE_UPDATES = 2
#: Bytes one field may take per byte of its RFC 7541 size (name + value + 32): a
#: Huffman code is at most 30 bits per octet, and the prefixes and length
#: integers (at most 13 bytes) fit in the 32. The size updates add at most 12.
_BLOCK_BYTES_PER_LIST_BYTE = 4
_SIZE_UPDATES_MAX_BYTES = 12


def _check_structure(block: bytes, max_header_list_size: int) -> None:
    """Refuse, before hpack walks it, a block whose work is out of proportion to its result.

    hpack applies any number of size updates at the start of a block (a 256 KiB
    block of them cost ~230 ms) and decodes a whole Huffman string before it
    checks the header list size. A block longer than any header list within
    the limit could be encoded as, or opening with more than two size updates,
    is refused here in O(1) for the normal block (one length compare, one bit
    test) and O(updates) otherwise.
    """
    limit = _BLOCK_BYTES_PER_LIST_BYTE * max_header_list_size + _SIZE_UPDATES_MAX_BYTES
    if len(block) > limit:
        raise HeaderError(
            ErrorCode.HEADER_LIST_TOO_LARGE,
            f"header block of {len(block)} bytes cannot decode to a header list within "
            f"max_header_list_size {max_header_list_size}",
        )
    offset = 0
    updates = 0
    while offset < len(block) and block[offset] & 0xE0 == 0x20:
        updates += 1
        if updates > MAX_SIZE_UPDATES:
            raise HeaderError(
                ErrorCode.HEADER_ERROR,
                f"more than {MAX_SIZE_UPDATES} dynamic table size updates open the header "
                "block (RFC 7541 4.2)",
            )
        offset = _skip_integer(block, offset, 0x1F)


#: Continuation bytes of an integer worth skipping: a longer one is no table size
#: hpack will accept, and it refuses it itself.
_MAX_INTEGER_CONTINUATION = 8


def _skip_integer(block: bytes, offset: int, prefix_mask: int) -> int:
    """Offset after the RFC 7541 integer at ``offset`` (len(block) if it does not end soon)."""
    if block[offset] & prefix_mask != prefix_mask:
        return offset + 1
    end = min(len(block), offset + 1 + _MAX_INTEGER_CONTINUATION)
    for position in range(offset + 1, end):
        if not block[position] & 0x80:
            return position + 1
    return len(block)


def encode_context_free(
    headers: Sequence[Header], never_indexed: frozenset[str] = NEVER_INDEXED_NAMES
) -> bytes:
    """An HPACK block valid in any decoder state, for frames reused across connections.

    Uses only RFC 7541 "literal header field without indexing" (never-indexed
    for ``never_indexed`` names) with names from the static table or as
    literals: it neither reads nor changes any dynamic table.
    """
    out = bytearray()
    for name, value in headers:
        raw_name = name.encode()
        pattern = 0x10 if name in never_indexed else 0x00
        index = _STATIC_NAME_INDEX.get(raw_name)
        if index is not None:
            prefix = encode_integer(index, 4)
            prefix[0] |= pattern
            out += prefix
        else:
            out.append(pattern)
            out += hpack_string(raw_name)
        out += hpack_string(value.encode())
    return bytes(out)


def header_list_size(headers: Sequence[Header]) -> int:
    """RFC 7541 size of a header list: name + value octets + 32 per field."""
    return sum(len(name.encode()) + len(value.encode()) + 32 for name, value in headers)
