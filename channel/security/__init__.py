"""Gateway security: device tokens, resume tickets, TLS contexts and dev certificates.

* ``tokens``  — Ed25519-signed device tokens (issuers hold private keys,
  gateways only public ones) and their key files.
* ``tickets`` — AEAD-sealed resume tickets under a rotating key ring.
* ``tls``     — TLS 1.3 server/client contexts with ALPN ``mmtp/1``.
* ``devcert`` — a dev CA, a localhost certificate and a default token key,
  created once so a laptop gateway runs in one command.

Token and ticket code is sans-I/O: bytes and ``now`` in, claims or a
``CredentialError`` (carrying the ``ErrorCode`` to send) out.
"""

from channel.security.tickets import (
    SessionTicket,
    TicketError,
    TicketKeyRing,
    TicketSealer,
    derive_ticket_key,
)
from channel.security.tokens import (
    CredentialError,
    DeviceClaims,
    TokenError,
    TokenSigner,
    TokenVerifier,
    decode_token_text,
    encode_token_text,
    generate_keypair,
    load_private_key,
    load_public_key,
    load_verification_keys,
)

__all__ = [
    "CredentialError",
    "DeviceClaims",
    "SessionTicket",
    "TicketError",
    "TicketKeyRing",
    "TicketSealer",
    "TokenError",
    "TokenSigner",
    "TokenVerifier",
    "decode_token_text",
    "derive_ticket_key",
    "encode_token_text",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "load_verification_keys",
]
