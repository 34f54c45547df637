"""API keys for the HTTP push API: bearer secrets with scopes.

A key is ``ck_<key_id>_<secret>`` (the secret is 32 random bytes, base64url),
sent as ``Authorization: Bearer ck_...``. Gateways never store keys, only a
record per key in ``[api] keys``::

    "<key_id>:<sha256 hex of the whole key>:<scope>+<scope>"

so a leaked config file grants nothing. ``channel apikey new`` makes a key and
prints its record. The key id (``[A-Za-z0-9.-]``, no ``_``) names the key in
logs and errors; rotating a key is adding a record with a new id, moving the
callers, then deleting the old record.

Scopes: ``push`` (push, batch, topic, broadcast), ``status`` (message status,
receipts), ``revoke``, ``presence`` (device and user look-ups), ``kick``,
``rpc`` (call a method on a device), ``*`` (all of those), and ``admin`` (the
admin port's ``/admin/*``: routes, reload, device look-ups). ``*`` does not
include ``admin``: a backend's key for pushing should not reconfigure a node, so
an admin key names the scope.

With no ``[api] keys`` at all, a node makes one development key with every
scope (``*`` and ``admin``) under ``<state_dir>/api/dev.key`` (mode 0600, reused
across restarts) and logs only that path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from channel.logs import fields
from channel.security.keys import write_private_file

log = logging.getLogger("channel.api")

KEY_PREFIX = "ck_"
ALL_SCOPES = "*"
#: The admin port's scope: never implied by ``*``.
ADMIN_SCOPE = "admin"
#: Every scope a key can hold, with what it allows (``channel apikey new --help``).
SCOPES: dict[str, str] = {
    "push": "send pushes: POST /v1/push, /v1/push/batch (devices, users, topics, broadcast)",
    "status": "read message statuses and the receipt stream: GET /v1/messages/*, /v1/receipts",
    "revoke": "revoke undelivered pushes: POST /v1/messages/*/revoke",
    "presence": "look devices and users up: GET /v1/devices/*, /v1/users/*/devices",
    "kick": "disconnect a device: POST /v1/devices/*/kick",
    "rpc": "call a method on a device and wait for its answer: POST /v1/devices/*/rpc",
    ADMIN_SCOPE: "the admin port's /admin/* (routes, reload, device look-ups); not included in *",
}
#: What the development key holds: everything.
DEV_SCOPES = frozenset({ALL_SCOPES, ADMIN_SCOPE})
DEV_KEY_ID = "dev"
DEV_KEY_FILE = Path("api") / "dev.key"

_KEY_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
#: Longest Authorization value worth hashing (a real key is ~110 characters).
_MAX_KEY_CHARS = 256


class ApiKeyError(ValueError):
    """A key or record is malformed; the message never contains key material."""


class AuthError(Exception):
    """A request is not authenticated: ``code`` is AUTH_REQUIRED or AUTH_INVALID."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its id, the SHA-256 of the whole key, its scopes."""

    key_id: str
    digest: bytes
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or (ALL_SCOPES in self.scopes and scope != ADMIN_SCOPE)

    def record(self) -> str:
        return f"{self.key_id}:{self.digest.hex()}:{'+'.join(sorted(self.scopes))}"


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise ApiKeyError(
            f"key id {key_id[:80]!r} must be 1..64 characters of A-Z a-z 0-9 . - (no '_')"
        )
    return key_id


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as a set; ``ApiKeyError`` naming an unknown one or an empty list."""
    out = frozenset(scopes)
    if not out:
        raise ApiKeyError(f"a key needs at least one scope ({', '.join(SCOPES)} or *)")
    for scope in sorted(out):
        if scope != ALL_SCOPES and scope not in SCOPES:
            raise ApiKeyError(f"unknown scope {scope[:40]!r} (known: {', '.join(SCOPES)}, *)")
    return out


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id_of(key: str) -> str:
    """The key id inside ``ck_<key_id>_<secret>``; ``ApiKeyError`` if malformed."""
    if not key.startswith(KEY_PREFIX) or len(key) > _MAX_KEY_CHARS:
        raise ApiKeyError("not a Channel API key (they look like ck_<id>_<secret>)")
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        raise ApiKeyError("not a Channel API key (they look like ck_<id>_<secret>)")
    return key_id


def new_api_key(key_id: str, scopes: Sequence[str]) -> tuple[str, str]:
    """A fresh key and its ``[api] keys`` record: ``(key, record)``."""
    check_key_id(key_id)
    scope_set = check_scopes(scopes)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    key = f"{KEY_PREFIX}{key_id}_{secret}"
    return key, ApiKey(key_id, key_digest(key), scope_set).record()


def parse_record(record: str) -> ApiKey:
    """One ``key_id:sha256hex:scope+scope`` record."""
    parts = record.strip().split(":")
    if len(parts) != 3:
        raise ApiKeyError(
            "an [api] keys record is key_id:sha256-hex:scope+scope "
            "(make one with `channel apikey new`)"
        )
    key_id, digest_hex, scope_text = parts
    check_key_id(key_id)
    if not _HEX_DIGEST.fullmatch(digest_hex):
        raise ApiKeyError(f"key {key_id}: the hash must be 64 lowercase hex digits (SHA-256)")
    try:
        scopes = check_scopes(s for s in scope_text.split("+") if s)
    except ApiKeyError as exc:
        raise ApiKeyError(f"key {key_id}: {exc}") from None
    return ApiKey(key_id, bytes.fromhex(digest_hex), scopes)


class ApiKeyring:
    """The configured keys, checking ``Authorization`` headers."""

    def __init__(self, records: Iterable[str]) -> None:
        self._keys: dict[str, ApiKey] = {}
        for record in records:
            key = parse_record(record)
            if key.key_id in self._keys:
                raise ApiKeyError(f"key id {key.key_id} appears twice in [api] keys")
            self._keys[key.key_id] = key

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key a ``Bearer`` header carries, or ``AuthError`` (never echoing it)."""
        if not authorization:
            raise AuthError(
                "AUTH_REQUIRED", "send the API key as 'Authorization: Bearer ck_<id>_<secret>'"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("AUTH_REQUIRED", "the Authorization scheme must be 'Bearer'")
        token = token.strip()
        try:
            key_id = key_id_of(token)
        except ApiKeyError as exc:
            raise AuthError("AUTH_INVALID", str(exc)) from None
        key = self._keys.get(key_id)
        digest = key_digest(token)
        # Compared even for unknown ids, so timing tells nothing about the secret.
        expected = key.digest if key is not None else b"\0" * len(digest)
        if not hmac.compare_digest(digest, expected) or key is None:
            raise AuthError("AUTH_INVALID", f"API key {key_id} is unknown or revoked")
        return key


def ensure_dev_api_key(state_dir: Path) -> tuple[str, str]:
    """The development key (``DEV_SCOPES``) under ``state_dir/api/dev.key``:
    made once with mode 0600, then reused. Returns ``(key, record)``."""
    path = state_dir / DEV_KEY_FILE
    key = _read_dev_key(path)
    if key is None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key, _ = new_api_key(DEV_KEY_ID, sorted(DEV_SCOPES))
        try:
            write_private_file(path, (key + "\n").encode("ascii"), exclusive=True)
        except FileExistsError:
            # Another worker made it first: use theirs, so every worker agrees.
            key = _read_dev_key(path)
            if key is None:
                raise ApiKeyError(f"{path} is not a Channel API key; delete it") from None
    return key, ApiKey(DEV_KEY_ID, key_digest(key), DEV_SCOPES).record()


def _read_dev_key(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"cannot read the development API key {path}: {exc}") from None
    try:
        if key_id_of(text) != DEV_KEY_ID:
            raise ApiKeyError("wrong key id")
    except ApiKeyError:
        raise ApiKeyError(f"{path} is not a Channel API key; delete it") from None
    return text


def load_keyring(state_dir: Path, records: Sequence[str]) -> ApiKeyring:
    """The keys of ``[api] keys`` (the push API's and the admin port's), or the
    development key when there are none; ``ApiKeyError`` names a bad record."""
    if not records:
        _, record = ensure_dev_api_key(state_dir)
        log.warning(
            "no [api] keys configured; using the development key (every scope, admin too)",
            extra=fields(key_file=str(state_dir / DEV_KEY_FILE)),
        )
        records = [record]
    return ApiKeyring(records)
