"""Device tokens: compact claims signed with Ed25519.

An authentication service holds the private key and issues tokens; gateways
hold only public keys, so a compromised gateway cannot mint tokens. A token
travels once per full handshake (in HELLO ``token``), so it is binary and
small: about 130 bytes for a 36-character device id.

Token format (version 1)::

    offset  size  field
    0       1     version = 0x01
    1       1     key id (0..255): which public key verifies it
    2       n     msgpack array [device_id, user_id, app_id, issued_at, expires_at]
                  or the same with a sixth element: scopes, an array of strings
    2+n     64    Ed25519 signature over bytes 0 .. 2+n-1 (version and key id included)

Ids are msgpack str (UTF-8, at most ``MAX_ID_BYTES`` bytes; device and user id
non-empty, app id may be empty); times are msgpack uints, unix seconds below
2**32; scopes are OAuth-style scope tokens (printable ASCII, no space, quote or
backslash). A whole token is at most ``MAX_TOKEN_BYTES``. The signature is
checked before the claims are parsed, and the parser is bounded and strict
anyway. In text (CLI, HTTP, config) a token is base64url without padding.

Key files are PEM: PKCS8 for the private key, SubjectPublicKeyInfo for the
public key. The key id lives in the file name: ``token-<id>.key`` (private,
mode 0600) and ``token-<id>.pub`` (public). A gateway loads every
``token-*.pub`` in a directory (``load_verification_keys``), so rotating the
signing key is: generate ``token-<id+1>``, copy the ``.pub`` to the gateways,
switch the issuer, and delete the old ``.pub`` once the last old token expired.

Every failure raises ``TokenError`` with an ``ErrorCode`` the gateway sends in
its ERROR frame; messages never contain the token or key material.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from channel.security.keys import read_key_file, write_private_file, write_public_file
from channel.wire.errors import ErrorCode

TOKEN_VERSION = 1
MAX_TOKEN_BYTES = 1024
SIGNATURE_BYTES = 64
HEADER_BYTES = 2
MAX_KEY_ID = 255
#: Same bound as the wire's ``max_identity_length`` for HELLO ids.
MAX_ID_BYTES = 128
MAX_SCOPES = 16
MAX_SCOPE_BYTES = 64
#: Times are unix seconds that fit 32 bits (resume tickets store them that way).
MAX_TIME = 2**32 - 1
DEFAULT_LEEWAY_S = 30

PRIVATE_KEY_SUFFIX = ".key"
PUBLIC_KEY_SUFFIX = ".pub"
_KEY_FILE_NAME = re.compile(r"token-(\d{1,3})\.(key|pub)")
# RFC 6749 scope-token: printable ASCII without space, '"' and '\'.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
#: How a version-1 token's text form starts (base64url of the byte 0x01).
_TEXT_PREFIX = b"AQ"
_MAX_TEXT_CHARS = (MAX_TOKEN_BYTES * 4 + 2) // 3
_MIN_TOKEN_BYTES = HEADER_BYTES + 1 + SIGNATURE_BYTES


class CredentialError(Exception):
    """A token or resume ticket was refused; ``code`` is what the gateway sends.

    ``message`` says what was wrong and never contains the credential itself.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class TokenError(CredentialError):
    """A device token was refused (``AUTH_INVALID``, ``AUTH_EXPIRED`` or ``FORBIDDEN``)."""


def check_scope(scope: str) -> None:
    """``ValueError`` unless ``scope`` is a non-empty scope token of at most 64 bytes."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise ValueError(
            f"scope {scope!r} must be printable ASCII without spaces, quotes or backslashes"
        )
    if len(scope) > MAX_SCOPE_BYTES:
        raise ValueError(f"scope is {len(scope)} bytes, more than {MAX_SCOPE_BYTES}")


def check_scopes(scopes: tuple[str, ...]) -> None:
    """``ValueError`` unless ``scopes`` is a tuple of at most 16 valid scopes."""
    if not isinstance(scopes, tuple):
        raise ValueError(f"scopes must be a tuple, got {type(scopes).__name__}")
    if len(scopes) > MAX_SCOPES:
        raise ValueError(f"{len(scopes)} scopes, more than {MAX_SCOPES}")
    for scope in scopes:
        check_scope(scope)


def check_id(name: str, value: str, *, allow_empty: bool = False) -> None:
    """``ValueError`` unless ``value`` is a str of at most 128 UTF-8 bytes."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text (lone surrogate)") from None
    if size > MAX_ID_BYTES:
        raise ValueError(f"{name} is {size} bytes, more than {MAX_ID_BYTES}")


def check_time(name: str, value: int) -> None:
    """``ValueError`` unless ``value`` is an int of unix seconds in 0 .. 2**32-1."""
    if type(value) is not int or not 0 <= value <= MAX_TIME:
        raise ValueError(f"{name} must be unix seconds in 0..{MAX_TIME}, got {value!r}")


def check_key_id(key_id: int) -> None:
    if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id must be 0..{MAX_KEY_ID}, got {key_id!r}")


@dataclass(frozen=True)
class DeviceClaims:
    """What a token says: who the device is, for which app, and until when."""

    device_id: str
    user_id: str
    app_id: str
    expires_at: int
    issued_at: int
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_id("device_id", self.device_id)
        check_id("user_id", self.user_id)
        check_id("app_id", self.app_id, allow_empty=True)
        check_time("issued_at", self.issued_at)
        check_time("expires_at", self.expires_at)
        if self.expires_at < self.issued_at:
            raise ValueError("expires_at is before issued_at")
        check_scopes(self.scopes)


def encode_claims(claims: DeviceClaims) -> bytes:
    """The msgpack claims array (the part of a token between header and signature)."""
    items: list[Any] = [
        claims.device_id,
        claims.user_id,
        claims.app_id,
        claims.issued_at,
        claims.expires_at,
    ]
    if claims.scopes:
        items.append(list(claims.scopes))
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


def decode_claims(payload: bytes) -> DeviceClaims:
    """Parse a claims array strictly; anything unexpected is ``AUTH_INVALID``."""
    try:
        items = msgpack.unpackb(
            payload,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=MAX_ID_BYTES,
            max_bin_len=0,
            max_array_len=MAX_SCOPES,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:
        # msgpack raises ValueError subclasses, TypeError and its own UnpackException
        # for hostile input; none of their texts may reach a log with token bytes in it.
        raise TokenError(ErrorCode.AUTH_INVALID, "token claims are not valid msgpack") from None
    if not isinstance(items, tuple) or len(items) not in (5, 6):
        raise TokenError(ErrorCode.AUTH_INVALID, "token claims must be an array of 5 or 6 items")
    device_id, user_id, app_id, issued_at, expires_at = items[:5]
    scopes = items[5] if len(items) == 6 else ()
    if len(items) == 6 and (not isinstance(scopes, tuple) or not scopes):
        raise TokenError(ErrorCode.AUTH_INVALID, "token scopes must be a non-empty array")
    try:
        return DeviceClaims(
            device_id=device_id,
            user_id=user_id,
            app_id=app_id,
            issued_at=issued_at,
            expires_at=expires_at,
            scopes=scopes,
        )
    except ValueError as exc:
        raise TokenError(ErrorCode.AUTH_INVALID, f"token claims invalid: {exc}") from None


class TokenSigner:
    """Issues tokens with one private key, announced under ``key_id``."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: int) -> None:
        check_key_id(key_id)
        self._private_key = private_key
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"TokenSigner(key_id={self.key_id})"

    def issue(self, claims: DeviceClaims) -> bytes:
        """Sign ``claims``; ``ValueError`` if the token would exceed 1024 bytes."""
        signed = bytes((TOKEN_VERSION, self.key_id)) + encode_claims(claims)
        token = signed + self._private_key.sign(signed)
        if len(token) > MAX_TOKEN_BYTES:
            raise ValueError(f"token would be {len(token)} bytes, more than {MAX_TOKEN_BYTES}")
        return token


def token_device_id(token: bytes) -> str | None:
    """The device id a Channel token's claims name, unverified; ``None`` if ``token`` is
    not one. A client uses it to leave HELLO's ``device_id`` to the token (spec 7.2)."""
    if len(token) <= HEADER_BYTES + SIGNATURE_BYTES or token[0] != TOKEN_VERSION:
        return None
    try:
        return decode_claims(token[HEADER_BYTES:-SIGNATURE_BYTES]).device_id
    except TokenError:
        return None


def token_key_id(token: bytes) -> int:
    """The key id a token names, without verifying it (for logs and tools)."""
    if not isinstance(token, bytes) or len(token) < HEADER_BYTES:
        raise TokenError(ErrorCode.AUTH_INVALID, "token is too short to name a key")
    return token[1]


def _load_native_verify() -> Callable[[bytes, bytes, bytes], bool] | None:
    try:
        from channel._engine import ed25519_verify
    except ImportError:  # the native module is not built: OpenSSL's verification
        return None
    return ed25519_verify


_native_verify = _load_native_verify()


def _signature_ok(key: Ed25519PublicKey, raw_key: bytes, signature: bytes, signed: bytes) -> bool:
    """Ed25519 verification: ring's (``channel._engine``, ~50 µs) where the native
    module is built, else OpenSSL's through ``cryptography`` (~120 µs here)."""
    if _native_verify is not None:
        return _native_verify(raw_key, signature, signed)
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        return False
    return True


class TokenVerifier:
    """Checks tokens against the public keys of every key id still accepted.

    ``leeway_s`` absorbs clock differences between the issuer and gateways:
    a token is accepted until ``expires_at + leeway_s`` and refused if issued
    more than ``leeway_s`` in the future.
    """

    def __init__(
        self,
        public_keys: Mapping[int, Ed25519PublicKey],
        leeway_s: int = DEFAULT_LEEWAY_S,
        *,
        cache_entries: int = 0,
    ) -> None:
        for key_id in public_keys:
            check_key_id(key_id)
        if leeway_s < 0:
            raise ValueError(f"leeway_s must be >= 0, got {leeway_s}")
        if cache_entries < 0:
            raise ValueError(f"cache_entries must be >= 0, got {cache_entries}")
        self._public_keys = dict(public_keys)
        self._raw_keys = {
            key_id: key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            for key_id, key in public_keys.items()
        }
        self.leeway_s = leeway_s
        #: Tokens whose signature verified, by their exact bytes, most recently used
        #: last (devices reconnect with the same token many times in its life): at
        #: most ``cache_entries``, dropped once expired. Only the signature check is
        #: skipped on a hit; device, app and times are checked on every use.
        self.cache_entries = cache_entries
        self._cache: dict[bytes, DeviceClaims] = {}

    @property
    def key_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._public_keys))

    def __repr__(self) -> str:
        return f"TokenVerifier(key_ids={self.key_ids}, leeway_s={self.leeway_s})"

    def verify(
        self, token: bytes, *, device_id: str | None, app_id: str | None, now: float
    ) -> DeviceClaims:
        """Return the claims of a valid token for this device (and app, unless None).

        ``device_id=None`` accepts a token of any device: the caller takes the device
        id from the claims (an MQTT box that sends only its token).

        Raises ``TokenError``: ``AUTH_INVALID`` (malformed, unknown key id, bad
        signature), ``FORBIDDEN`` (issued for another device or app),
        ``AUTH_EXPIRED`` (refresh the token and reconnect). Costs one Ed25519
        verification (~50-100 µs).
        """
        claims = self._cache.pop(token, None) if self.cache_entries else None
        if claims is None:
            claims = self._authenticate(token)
        if device_id is not None and claims.device_id != device_id:
            raise TokenError(ErrorCode.FORBIDDEN, "token was issued for another device")
        if app_id is not None and claims.app_id != app_id:
            raise TokenError(ErrorCode.FORBIDDEN, "token was issued for another app")
        if claims.issued_at > now + self.leeway_s:
            raise TokenError(
                ErrorCode.AUTH_INVALID,
                f"token issued {claims.issued_at - now:.0f} s in the future "
                f"(more than the {self.leeway_s} s leeway); check the issuer's clock",
            )
        if now >= claims.expires_at + self.leeway_s:
            raise TokenError(
                ErrorCode.AUTH_EXPIRED,
                f"token expired {now - claims.expires_at:.0f} s ago; refresh it and reconnect",
            )
        self._remember(token, claims)
        return claims

    def _remember(self, token: bytes, claims: DeviceClaims) -> None:
        if not self.cache_entries:
            return
        cache = self._cache
        cache[token] = claims  # popped on a hit: re-inserted as the most recent
        if len(cache) > self.cache_entries:
            del cache[next(iter(cache))]

    def _authenticate(self, token: bytes) -> DeviceClaims:
        if not isinstance(token, bytes):
            raise TokenError(ErrorCode.AUTH_INVALID, "token must be bytes")
        size = len(token)
        if size > MAX_TOKEN_BYTES:
            raise TokenError(
                ErrorCode.AUTH_INVALID,
                f"token is {size} bytes, more than the {MAX_TOKEN_BYTES}-byte limit",
            )
        if size < _MIN_TOKEN_BYTES:
            raise TokenError(ErrorCode.AUTH_INVALID, f"token is {size} bytes, too short")
        if token.startswith(_TEXT_PREFIX) and _BASE64URL.fullmatch(token.decode("latin-1")):
            # The text form (what `channel token issue` prints): spec 7.2 wants its bytes.
            raise TokenError(
                ErrorCode.AUTH_INVALID,
                "the token is its base64url text; send the decoded bytes in HELLO "
                "(MMTP spec section 7.2)",
            )
        if token[0] != TOKEN_VERSION:
            raise TokenError(
                ErrorCode.AUTH_INVALID,
                f"token version {token[0]} is not supported (expected {TOKEN_VERSION})",
            )
        public_key = self._public_keys.get(token[1])
        if public_key is None:
            raise TokenError(
                ErrorCode.AUTH_INVALID,
                f"token names key id {token[1]}, which this gateway does not accept "
                f"(accepted: {', '.join(map(str, self.key_ids)) or 'none'})",
            )
        signed = token[:-SIGNATURE_BYTES]
        raw_key = self._raw_keys[token[1]]
        if not _signature_ok(public_key, raw_key, token[-SIGNATURE_BYTES:], signed):
            raise TokenError(
                ErrorCode.AUTH_INVALID,
                f"token signature does not verify with key id {token[1]} "
                "(forged, corrupted, or signed by a different key under that id)",
            )
        return decode_claims(signed[HEADER_BYTES:])


# --- text form --------------------------------------------------------------------


def encode_token_text(token: bytes) -> str:
    """Base64url without padding, for the CLI, HTTP APIs and config files."""
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def decode_token_text(text: str) -> bytes:
    """Inverse of ``encode_token_text``; surrounding whitespace is ignored.

    ``TokenError(AUTH_INVALID)`` for text that is not base64url or too long.
    """
    text = text.strip()
    if len(text) > _MAX_TEXT_CHARS:
        raise TokenError(
            ErrorCode.AUTH_INVALID,
            f"token text is {len(text)} characters, more than {_MAX_TEXT_CHARS}",
        )
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(ErrorCode.AUTH_INVALID, "token text is not base64url (A-Z a-z 0-9 - _)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(ErrorCode.AUTH_INVALID, "token text is not base64url") from None


# --- key files --------------------------------------------------------------------


def key_id_from_path(path: Path) -> int | None:
    """The id in a ``token-<id>.key`` / ``token-<id>.pub`` file name, else None."""
    match = _KEY_FILE_NAME.fullmatch(path.name)
    if match is None:
        return None
    key_id = int(match.group(1))
    return key_id if key_id <= MAX_KEY_ID else None


def key_file_paths(directory: Path, key_id: int) -> tuple[Path, Path]:
    """``(directory/token-<id>.key, directory/token-<id>.pub)``."""
    check_key_id(key_id)
    stem = f"token-{key_id}"
    return directory / f"{stem}{PRIVATE_KEY_SUFFIX}", directory / f"{stem}{PUBLIC_KEY_SUFFIX}"


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS8 PEM Ed25519 private key; ``ValueError`` naming the path."""
    data = read_key_file(path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{path} is not an unencrypted PEM private key (PKCS8, as written by "
            "`channel token keygen`)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM SubjectPublicKeyInfo Ed25519 public key; ``ValueError`` naming the path."""
    data = read_key_file(path)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{path} is not a PEM public key (SubjectPublicKeyInfo, as written by "
            "`channel token keygen`)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_verification_keys(directory: Path) -> dict[int, Ed25519PublicKey]:
    """Every ``token-<id>.pub`` in ``directory``, by key id (other files ignored)."""
    keys: dict[int, Ed25519PublicKey] = {}
    for path in sorted(directory.glob(f"token-*{PUBLIC_KEY_SUFFIX}")):
        key_id = key_id_from_path(path)
        if key_id is not None:
            keys[key_id] = load_public_key(path)
    return keys


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def generate_keypair(directory: Path, key_id: int) -> tuple[Path, Path]:
    """Write a new ``token-<id>.key`` (0600) and ``token-<id>.pub``; return their paths.

    ``FileExistsError`` if either exists: replacing a key in use would make
    every token signed with it fail.
    """
    private_path, public_path = key_file_paths(directory, key_id)
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another key id")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    write_private_file(private_path, private_key_pem(key), exclusive=True)
    write_public_file(public_path, public_key_pem(key.public_key()), exclusive=True)
    return private_path, public_path
