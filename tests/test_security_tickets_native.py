"""Resume tickets: the native sealer (``channel._engine``) and the Python twin make and
take the same bytes, and refuse the same tickets with the same errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel.security.tickets import (
    NONCE_BYTES,
    SessionTicket,
    TicketError,
    TicketKeyRing,
    TicketSealer,
)

pytest.importorskip("channel._engine")

NOW = 1_760_000_000
MASTER = bytes(range(32))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(key_id: int = 1) -> tuple[TicketSealer, TicketSealer]:
    """(native, Python) sealers on one ring, drawing the same nonces."""
    ring = TicketKeyRing.from_master_secret(MASTER, key_id)
    counters = [itertools.count(), itertools.count()]

    def nonces(which: int) -> object:
        return lambda n: next(counters[which]).to_bytes(n, "big")

    native = TicketSealer(ring, random_bytes=nonces(0))  # type: ignore[arg-type]
    python = TicketSealer(ring, random_bytes=nonces(1), native=False)  # type: ignore[arg-type]
    assert native.is_native and not python.is_native
    return native, python


ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters=" "),
    min_size=1,
    max_size=60,
)
scopes = st.lists(st.from_regex(r"[a-z][a-z0-9:._-]{0,15}", fullmatch=True), max_size=5)


@FUZZ
@given(
    user_id=ids,
    scope_list=scopes,
    session_id=st.binary(min_size=8, max_size=8),
    ttl_s=st.integers(1, 10**6),
    extra_s=st.integers(0, 10**9),
    device_id=ids,
    app_id=st.text(max_size=40),
)
def test_native_and_python_seal_the_same_bytes(
    user_id: str,
    scope_list: list[str],
    session_id: bytes,
    ttl_s: int,
    extra_s: int,
    device_id: str,
    app_id: str,
) -> None:
    try:
        ticket = SessionTicket.issue(
            user_id=user_id,
            scopes=tuple(scope_list),
            session_id=session_id,
            now=NOW,
            ttl_s=ttl_s,
            auth_expires_at=NOW + ttl_s + extra_s,
        )
    except ValueError:
        return  # not a ticket the gateway would issue
    native, python = pair()
    if len(device_id.encode()) > 255 or len(app_id.encode()) > 255:
        return
    a = native.seal(ticket, device_id=device_id, app_id=app_id)
    b = python.seal(ticket, device_id=device_id, app_id=app_id)
    assert a == b
    for opener in (native, python):
        assert opener.open(a, device_id=device_id, app_id=app_id, now=NOW) == ticket


def test_both_refuse_the_same_tickets_with_the_same_messages() -> None:
    native, python = pair()
    ticket = SessionTicket.issue(
        user_id="u-1",
        scopes=("rpc",),
        session_id=b"12345678",
        now=NOW,
        ttl_s=60,
        auth_expires_at=NOW + 600,
    )
    sealed = python.seal(ticket, device_id="dev", app_id="app")
    cases = [bytes([sealed[0]]) + bytes([b ^ 1]) + sealed[2:] for b in sealed[1:2]]
    cases += [sealed[:-1] + bytes([sealed[-1] ^ 0x80]), sealed[:30] + b"\x00" * 20]
    for data in cases:
        messages = []
        for opener in (native, python):
            with pytest.raises(TicketError) as info:
                opener.open(data, device_id="dev", app_id="app", now=NOW)
            messages.append(info.value.message)
        assert messages[0] == messages[1]
    for opener in (native, python):
        with pytest.raises(TicketError, match="tampered"):
            opener.open(sealed, device_id="other", app_id="app", now=NOW)
        with pytest.raises(TicketError, match="expired"):
            opener.open(sealed, device_id="dev", app_id="app", now=NOW + 60)


def test_authentic_but_malformed_plaintext_is_refused_alike() -> None:
    """Sealed with the ring's key by hand: a user id running past the end, and one
    that is empty (which SessionTicket refuses)."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from channel.security.tickets import _associated_data

    native, python = pair()
    key = native.keys.key(1)
    assert key is not None
    nonce = b"\x00" * NONCE_BYTES
    for plaintext in (
        b"\x00" * 8 + NOW.to_bytes(4, "big") + b"\x00\x09x",
        b"\x00" * 8 + NOW.to_bytes(4, "big") + b"\x00\x00rpc",
        b"\x00" * 8 + NOW.to_bytes(4, "big") + b"\x80\x00\x01u",
    ):
        data = (
            b"\x01"
            + nonce
            + ChaCha20Poly1305(key).encrypt(nonce, plaintext, _associated_data(1, "d", "a"))
        )
        for opener in (native, python):
            with pytest.raises(TicketError, match="malformed"):
                opener.open(data, device_id="d", app_id="a", now=NOW - 10)


def test_native_sealer_follows_rotation() -> None:
    ring = TicketKeyRing.from_master_secret(MASTER, 1)
    sealer = TicketSealer(ring)
    ticket = SessionTicket.issue(
        user_id="u", scopes=(), session_id=b"abcdefgh", now=NOW, ttl_s=60, auth_expires_at=NOW + 60
    )
    old = sealer.seal(ticket, device_id="d", app_id="a")
    from channel.security.tickets import derive_ticket_key

    ring.rotate(2, derive_ticket_key(MASTER, 2))
    new = sealer.seal(ticket, device_id="d", app_id="a")
    assert (old[0], new[0]) == (1, 2)
    python = TicketSealer(ring, native=False)
    for data in (old, new):
        assert sealer.open(data, device_id="d", app_id="a", now=NOW) == ticket
        assert python.open(data, device_id="d", app_id="a", now=NOW) == ticket
    ring.retire(1)
    with pytest.raises(TicketError, match="retired or unknown"):
        sealer.open(old, device_id="d", app_id="a", now=NOW)
