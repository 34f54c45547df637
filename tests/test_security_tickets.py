"""Resume tickets: size, binding to device and app, expiry, rotation, tampering."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel.security.tickets import (
    TICKET_OVERHEAD_BYTES,
    SessionTicket,
    TicketError,
    TicketKeyRing,
    TicketSealer,
    decode_ticket_plaintext,
    derive_ticket_key,
    encode_ticket_plaintext,
)
from channel.wire.errors import ErrorCode

NOW = 1_760_000_000
DEVICE = "3f2b8c1e-9a4d-4e6f-b1c2-7d8e9f0a1b2c"
APP = "wallet"
MASTER = bytes(range(32))
TOKEN_EXPIRES_AT = NOW + 7 * 86400
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ticket(**changes: object) -> SessionTicket:
    fields: dict[str, object] = {
        "user_id": "2088102122524333",
        "scopes": ("rpc", "push"),
        "session_id": b"\x01\x02\x03\x04\x05\x06\x07\x08",
        "now": NOW,
        "ttl_s": 86400,
        "auth_expires_at": TOKEN_EXPIRES_AT,
    }
    fields.update(changes)
    return SessionTicket.issue(**fields)  # type: ignore[arg-type]


def sealer(key_id: int = 1) -> TicketSealer:
    return TicketSealer(TicketKeyRing.from_master_secret(MASTER, key_id))


SEALER = sealer()
TICKET = ticket()
SEALED = SEALER.seal(TICKET, device_id=DEVICE, app_id=APP)


def refusal(
    data: bytes,
    *,
    device_id: str = DEVICE,
    app_id: str = APP,
    now: float = NOW,
    with_sealer: TicketSealer = SEALER,
) -> TicketError:
    with pytest.raises(TicketError) as info:
        with_sealer.open(data, device_id=device_id, app_id=app_id, now=now)
    assert info.value.code is ErrorCode.TICKET_INVALID
    return info.value


def test_round_trip() -> None:
    assert SEALER.open(SEALED, device_id=DEVICE, app_id=APP, now=NOW + 60) == TICKET


def test_layout_key_id_nonce_ciphertext_tag() -> None:
    fixed = TicketSealer(SEALER.keys, random_bytes=lambda n: b"\xaa" * n)
    data = fixed.seal(TICKET, device_id=DEVICE, app_id=APP)
    assert data[0] == 1
    assert data[1:13] == b"\xaa" * 12
    assert len(data) == TICKET_OVERHEAD_BYTES + len(encode_ticket_plaintext(TICKET))


def test_realistic_ticket_sizes() -> None:
    # 16-digit user id, two scopes, 1-day ticket under a 7-day token: 69 bytes.
    assert len(SEALED) == 69
    # 20-character user id and four scopes (15 characters): the 80-byte budget.
    busy = ticket(user_id="u" * 20, scopes=("rpc", "pay", "iot", "msg"))
    assert len(SEALER.seal(busy, device_id=DEVICE, app_id=APP)) == 80
    # No scopes and a ticket capped by its token: the fixed part is 29 + 15.
    bare = ticket(user_id="u", scopes=(), ttl_s=10 * 86400)
    assert len(SEALER.seal(bare, device_id=DEVICE, app_id=APP)) == 29 + 15


def test_ticket_never_outlives_its_token() -> None:
    assert TICKET.expires_at == NOW + 86400
    capped = ticket(ttl_s=30 * 86400)
    assert capped.expires_at == capped.auth_expires_at == TOKEN_EXPIRES_AT
    with pytest.raises(ValueError, match="outlive"):
        SessionTicket(
            user_id="u", scopes=(), session_id=b"\x00" * 8, expires_at=NOW + 2, auth_expires_at=NOW
        )


def test_auth_expiry_survives_sealing() -> None:
    opened = SEALER.open(SEALED, device_id=DEVICE, app_id=APP, now=NOW)
    assert opened.auth_expires_at == TOKEN_EXPIRES_AT
    # A resumed session's next ticket is still capped by the original token.
    later = NOW + 6 * 86400 + 3600
    renewed = ticket(now=later, auth_expires_at=opened.auth_expires_at)
    assert renewed.expires_at == TOKEN_EXPIRES_AT


@pytest.mark.parametrize(
    ("device_id", "app_id"), [("another-device", APP), (DEVICE, "other-app"), (DEVICE, "")]
)
def test_ticket_is_bound_to_device_and_app(device_id: str, app_id: str) -> None:
    error = refusal(SEALED, device_id=device_id, app_id=app_id)
    assert "authentication" in error.message


def test_device_and_app_boundary_is_unambiguous() -> None:
    data = SEALER.seal(TICKET, device_id="ab", app_id="c")
    refusal(data, device_id="a", app_id="bc")


def test_expired_ticket_is_invalid() -> None:
    assert SEALER.open(SEALED, device_id=DEVICE, app_id=APP, now=TICKET.expires_at - 0.5)
    error = refusal(SEALED, now=TICKET.expires_at)
    assert "expired" in error.message


def test_every_tampered_byte_is_invalid() -> None:
    for index in range(len(SEALED)):
        tampered = bytearray(SEALED)
        tampered[index] ^= 0x40
        refusal(bytes(tampered))


@pytest.mark.parametrize("data", [b"", b"\x01", SEALED[:43], SEALED + b"\x00" * 1000])
def test_bad_lengths_are_invalid(data: bytes) -> None:
    assert "bytes, expected" in refusal(data).message


def test_unknown_key_id_is_invalid() -> None:
    data = bytes([9]) + SEALED[1:]
    assert "key id 9" in refusal(data).message


def test_rotated_key_still_opens_old_tickets_until_retired() -> None:
    ring = TicketKeyRing.from_master_secret(MASTER, 1)
    node = TicketSealer(ring)
    old = node.seal(TICKET, device_id=DEVICE, app_id=APP)
    ring.rotate(2, derive_ticket_key(MASTER, 2))
    new = node.seal(TICKET, device_id=DEVICE, app_id=APP)
    assert (old[0], new[0]) == (1, 2)
    for data in (old, new):
        assert node.open(data, device_id=DEVICE, app_id=APP, now=NOW) == TICKET
    ring.retire(1)
    assert ring.key_ids == (2,)
    refusal(old, with_sealer=node)
    assert node.open(new, device_id=DEVICE, app_id=APP, now=NOW) == TICKET
    with pytest.raises(ValueError, match="current key"):
        ring.retire(2)


def test_fleet_rotation_in_two_steps() -> None:
    # Same master secret in every node's config: same keys, no key exchange.
    node_a = sealer(1)
    node_b = sealer(1)
    assert (
        node_b.open(
            node_a.seal(TICKET, device_id=DEVICE, app_id=APP), device_id=DEVICE, app_id=APP, now=NOW
        )
        == TICKET
    )
    # Step 1 everywhere: accept key 2. Step 2, rolling: seal with key 2.
    node_a.keys.accept(2, derive_ticket_key(MASTER, 2))
    node_b.keys.accept(2, derive_ticket_key(MASTER, 2))
    node_b.keys.rotate(2, derive_ticket_key(MASTER, 2))
    from_b = node_b.seal(TICKET, device_id=DEVICE, app_id=APP)
    assert from_b[0] == 2
    assert node_a.open(from_b, device_id=DEVICE, app_id=APP, now=NOW) == TICKET
    configured = TicketKeyRing.from_master_secret(MASTER, 2, accepted_key_ids=[1])
    assert configured.key_ids == (1, 2) and configured.current_key_id == 2


def test_other_fleet_cannot_open() -> None:
    stranger = TicketSealer(TicketKeyRing.from_master_secret(b"\xff" * 32, 1))
    refusal(SEALED, with_sealer=stranger)


def test_generated_ring_is_random() -> None:
    one = TicketSealer(TicketKeyRing.generate())
    data = one.seal(TICKET, device_id=DEVICE, app_id=APP)
    assert one.open(data, device_id=DEVICE, app_id=APP, now=NOW) == TICKET
    refusal(data, with_sealer=TicketSealer(TicketKeyRing.generate()))


def test_key_ring_guards() -> None:
    ring = TicketKeyRing.from_master_secret(MASTER, 1)
    with pytest.raises(ValueError, match="already in use"):
        ring.accept(1, os.urandom(32))
    with pytest.raises(ValueError, match="32 bytes"):
        ring.accept(3, b"short")
    with pytest.raises(ValueError, match="at least 32"):
        derive_ticket_key(b"too short", 1)
    with pytest.raises(ValueError):
        derive_ticket_key(MASTER, 256)
    assert derive_ticket_key(MASTER, 1) != derive_ticket_key(MASTER, 2)
    assert repr(ring) == "TicketKeyRing(current_key_id=1, key_ids=(1,))"
    assert MASTER.hex() not in repr(SEALER)


@pytest.mark.parametrize(
    "changes",
    [
        {"session_id": b"short"},
        {"user_id": ""},
        {"scopes": ("two words",)},
        {"ttl_s": 0},
    ],
)
def test_invalid_tickets_are_refused_at_construction(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ticket(**changes)


def test_messages_never_contain_the_ticket() -> None:
    for error in (refusal(SEALED, device_id="x"), refusal(SEALED, now=NOW + 10**7)):
        assert SEALED.hex()[:16] not in str(error)


# --- hostile bytes ----------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_ticket_error(data: bytes) -> None:
    with pytest.raises(TicketError):
        SEALER.open(data, device_id=DEVICE, app_id=APP, now=NOW)


@FUZZ
@given(st.binary(min_size=0, max_size=120))
def test_decoding_any_authentic_plaintext_raises_only_ticket_error(plaintext: bytes) -> None:
    # As if our own key had sealed junk: the parser still only raises TicketError.
    try:
        decoded = decode_ticket_plaintext(plaintext)
    except TicketError:
        return
    # One encoding per ticket: whatever decodes re-encodes to the same bytes.
    assert encode_ticket_plaintext(decoded) == plaintext


@FUZZ
@given(
    user_id=st.text(min_size=1, max_size=20),
    scopes=st.lists(st.from_regex(r"[a-z:.]{1,12}", fullmatch=True), max_size=4),
    session_id=st.binary(min_size=8, max_size=8),
    ttl_s=st.integers(1, 10**7),
    token_ttl_s=st.integers(0, 10**8),
)
def test_any_valid_ticket_round_trips(
    user_id: str, scopes: list[str], session_id: bytes, ttl_s: int, token_ttl_s: int
) -> None:
    original = ticket(
        user_id=user_id,
        scopes=tuple(scopes),
        session_id=session_id,
        ttl_s=ttl_s,
        auth_expires_at=NOW + token_ttl_s,
    )
    data = SEALER.seal(original, device_id=DEVICE, app_id=APP)
    assert SEALER.open(data, device_id=DEVICE, app_id=APP, now=NOW - 1) == original
