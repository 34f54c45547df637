"""Dictionaries the server delivered, kept on disk for the next connections.

The server delivers its current dictionary for the app (DICT frames) when a
HELLO does not list it (spec 10.5). The client stores each as
``dict-<id>.mmtpdict`` in a directory it owns, loads them at start and lists
them in every HELLO, so the next connection compresses with it from its first
message and the server sends it only once per device. Only the newest
``keep`` files are kept; a file that does not parse is ignored (and replaced
when the server delivers that id again).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from channel.wire import Dictionary

log = logging.getLogger("channel.sdk")

#: Dictionaries kept per directory (a HELLO lists at most 32).
DEFAULT_KEEP = 8
_NAME = re.compile(r"dict-(\d+)\.mmtpdict")


class DictionaryFiles:
    """See the module docstring."""

    def __init__(self, directory: Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = directory
        self.keep = keep

    def _files(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def load(self) -> list[Dictionary]:
        """The stored dictionaries, oldest first."""
        out = []
        for dict_id, path in self._files():
            try:
                dictionary = Dictionary.from_file_bytes(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable dictionary %s: %s", path, exc)
                continue
            if dictionary.dict_id == dict_id:
                out.append(dictionary)
        return out

    def save(self, dictionary: Dictionary) -> None:
        """Store a delivered dictionary (atomically) and drop the oldest beyond ``keep``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"dict-{dictionary.dict_id}.mmtpdict"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(dictionary.to_file_bytes())
        os.replace(tmp, path)
        for _, old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
