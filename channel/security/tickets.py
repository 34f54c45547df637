"""Resume tickets: small, sealed session state a device hands back to resume.

A ticket lets a reconnecting device skip token verification (and any call to
an auth backend) and keep its session (unacknowledged pushes). Only gateways
can read it: it is sealed with ChaCha20-Poly1305 under a key the fleet shares.

Layout::

    key id (1) | nonce (12) | ciphertext (len(plaintext)) | tag (16)

    plaintext = session_id (8)
              | expires_at (uint32, big-endian, unix s)
              | auth_expires_at - expires_at (LEB128 varint)
              | len(user_id) (1) | user_id (UTF-8)
              | scopes joined by one space (ASCII; the rest, possibly empty)

    associated data = "mmtp-ticket/1" 0x00 | key id | len(device_id) (1) | device_id
                    | len(app_id) (1) | app_id

The device id and app id are not inside the ticket: they are in the HELLO
the ticket arrives with, and binding them as associated data makes a ticket
copied to another device (or app) fail authentication. Scope tokens cannot
contain spaces (``check_scope``), so joining them is unambiguous. A ticket for
a 20-character user id and 4 short scopes is about 79 bytes; 29 of them are
the fixed overhead.

Expiry: a ticket expires at ``min(now + ticket ttl, token expiry)``
(``SessionTicket.issue``). ``auth_expires_at`` carries the token's own expiry
from ticket to ticket, so resuming — even again and again — never keeps a
session alive past the token that opened it; ``seal`` refuses a ticket that
would.

Keys: a ``TicketKeyRing`` holds the current key (seals) and older keys still
accepted (open only). A fleet derives every key from one master secret in its
config (``TicketKeyRing.from_master_secret``: HKDF-SHA256 of the secret and
the key id), so nodes never exchange keys. Rotation without refusing valid
tickets is two rolling config changes: (1) every node accepts key id N+1,
(2) every node seals with N+1 (still accepting N); after the longest ticket
lifetime, N can be retired. Random 96-bit nonces stay safe for about 2**32
tickets per key, so at 300M devices rotate at least daily.

Replay: ``open`` does not remember tickets. A ticket is a bearer credential
valid until it expires; a caller that wants single use records
``(session_id, expires_at)`` (for example ``SET NX`` with that expiry in the
presence store) and refuses a second resume.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from channel.security.tokens import (
    CredentialError,
    check_id,
    check_key_id,
    check_scopes,
    check_time,
)
from channel.wire.errors import ErrorCode, ProtocolError
from channel.wire.varint import NeedMoreData, decode_varint, encode_varint

SESSION_ID_BYTES = 8
TICKET_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: Key id, nonce and tag: what sealing adds to the plaintext.
TICKET_OVERHEAD_BYTES = 1 + NONCE_BYTES + TAG_BYTES
MAX_TICKET_BYTES = 1024
MIN_MASTER_SECRET_BYTES = 32

_AD_LABEL = b"mmtp-ticket/1\x00"
_HKDF_SALT = b"channel resume ticket keys v1"
_FIXED_PLAINTEXT = struct.Struct(">8sI")
# session id, expiry, one-byte varint delta, user id length, one-byte user id.
_MIN_PLAINTEXT_BYTES = _FIXED_PLAINTEXT.size + 1 + 1 + 1
_MIN_TICKET_BYTES = TICKET_OVERHEAD_BYTES + _MIN_PLAINTEXT_BYTES


_MALFORMED = "ticket contents are malformed"
_NOT_AUTHENTIC = "ticket failed authentication (tampered, or sealed for another device or app)"


class TicketError(CredentialError):
    """A resume ticket cannot be used: always ``TICKET_INVALID``.

    The device then reconnects with its token and no ticket.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TICKET_INVALID, message)


@dataclass(frozen=True)
class SessionTicket:
    """The session state a ticket carries; device and app id travel in HELLO."""

    user_id: str
    scopes: tuple[str, ...]
    session_id: bytes
    expires_at: int
    #: The expiry of the token that opened the session; no ticket outlives it.
    auth_expires_at: int

    def __post_init__(self) -> None:
        check_id("user_id", self.user_id)
        check_scopes(self.scopes)
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_BYTES:
            raise ValueError(f"session_id must be {SESSION_ID_BYTES} bytes")
        check_time("expires_at", self.expires_at)
        check_time("auth_expires_at", self.auth_expires_at)
        if self.expires_at > self.auth_expires_at:
            raise ValueError(
                "ticket expires_at is after auth_expires_at: a ticket must not outlive its token"
            )

    @classmethod
    def issue(
        cls,
        *,
        user_id: str,
        scopes: tuple[str, ...],
        session_id: bytes,
        now: float,
        ttl_s: int,
        auth_expires_at: int,
    ) -> SessionTicket:
        """A ticket valid for ``ttl_s`` from ``now``, but never past ``auth_expires_at``."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1, got {ttl_s}")
        return cls(
            user_id=user_id,
            scopes=scopes,
            session_id=session_id,
            expires_at=min(int(now) + ttl_s, auth_expires_at),
            auth_expires_at=auth_expires_at,
        )


def derive_ticket_key(master_secret: bytes, key_id: int) -> bytes:
    """The 32-byte key for ``key_id``: HKDF-SHA256(master secret, info = label | key id)."""
    check_key_id(key_id)
    if len(master_secret) < MIN_MASTER_SECRET_BYTES:
        raise ValueError(
            f"ticket master secret is {len(master_secret)} bytes; use at least "
            f"{MIN_MASTER_SECRET_BYTES} random bytes"
        )
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=TICKET_KEY_BYTES,
        salt=_HKDF_SALT,
        info=b"ticket key " + bytes((key_id,)),
    )
    return hkdf.derive(master_secret)


def tls_ticket_keys(
    master_secret: bytes, current_key_id: int, accepted_key_ids: Iterable[int] = ()
) -> tuple[int, list[tuple[int, bytes]]]:
    """TLS session ticket keys for the native engine, derived from the fleet's ticket
    secret apart from the MMTP resume-ticket keys (another HKDF label): every node and
    worker derives the same keys, so a device resumes its TLS session wherever it lands.
    Returns (current key id, [(key id, 32-byte key)]) with the current key first."""
    ids = [current_key_id, *(k for k in accepted_key_ids if k != current_key_id)]
    keys = []
    for key_id in ids:
        check_key_id(key_id)
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=TICKET_KEY_BYTES,
            salt=_HKDF_SALT,
            info=b"tls session ticket key " + bytes((key_id,)),
        )
        keys.append((key_id, hkdf.derive(master_secret)))
    return current_key_id, keys


class TicketKeyRing:
    """The sealing key and the keys still accepted for opening, by one-byte id."""

    def __init__(
        self, current_key_id: int, current_key: bytes, accepted: Mapping[int, bytes] | None = None
    ) -> None:
        self._ciphers: dict[int, ChaCha20Poly1305] = {}
        self._keys: dict[int, bytes] = {}
        for key_id, key in (accepted or {}).items():
            self.accept(key_id, key)
        self._current_key_id = current_key_id
        self.rotate(current_key_id, current_key)

    @classmethod
    def from_master_secret(
        cls, master_secret: bytes, current_key_id: int, accepted_key_ids: Iterable[int] = ()
    ) -> TicketKeyRing:
        """Keys derived from the fleet's shared secret: same config, same keys everywhere."""
        accepted = {k: derive_ticket_key(master_secret, k) for k in accepted_key_ids}
        return cls(current_key_id, derive_ticket_key(master_secret, current_key_id), accepted)

    @classmethod
    def generate(cls, key_id: int = 0) -> TicketKeyRing:
        """A random key for a single node: its tickets die with the process."""
        return cls(key_id, os.urandom(TICKET_KEY_BYTES))

    @property
    def current_key_id(self) -> int:
        return self._current_key_id

    @property
    def key_ids(self) -> tuple[int, ...]:
        """Every id ``open`` accepts, the current one included."""
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"TicketKeyRing(current_key_id={self.current_key_id}, key_ids={self.key_ids})"

    def accept(self, key_id: int, key: bytes) -> None:
        """Accept tickets sealed under ``key_id`` without sealing with it (rotation step 1)."""
        check_key_id(key_id)
        if not isinstance(key, bytes) or len(key) != TICKET_KEY_BYTES:
            raise ValueError(f"ticket key {key_id} must be {TICKET_KEY_BYTES} bytes")
        known = self._keys.get(key_id)
        if known is not None and known != key:
            # Reusing an id for a different key would make its live tickets fail.
            raise ValueError(f"ticket key id {key_id} is already in use with another key")
        self._keys[key_id] = key
        self._ciphers[key_id] = ChaCha20Poly1305(key)

    def rotate(self, new_key_id: int, key_bytes: bytes) -> None:
        """Seal with ``new_key_id`` from now on; the previous key stays accepted."""
        self.accept(new_key_id, key_bytes)
        self._current_key_id = new_key_id

    def retire(self, key_id: int) -> None:
        """Stop accepting ``key_id`` (its tickets become invalid); not the current key."""
        if key_id == self._current_key_id:
            raise ValueError(f"cannot retire ticket key {key_id}: it is the current key")
        self._keys.pop(key_id, None)
        self._ciphers.pop(key_id, None)

    def cipher(self, key_id: int) -> ChaCha20Poly1305 | None:
        return self._ciphers.get(key_id)

    def key(self, key_id: int) -> bytes | None:
        """The raw key under ``key_id`` (for the native sealer), None if not accepted."""
        return self._keys.get(key_id)


def _associated_data(key_id: int, device_id: str, app_id: str) -> bytes:
    device = device_id.encode("utf-8")
    app = app_id.encode("utf-8")
    if len(device) > 255 or len(app) > 255:
        raise ValueError("device_id and app_id must be at most 255 UTF-8 bytes")
    return b"".join((_AD_LABEL, bytes((key_id, len(device))), device, bytes((len(app),)), app))


def encode_ticket_plaintext(ticket: SessionTicket) -> bytes:
    user = ticket.user_id.encode("utf-8")
    return b"".join(
        (
            _FIXED_PLAINTEXT.pack(ticket.session_id, ticket.expires_at),
            encode_varint(ticket.auth_expires_at - ticket.expires_at),
            bytes((len(user),)),
            user,
            " ".join(ticket.scopes).encode("ascii"),
        )
    )


def decode_ticket_plaintext(plaintext: bytes) -> SessionTicket:
    """Parse an authenticated plaintext; ``TicketError`` if it is not well formed."""
    try:
        session_id, expires_at = _FIXED_PLAINTEXT.unpack_from(plaintext)
        delta, offset = decode_varint(plaintext, _FIXED_PLAINTEXT.size)
        user_len = plaintext[offset]
        user_end = offset + 1 + user_len
        if user_end > len(plaintext):
            raise ValueError("user id runs past the end")
        user_id = plaintext[offset + 1 : user_end].decode("utf-8")
        scope_text = plaintext[user_end:].decode("ascii")
        return SessionTicket(
            user_id=user_id,
            scopes=tuple(scope_text.split(" ")) if scope_text else (),
            session_id=session_id,
            expires_at=expires_at,
            auth_expires_at=expires_at + delta,
        )
    except (ValueError, IndexError, struct.error, NeedMoreData, ProtocolError):
        raise TicketError(_MALFORMED) from None


def _load_native() -> tuple[_NativeSeal, _NativeOpen] | None:
    try:
        from channel._engine import resume_ticket_open, resume_ticket_seal
    except ImportError:  # the native module is not built: the Python twin below
        return None
    return resume_ticket_seal, resume_ticket_open


_NativeSeal = Callable[[bytes, int, bytes, bytes, int, int, str, str, str, str], bytes]
_NativeOpen = Callable[[bytes, bytes, str, str], "tuple[bytes, int, int, str, str] | None"]
#: ``channel._engine``'s sealing and opening (the same bytes, ~2 µs instead of ~15 µs per
#: resumed handshake); policy and key choice stay here. None: the Python twin.
_NATIVE = _load_native()


class TicketSealer:
    """Seals and opens tickets with a ``TicketKeyRing`` (which may rotate meanwhile).

    The byte work is ``channel._engine``'s when the native module is built
    (``native=False`` forces the Python twin; both make and take the same bytes).
    """

    def __init__(
        self,
        keys: TicketKeyRing,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        native: bool = True,
    ) -> None:
        self.keys = keys
        self._random_bytes = random_bytes
        self._native = _NATIVE if native else None

    @property
    def is_native(self) -> bool:
        return self._native is not None

    def __repr__(self) -> str:
        return f"TicketSealer({self.keys!r})"

    def seal(self, ticket: SessionTicket, *, device_id: str, app_id: str) -> bytes:
        """Seal ``ticket`` for this device and app under the current key."""
        return self.seal_fields(
            ticket.user_id,
            ticket.scopes,
            ticket.session_id,
            ticket.expires_at,
            ticket.auth_expires_at,
            device_id=device_id,
            app_id=app_id,
        )

    def seal_fields(
        self,
        user_id: str,
        scopes: tuple[str, ...],
        session_id: bytes,
        expires_at: int,
        auth_expires_at: int,
        *,
        device_id: str,
        app_id: str,
    ) -> bytes:
        """``seal`` for fields already checked (a token's claims, an opened ticket):
        the handshake path, without building a ``SessionTicket``. The native sealer still
        refuses what the layout cannot hold (``ValueError``); the Python twin checks all."""
        key_id = self.keys.current_key_id
        nonce = self._random_bytes(NONCE_BYTES)
        if self._native is not None:
            key = self.keys.key(key_id)
            if key is None:  # pragma: no cover - the ring always holds its current key
                raise RuntimeError("ticket key ring has no current key")
            data = self._native[0](
                key,
                key_id,
                nonce,
                session_id,
                expires_at,
                auth_expires_at,
                user_id,
                " ".join(scopes),
                device_id,
                app_id,
            )
        else:
            cipher = self.keys.cipher(key_id)
            if cipher is None:  # pragma: no cover - the ring always holds its current key
                raise RuntimeError("ticket key ring has no current key")
            ticket = SessionTicket(user_id, scopes, session_id, expires_at, auth_expires_at)
            sealed = cipher.encrypt(
                nonce,
                encode_ticket_plaintext(ticket),
                _associated_data(key_id, device_id, app_id),
            )
            data = bytes((key_id,)) + nonce + sealed
        if len(data) > MAX_TICKET_BYTES:
            raise ValueError(f"ticket would be {len(data)} bytes, more than {MAX_TICKET_BYTES}")
        return data

    def open(self, data: bytes, *, device_id: str, app_id: str, now: float) -> SessionTicket:
        """The ticket inside ``data`` if it is authentic, for this device/app and unexpired.

        Raises ``TicketError`` (``TICKET_INVALID``) otherwise. Does not prevent
        a second use of the same ticket: see the module docstring.
        """
        if not isinstance(data, bytes):
            raise TicketError("ticket must be bytes")
        if not _MIN_TICKET_BYTES <= len(data) <= MAX_TICKET_BYTES:
            raise TicketError(
                f"ticket is {len(data)} bytes, expected {_MIN_TICKET_BYTES}..{MAX_TICKET_BYTES}"
            )
        key_id = data[0]
        cipher = self.keys.cipher(key_id)
        if cipher is None:
            raise TicketError(
                f"ticket sealed under key id {key_id}, which is retired or unknown here"
            )
        try:
            associated = _associated_data(key_id, device_id, app_id)
        except (ValueError, UnicodeEncodeError):
            raise TicketError("device_id or app_id cannot be bound to a ticket") from None
        if self._native is not None:
            ticket = self._open_native(data, key_id, device_id, app_id)
        else:
            nonce = data[1 : 1 + NONCE_BYTES]
            try:
                plaintext = cipher.decrypt(nonce, data[1 + NONCE_BYTES :], associated)
            except InvalidTag:
                raise TicketError(_NOT_AUTHENTIC) from None
            ticket = decode_ticket_plaintext(plaintext)
        if now >= ticket.expires_at:
            raise TicketError(
                f"ticket expired {now - ticket.expires_at:.0f} s ago; reconnect with the token"
            )
        return ticket

    def _open_native(self, data: bytes, key_id: int, device_id: str, app_id: str) -> SessionTicket:
        assert self._native is not None
        key = self.keys.key(key_id)
        assert key is not None  # the ring had its cipher
        try:
            opened = self._native[1](key, data, device_id, app_id)
        except ValueError:
            raise TicketError(_MALFORMED) from None
        if opened is None:
            raise TicketError(_NOT_AUTHENTIC)
        session_id, expires_at, auth_expires_at, user_id, scopes = opened
        try:
            return SessionTicket(
                user_id=user_id,
                scopes=tuple(scopes.split(" ")) if scopes else (),
                session_id=session_id,
                expires_at=expires_at,
                auth_expires_at=auth_expires_at,
            )
        except ValueError:
            raise TicketError(_MALFORMED) from None
