"""Compression dictionaries: identity, file format and the set a peer holds.

A dictionary is a zstd dictionary plus the MMTP dictionary id under which both
peers know it. Ids are assigned by whoever trains the dictionary (see
``channel dict train``) and never reused for different content; a newer
dictionary gets a larger id.

File format (``.mmtpdict``), all integers big-endian::

    8 bytes  magic  b"MMTPDICT"
    1 byte   format version (1)
    4 bytes  dictionary id (1 .. 2**32 - 1)
    rest     zstd dictionary content (as produced by ``zstd --train``)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from channel.wire.errors import ErrorCode, ProtocolError

FILE_MAGIC = b"MMTPDICT"
FILE_FORMAT_VERSION = 1
MAX_DICTIONARY_ID = 2**32 - 1
_HEADER_LEN = len(FILE_MAGIC) + 1 + 4


@dataclass(frozen=True)
class Dictionary:
    """A zstd dictionary known to both peers under ``dict_id``."""

    dict_id: int
    content: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.dict_id <= MAX_DICTIONARY_ID:
            raise ValueError(f"dictionary id must be 1..{MAX_DICTIONARY_ID}, got {self.dict_id}")
        if not self.content:
            raise ValueError("dictionary content is empty")

    @property
    def sha256(self) -> str:
        """Hex digest of the content, for logs and operator checks."""
        return hashlib.sha256(self.content).hexdigest()

    def to_file_bytes(self) -> bytes:
        """Serialise in the ``.mmtpdict`` file format."""
        return (
            FILE_MAGIC
            + bytes([FILE_FORMAT_VERSION])
            + self.dict_id.to_bytes(4, "big")
            + self.content
        )

    @classmethod
    def from_file_bytes(cls, data: bytes) -> Dictionary:
        """Parse the ``.mmtpdict`` file format; raises ``ValueError`` on a bad file."""
        if len(data) <= _HEADER_LEN or not data.startswith(FILE_MAGIC):
            raise ValueError("not an MMTP dictionary file (bad magic or too short)")
        version = data[len(FILE_MAGIC)]
        if version != FILE_FORMAT_VERSION:
            raise ValueError(f"unsupported dictionary file version {version}")
        dict_id = int.from_bytes(data[len(FILE_MAGIC) + 1 : _HEADER_LEN], "big")
        return cls(dict_id, bytes(data[_HEADER_LEN:]))


class DictionaryStore:
    """The dictionaries one process holds, by id (shared by all its connections)."""

    def __init__(self, dictionaries: Iterable[Dictionary] = ()) -> None:
        self._by_id: dict[int, Dictionary] = {}
        for dictionary in dictionaries:
            self.add(dictionary)

    def add(self, dictionary: Dictionary) -> None:
        existing = self._by_id.get(dictionary.dict_id)
        if existing is not None and existing.content != dictionary.content:
            raise ProtocolError(
                ErrorCode.DICTIONARY_ERROR,
                f"dictionary id {dictionary.dict_id} already holds different content",
            )
        self._by_id[dictionary.dict_id] = dictionary

    def get(self, dict_id: int) -> Dictionary | None:
        return self._by_id.get(dict_id)

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._by_id

    def __iter__(self) -> Iterator[Dictionary]:
        return iter(sorted(self._by_id.values(), key=lambda d: d.dict_id))

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._by_id))

    @property
    def newest(self) -> Dictionary | None:
        if not self._by_id:
            return None
        return self._by_id[max(self._by_id)]
