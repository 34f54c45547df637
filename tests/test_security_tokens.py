"""Device tokens: format, size, every refusal and its code, hostile bytes, key files."""

from __future__ import annotations

import stat
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel.security.tokens import (
    MAX_TOKEN_BYTES,
    DeviceClaims,
    TokenError,
    TokenSigner,
    TokenVerifier,
    decode_claims,
    decode_token_text,
    encode_token_text,
    generate_keypair,
    key_id_from_path,
    load_private_key,
    load_public_key,
    load_verification_keys,
    token_key_id,
)
from channel.wire.errors import ErrorCode

NOW = 1_760_000_000
DEVICE = "3f2b8c1e-9a4d-4e6f-b1c2-7d8e9f0a1b2c"  # a 36-character UUID, as most apps use
APP = "wallet"
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def claims(**changes: object) -> DeviceClaims:
    fields: dict[str, object] = {
        "device_id": DEVICE,
        "user_id": "2088102122524333",
        "app_id": APP,
        "issued_at": NOW,
        "expires_at": NOW + 7 * 86400,
    }
    fields.update(changes)
    return DeviceClaims(**fields)  # type: ignore[arg-type]


SIGNER = TokenSigner(KEY, key_id=1)
VERIFIER = TokenVerifier({1: KEY.public_key()})
TOKEN = SIGNER.issue(claims())


def refusal(
    token: bytes,
    *,
    device_id: str = DEVICE,
    app_id: str | None = APP,
    now: float = NOW,
    verifier: TokenVerifier = VERIFIER,
) -> TokenError:
    with pytest.raises(TokenError) as info:
        verifier.verify(token, device_id=device_id, app_id=app_id, now=now)
    return info.value


def test_round_trip() -> None:
    assert VERIFIER.verify(TOKEN, device_id=DEVICE, app_id=APP, now=NOW + 10) == claims()


def test_layout_version_key_id_claims_signature() -> None:
    assert TOKEN[0] == 1
    assert TOKEN[1] == 1 == token_key_id(TOKEN)
    assert decode_claims(TOKEN[2:-64]) == claims()
    KEY.public_key().verify(TOKEN[-64:], TOKEN[:-64])
    # No scopes: a 5-item array; scopes add a sixth.
    assert len(msgpack.unpackb(TOKEN[2:-64])) == 5
    scoped = SIGNER.issue(claims(scopes=("rpc", "push")))
    assert msgpack.unpackb(scoped[2:-64])[5] == ["rpc", "push"]


def test_typical_token_fits_140_bytes() -> None:
    # 36-char device id, 16-digit user id, 6-char app id, 10-digit timestamps.
    assert len(TOKEN) <= 140
    assert len(SIGNER.issue(claims(scopes=("rpc", "push")))) <= 150


def test_scopes_round_trip() -> None:
    token = SIGNER.issue(claims(scopes=("rpc", "push", "pay:read")))
    verified = VERIFIER.verify(token, device_id=DEVICE, app_id=APP, now=NOW)
    assert verified.scopes == ("rpc", "push", "pay:read")


def test_the_text_form_in_place_of_the_bytes_is_refused_saying_so() -> None:
    """Spec 7.2: HELLO carries the token's bytes; an implementer who sent the text that
    `channel token issue` prints got "token version 65 is not supported"."""
    text = encode_token_text(TOKEN).encode()
    error = refusal(text)
    assert error.code is ErrorCode.AUTH_INVALID
    assert "base64url text" in error.message and "decoded bytes" in error.message


def test_forged_signature_is_invalid() -> None:
    forged = TOKEN[:-1] + bytes([TOKEN[-1] ^ 1])
    assert refusal(forged).code is ErrorCode.AUTH_INVALID


def test_changed_claims_are_invalid() -> None:
    tampered = bytearray(TOKEN)
    tampered[10] ^= 0x01
    assert refusal(bytes(tampered)).code is ErrorCode.AUTH_INVALID


def test_other_key_under_same_id_is_invalid() -> None:
    token = TokenSigner(OTHER_KEY, key_id=1).issue(claims())
    error = refusal(token)
    assert error.code is ErrorCode.AUTH_INVALID
    assert "signature" in error.message


def test_unknown_key_id_is_invalid() -> None:
    token = TokenSigner(KEY, key_id=7).issue(claims())
    error = refusal(token)
    assert error.code is ErrorCode.AUTH_INVALID
    assert "key id 7" in error.message


def test_rewritten_key_id_is_invalid() -> None:
    # The key id is signed: pointing a token at another accepted key fails.
    verifier = TokenVerifier({1: KEY.public_key(), 2: KEY.public_key()})
    moved = TOKEN[:1] + b"\x02" + TOKEN[2:]
    assert refusal(moved, verifier=verifier).code is ErrorCode.AUTH_INVALID


def test_several_keys_accepted_during_rotation() -> None:
    verifier = TokenVerifier({1: KEY.public_key(), 2: OTHER_KEY.public_key()})
    new = TokenSigner(OTHER_KEY, key_id=2).issue(claims())
    for token in (TOKEN, new):
        assert verifier.verify(token, device_id=DEVICE, app_id=APP, now=NOW).device_id == DEVICE


def test_expiry_honours_leeway() -> None:
    expires_at = claims().expires_at
    assert VERIFIER.verify(TOKEN, device_id=DEVICE, app_id=APP, now=expires_at + 29.9)
    error = refusal(TOKEN, now=expires_at + 30)
    assert error.code is ErrorCode.AUTH_EXPIRED
    assert "refresh" in error.message
    strict = TokenVerifier({1: KEY.public_key()}, leeway_s=0)
    assert refusal(TOKEN, now=expires_at, verifier=strict).code is ErrorCode.AUTH_EXPIRED


def test_token_from_the_future_is_invalid() -> None:
    assert VERIFIER.verify(TOKEN, device_id=DEVICE, app_id=APP, now=NOW - 30)
    assert refusal(TOKEN, now=NOW - 31).code is ErrorCode.AUTH_INVALID


def test_wrong_device_is_forbidden() -> None:
    assert refusal(TOKEN, device_id="another-device").code is ErrorCode.FORBIDDEN


def test_wrong_app_is_forbidden_unless_app_unchecked() -> None:
    assert refusal(TOKEN, app_id="other-app").code is ErrorCode.FORBIDDEN
    assert refusal(TOKEN, app_id="").code is ErrorCode.FORBIDDEN
    assert VERIFIER.verify(TOKEN, device_id=DEVICE, app_id=None, now=NOW)


def test_device_checked_before_expiry() -> None:
    # A stolen expired token is "not yours", not "refresh me".
    error = refusal(TOKEN, device_id="thief", now=NOW + 30 * 86400)
    assert error.code is ErrorCode.FORBIDDEN


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        (b"", "too short"),
        (TOKEN[:60], "too short"),
        (b"\x02" + TOKEN[1:], "version 2"),
        (TOKEN + b"\x00" * (MAX_TOKEN_BYTES + 1 - len(TOKEN)), "1024-byte limit"),
    ],
)
def test_malformed_tokens_are_invalid(token: bytes, fragment: str) -> None:
    error = refusal(token)
    assert error.code is ErrorCode.AUTH_INVALID
    assert fragment in error.message


def test_non_bytes_token_is_invalid() -> None:
    assert refusal(bytearray(TOKEN)).code is ErrorCode.AUTH_INVALID  # type: ignore[arg-type]


def test_error_messages_never_contain_the_token() -> None:
    texts = [encode_token_text(TOKEN), TOKEN.hex(), repr(TOKEN)[2:40]]
    for error in (
        refusal(TOKEN[:-1] + bytes([TOKEN[-1] ^ 1])),  # a changed signature byte
        refusal(TOKEN, device_id="x"),
        refusal(TOKEN, now=NOW + 10**7),
    ):
        assert not any(text in str(error) for text in texts)


@pytest.mark.parametrize(
    "changes",
    [
        {"device_id": ""},
        {"user_id": ""},
        {"device_id": "d" * 129},
        {"device_id": "\ud800"},
        {"expires_at": NOW - 1},
        {"expires_at": 2**32},
        {"issued_at": -1},
        {"issued_at": float(NOW)},
        {"scopes": ["rpc"]},
        {"scopes": ("has space",)},
        {"scopes": ("",)},
        {"scopes": ("s" * 65,)},
        {"scopes": tuple(f"s{i}" for i in range(17))},
    ],
)
def test_invalid_claims_are_refused_at_construction(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        claims(**changes)


def test_empty_app_id_is_allowed() -> None:
    token = SIGNER.issue(claims(app_id=""))
    assert VERIFIER.verify(token, device_id=DEVICE, app_id="", now=NOW).app_id == ""


def test_oversized_token_is_refused_at_issue() -> None:
    big = claims(
        device_id="d" * 128,
        user_id="u" * 128,
        app_id="a" * 128,
        scopes=tuple(f"{i:02d}" + "s" * 62 for i in range(16)),
    )
    with pytest.raises(ValueError, match="more than 1024"):
        SIGNER.issue(big)


def test_key_id_range() -> None:
    with pytest.raises(ValueError):
        TokenSigner(KEY, key_id=256)
    with pytest.raises(ValueError):
        TokenVerifier({-1: KEY.public_key()})


def test_repr_holds_no_key_material() -> None:
    assert repr(SIGNER) == "TokenSigner(key_id=1)"
    assert "key_ids=(1,)" in repr(VERIFIER)


# --- hostile bytes: only TokenError may escape ------------------------------------


def _only_token_error(token: bytes) -> None:
    try:
        VERIFIER.verify(token, device_id=DEVICE, app_id=APP, now=NOW)
    except TokenError as exc:
        assert exc.code in (ErrorCode.AUTH_INVALID, ErrorCode.FORBIDDEN, ErrorCode.AUTH_EXPIRED)


@FUZZ
@given(st.binary(max_size=1100))
def test_arbitrary_bytes_raise_only_token_error(data: bytes) -> None:
    _only_token_error(data)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_behind_a_valid_header_raise_only_token_error(data: bytes) -> None:
    _only_token_error(b"\x01\x01" + data)


@FUZZ
@given(st.data())
def test_mutated_tokens_never_verify(data: st.DataObject) -> None:
    token = bytearray(TOKEN)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        index = data.draw(st.integers(0, len(token) - 1))
        token[index] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del token[data.draw(st.integers(0, len(token) - 1)) :]
    elif kind == "extend":
        token += data.draw(st.binary(min_size=1, max_size=20))
    else:
        start = data.draw(st.integers(0, len(token) - 1))
        token[start : start + 4] = data.draw(st.binary(max_size=8))
    if bytes(token) == TOKEN:
        return
    with pytest.raises(TokenError):
        VERIFIER.verify(bytes(token), device_id=DEVICE, app_id=APP, now=NOW)


@FUZZ
@given(st.binary(max_size=400))
def test_decode_claims_raises_only_token_error(payload: bytes) -> None:
    try:
        decode_claims(payload)
    except TokenError as exc:
        assert exc.code is ErrorCode.AUTH_INVALID


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.lists(_msgpack_values, min_size=4, max_size=7))
def test_signed_but_strange_claims_raise_only_token_error(items: list[object]) -> None:
    # Even a payload signed by a trusted key is parsed strictly.
    signed = b"\x01\x01" + msgpack.packb(items, use_bin_type=True)
    _only_token_error(signed + KEY.sign(signed))


# --- text form --------------------------------------------------------------------


def test_text_form_round_trip_without_padding() -> None:
    text = encode_token_text(TOKEN)
    assert "=" not in text and "+" not in text and "/" not in text
    assert decode_token_text(f"  {text}\n") == TOKEN


@given(st.binary(max_size=200))
def test_text_form_round_trips_any_bytes(data: bytes) -> None:
    assert decode_token_text(encode_token_text(data)) == data


@pytest.mark.parametrize("text", ["not base64!", "a", "abc=", "A" * 1400, "ab+/"])
def test_bad_text_is_invalid(text: str) -> None:
    with pytest.raises(TokenError) as info:
        decode_token_text(text)
    assert info.value.code is ErrorCode.AUTH_INVALID


# --- key files --------------------------------------------------------------------


def test_generate_keypair_writes_pem_files_with_modes(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "keys", 3)
    assert (private_path.name, public_path.name) == ("token-3.key", "token-3.pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    token = TokenSigner(load_private_key(private_path), 3).issue(claims())
    verifier = TokenVerifier({3: load_public_key(public_path)})
    assert verifier.verify(token, device_id=DEVICE, app_id=APP, now=NOW) == claims()
    assert [p.name for p in private_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_generate_keypair_never_overwrites(tmp_path: Path) -> None:
    private_path, _ = generate_keypair(tmp_path, 1)
    before = private_path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path, 1)
    assert private_path.read_bytes() == before


def test_load_verification_keys_reads_token_pub_files(tmp_path: Path) -> None:
    generate_keypair(tmp_path, 1)
    generate_keypair(tmp_path, 2)
    (tmp_path / "notes.pub").write_text("ignored")
    (tmp_path / "token-999.pub").write_text("ignored: id out of range")
    assert sorted(load_verification_keys(tmp_path)) == [1, 2]


@pytest.mark.parametrize(
    ("name", "key_id"),
    [("token-1.pub", 1), ("token-255.key", 255), ("token-256.pub", None), ("key.pem", None)],
)
def test_key_id_from_path(name: str, key_id: int | None) -> None:
    assert key_id_from_path(Path("/x") / name) == key_id


def test_key_loading_errors_name_the_file_not_the_key(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path, 1)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    ec_path = tmp_path / "ec.pem"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_path.write_bytes(ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    cases = [
        (load_private_key, public_path, "not an unencrypted PEM private key"),
        (load_private_key, garbage, "not an unencrypted PEM private key"),
        (load_private_key, ec_path, "not an Ed25519 private key"),
        (load_private_key, tmp_path / "missing.key", "cannot read"),
        (load_public_key, private_path, "not a PEM public key"),
    ]
    secret = private_path.read_text().splitlines()[1]
    for loader, path, fragment in cases:
        with pytest.raises(ValueError) as info:
            loader(path)
        assert fragment in str(info.value)
        assert str(path) in str(info.value)
        assert secret not in str(info.value)
