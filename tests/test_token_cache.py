"""The token verifier's cache of verified tokens, and its Ed25519 check (native or OpenSSL)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel.config import ConfigError, load_config
from channel.security import tokens
from channel.security.tokens import DeviceClaims, TokenError, TokenSigner, TokenVerifier
from channel.wire.errors import ErrorCode

NOW = 1_760_000_000
APP = "wallet"
KEY = Ed25519PrivateKey.generate()
SIGNER = TokenSigner(KEY, key_id=1)
RAW_KEY = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def token_for(device_id: str, expires_at: int = NOW + 86_400) -> bytes:
    return SIGNER.issue(
        DeviceClaims(
            device_id=device_id,
            user_id="u-1",
            app_id=APP,
            issued_at=NOW,
            expires_at=expires_at,
        )
    )


class CountingVerifier(TokenVerifier):
    """Counts the signature checks (``_authenticate``) the cache did not save."""

    checks = 0

    def _authenticate(self, token: bytes) -> DeviceClaims:
        self.checks += 1
        return super()._authenticate(token)


def verifier(entries: int) -> CountingVerifier:
    return CountingVerifier({1: KEY.public_key()}, cache_entries=entries)


def test_a_device_reconnecting_with_its_token_is_checked_once() -> None:
    v = verifier(10)
    token = token_for("d-1")
    for _ in range(5):
        assert v.verify(token, device_id="d-1", app_id=APP, now=NOW).device_id == "d-1"
    assert v.checks == 1
    off = verifier(0)
    for _ in range(3):
        off.verify(token, device_id="d-1", app_id=APP, now=NOW)
    assert off.checks == 3


def test_a_cached_token_still_checks_device_app_and_times() -> None:
    v = verifier(10)
    token = token_for("d-1", expires_at=NOW + 100)
    v.verify(token, device_id="d-1", app_id=APP, now=NOW)
    cases: list[tuple[dict[str, object], ErrorCode]] = [
        ({"device_id": "thief"}, ErrorCode.FORBIDDEN),
        ({"app_id": "other"}, ErrorCode.FORBIDDEN),
        ({"now": NOW - 31}, ErrorCode.AUTH_INVALID),  # issued in the future
        ({"now": NOW + 100 + 30}, ErrorCode.AUTH_EXPIRED),
    ]
    for changes, code in cases:
        args: dict[str, object] = {"device_id": "d-1", "app_id": APP, "now": NOW, **changes}
        with pytest.raises(TokenError) as info:
            v.verify(token, **args)  # type: ignore[arg-type]
        assert info.value.code is code
        v.verify(token, device_id="d-1", app_id=APP, now=NOW)  # still valid for its owner


def test_an_expired_token_leaves_the_cache_at_its_next_use() -> None:
    v = verifier(10)
    token = token_for("d-1", expires_at=NOW + 100)
    v.verify(token, device_id="d-1", app_id=APP, now=NOW)
    with pytest.raises(TokenError):
        v.verify(token, device_id="d-1", app_id=APP, now=NOW + 200)
    assert token not in v._cache


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    v = verifier(2)
    a, b, c = (token_for(d) for d in ("a", "b", "c"))
    v.verify(a, device_id="a", app_id=APP, now=NOW)
    v.verify(b, device_id="b", app_id=APP, now=NOW)
    v.verify(a, device_id="a", app_id=APP, now=NOW)  # a is now the most recent
    v.verify(c, device_id="c", app_id=APP, now=NOW)  # b goes
    assert list(v._cache) == [a, c]
    checks = v.checks
    v.verify(a, device_id="a", app_id=APP, now=NOW)
    assert v.checks == checks
    v.verify(b, device_id="b", app_id=APP, now=NOW)
    assert v.checks == checks + 1


def test_a_refused_token_is_never_cached() -> None:
    v = verifier(10)
    token = token_for("d-1")
    forged = token[:-1] + bytes([token[-1] ^ 1])
    for _ in range(2):
        with pytest.raises(TokenError) as info:
            v.verify(forged, device_id="d-1", app_id=APP, now=NOW)
        assert info.value.code is ErrorCode.AUTH_INVALID
    assert v.checks == 2
    assert not v._cache


def test_cache_size_is_configured_and_checked() -> None:
    assert load_config(None, environ={}).auth.token_cache_entries == 10_000
    config = load_config(None, environ={"CHANNEL_AUTH__TOKEN_CACHE_ENTRIES": "0"})
    assert config.auth.token_cache_entries == 0
    with pytest.raises(ConfigError, match=r"auth\.token_cache_entries"):
        load_config(None, environ={}, overrides={"auth": {"token_cache_entries": -1}})
    with pytest.raises(ValueError, match="cache_entries"):
        TokenVerifier({1: KEY.public_key()}, cache_entries=-1)


def _openssl_ok(signature: bytes, message: bytes) -> bool:
    try:
        KEY.public_key().verify(signature, message)
    except InvalidSignature:
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.integers(0, 63), st.integers(0, 255), st.booleans())
def test_native_verification_agrees_with_openssl(
    message: bytes, at: int, flip: int, tamper_message: bool
) -> None:
    native = tokens._native_verify
    if native is None:
        pytest.skip("channel._engine is not built")
    signature = bytearray(KEY.sign(message))
    if tamper_message and message:
        message = bytes([message[0] ^ (flip or 1)]) + message[1:]
    else:
        signature[at] ^= flip
    assert native(RAW_KEY, bytes(signature), message) == _openssl_ok(bytes(signature), message)
    assert not native(RAW_KEY[:31], bytes(signature), message)
    assert not native(RAW_KEY, bytes(signature[:63]), message)
