"""Header blocks: HPACK (RFC 7541) with preset tables, never-indexed names and limits.

Each direction of a connection has one encoder (sender) and one decoder
(receiver). Both start with a 4096-byte dynamic table into which the
connection's preset entries are inserted, in listed order, before the first
block, so the very first message can already refer to them by index.
"""

from __future__ import annotations

from collections.abc import Sequence

import hpack
from hpack.exceptions import (
    HPACKDecodingError,
    HPACKError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

from channel.wire.errors import ErrorCode, HeaderError
from channel.wire.limits import INITIAL_HEADER_TABLE_SIZE
from channel.wire.presets import preset_entries

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


def _load_preset(table: hpack.table.HeaderTable, preset_id: int) -> None:
    for name, value in preset_entries(preset_id):
        table.add(name.encode(), value.encode())


class HeaderEncoder:
    """Sender side of one direction's HPACK context."""

    def __init__(self, preset_id: int, max_table_size: int = INITIAL_HEADER_TABLE_SIZE) -> None:
        self._encoder = hpack.Encoder()
        _load_preset(self._encoder.header_table, preset_id)
        self._max_table_size = max_table_size

    def use_peer_table_size(self, peer_table_size: int) -> None:
        """Grow (or shrink) to what the peer's decoder announced, within our own cap."""
        size = min(peer_table_size, self._max_table_size)
        if size != self._encoder.header_table_size:
            self._encoder.header_table_size = size

    def encode(self, headers: Sequence[Header]) -> bytes:
        fields = [
            (name, value, True) if name in NEVER_INDEXED_NAMES else (name, value)
            for name, value in headers
        ]
        return bytes(self._encoder.encode(fields, huffman=True))


class HeaderDecoder:
    """Receiver side of one direction's HPACK context, with limits."""

    def __init__(self, preset_id: int, max_table_size: int, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        _load_preset(self._decoder.header_table, preset_id)
        self._decoder.max_allowed_table_size = max_table_size

    def decode(self, block: bytes) -> Headers:
        try:
            decoded = self._decoder.decode(block)
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


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC_NAME_INDEX = {name: entry[0] for name, entry in HeaderTable.STATIC_TABLE_MAPPING.items()}


def _string(raw: bytes) -> bytes:
    coded = _HUFFMAN.encode(raw)
    if len(coded) < len(raw):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(raw), 7)) + raw


def encode_context_free(headers: Sequence[Header]) -> bytes:
    """An HPACK block valid in any decoder state, for frames reused across connections.

    Uses only RFC 7541 "literal header field without indexing" (never-indexed
    for ``NEVER_INDEXED_NAMES``) with names from the static table or as
    literals: it neither reads nor changes any dynamic table.
    """
    out = bytearray()
    for name, value in headers:
        raw_name = name.encode()
        pattern = 0x10 if name in NEVER_INDEXED_NAMES else 0x00
        index = _STATIC_NAME_INDEX.get(raw_name)
        if index is not None:
            prefix = encode_integer(index, 4)
            prefix[0] |= pattern
            out += prefix
        else:
            out.append(pattern)
            out += _string(raw_name)
        out += _string(value.encode())
    return bytes(out)
