"""Writing key and certificate files safely.

Private keys are written with mode 0600 *from the start* (never created
world-readable and chmod-ed afterwards) and atomically (a temporary file in the
same directory, then a rename or link), so a crash or a concurrent reader never
sees half a key. ``exclusive=True`` refuses to replace an existing file: a key
that tokens are already signed with must not be overwritten by accident.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def write_file_atomically(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` with permission ``mode``, all or nothing.

    With ``exclusive`` the file must not exist yet (``FileExistsError``
    otherwise, and nothing is written).
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            # mkstemp creates the file 0600, so a private key is never readable by others.
            os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        if exclusive:
            # link() fails if the target exists; replace() would silently overwrite.
            os.link(tmp_name, path)
        else:
            os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a private key (mode 0600)."""
    write_file_atomically(path, data, mode=PRIVATE_FILE_MODE, exclusive=exclusive)


def write_public_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a public key or certificate (mode 0644)."""
    write_file_atomically(path, data, mode=PUBLIC_FILE_MODE, exclusive=exclusive)


def read_key_file(path: Path) -> bytes:
    """Read a key file; ``ValueError`` naming the path (never the content) if unreadable."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror or exc}") from None
