"""TLS contexts for MMTP: TLS 1.3 only, ALPN ``mmtp/1``, small handshakes.

Server contexts issue exactly one session ticket per handshake
(``num_tickets = 1``; OpenSSL's default of 2 costs ~255 bytes more on every
full handshake) and keep ticket-based resumption on, so a reconnecting device
does an abbreviated handshake. Python's ``ssl`` has no TLS early data, so on the
Python engine MMTP's "0-RTT" happens at the protocol level (requests pipelined
behind HELLO); the native engine can also accept TLS early data (spec section 8.5,
``[tls] early_data_max_bytes``).

Optional client certificates serve IoT-style devices (mutual TLS): the
gateway then takes the device identity from the certificate's common name
(``peer_certificate_identity``).

A server context does not refuse a client that offers no ALPN or other
protocols (OpenSSL continues without ALPN): the gateway's TLS engine reads the
ClientHello first and fails such a handshake itself (``tlsproto``), and the
session checks ``negotiated_protocol_ok`` after the handshake as well.

Server contexts offer key exchange with X25519 and P-256 only
(``SERVER_GROUPS``): both are fast, universally supported and what every
mobile TLS stack sends a key share for; X448 and P-384/P-521 cost several
times more CPU per handshake for a security margin MMTP does not need, so a
client gets no say in making the gateway pay it. Python 3.11's ``ssl`` has no
API for the group list, so ``restrict_groups`` sets it through OpenSSL
(``SSL_CTX_set1_groups_list``) on the context's own ``SSL_CTX``, after
checking that the pointer it found is that context's.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from channel.wire.hello import ALPN_PROTOCOL

#: Tickets per full handshake; one is all a device keeps.
SERVER_SESSION_TICKETS = 1
#: Key exchange groups a server context accepts (OpenSSL names, in preference order).
SERVER_GROUPS = ("X25519", "P-256")

log = logging.getLogger("channel.tls")

#: OpenSSL's SSL_CTRL_SET_GROUPS_LIST (ssl.h): what SSL_CTX_set1_groups_list expands to.
_SSL_CTRL_SET_GROUPS_LIST = 92


def _tls13_only(context: ssl.SSLContext, alpn: tuple[str, ...] = (ALPN_PROTOCOL,)) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(list(alpn))


def server_ssl_context(
    cert: Path,
    key: Path,
    *,
    client_ca: Path | None = None,
    require_client_cert: bool = False,
    alpn: tuple[str, ...] = (ALPN_PROTOCOL,),
) -> ssl.SSLContext:
    """A TLS 1.3 server context for ``cert``/``key`` (PEM files), selecting ``alpn``
    (``mmtp/1``; the MQTT listener's selects ``mqtt`` when a client offers it).

    With ``client_ca``, clients may present a certificate signed by it
    (verified when presented); with ``require_client_cert`` they must, or the
    handshake fails. ``require_client_cert`` without ``client_ca`` is a
    ``ValueError``.
    """
    if require_client_cert and client_ca is None:
        raise ValueError("require_client_cert needs client_ca: the CA that signs device certs")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _tls13_only(context, alpn)
    context.load_cert_chain(certfile=cert, keyfile=key)
    restrict_groups(context, SERVER_GROUPS)
    context.num_tickets = SERVER_SESSION_TICKETS
    # Ticket-based resumption needs no per-session server state: any process
    # sharing this context resumes. OP_NO_TICKET stays unset on purpose.
    context.options &= ~ssl.OP_NO_TICKET
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


class TlsReloadError(ValueError):
    """New ``[tls]`` files were refused; the listener keeps the ones it had."""


class ServerContextRef:
    """The server context a listener gives new connections. A reload replaces it
    whole; a connection keeps the context it started with."""

    __slots__ = ("context",)

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context


def context_ref(context: ssl.SSLContext | ServerContextRef) -> ServerContextRef:
    return context if isinstance(context, ServerContextRef) else ServerContextRef(context)


@dataclass(frozen=True)
class TlsFiles:
    """A listener's certificate files: what both engines load (``[tls]`` or the dev CA)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False

    def server_context(self, alpn: tuple[str, ...] = (ALPN_PROTOCOL,)) -> ssl.SSLContext:
        """The Python engine's ``ssl`` context for these files (selecting ``alpn``)."""
        return server_ssl_context(
            self.cert,
            self.key,
            client_ca=self.client_ca,
            require_client_cert=self.require_client_cert,
            alpn=alpn,
        )

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(cert, key, client CA) PEM bytes; ``TlsReloadError`` names the file that fails."""
        try:
            client_ca = self.client_ca.read_bytes() if self.client_ca is not None else None
            return self.cert.read_bytes(), self.key.read_bytes(), client_ca
        except OSError as exc:
            raise TlsReloadError(f"tls: cannot read {exc.filename}: {exc.strerror}") from exc

    def summary(self) -> dict[str, str]:
        """What an operator checks after a reload: the certificate's file, subject,
        expiry and SHA-256 fingerprint (empty values if the file does not parse)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        doc = {"cert": str(self.cert), "subject": "", "not_after": "", "sha256": ""}
        try:
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        except (OSError, ValueError):
            return doc
        doc["subject"] = cert.subject.rfc4514_string()
        doc["not_after"] = cert.not_valid_after_utc.isoformat()
        doc["sha256"] = cert.fingerprint(hashes.SHA256()).hex(":").upper()
        return doc


def client_ssl_context(
    ca: Path | None, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the server and its host name.

    ``ca`` is the CA file to trust (the dev CA in development); None trusts
    the system store. ``cert``/``key`` present a client certificate (mTLS).
    """
    if key is not None and cert is None:
        raise ValueError("a client key needs its certificate (cert=...)")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    _tls13_only(context)
    if cert is not None:
        context.load_cert_chain(certfile=cert, keyfile=key)
    return context


def negotiated_protocol_ok(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bool:
    """True if the handshake selected ALPN ``mmtp/1`` (False: no ALPN or another one)."""
    return ssl_object.selected_alpn_protocol() == ALPN_PROTOCOL


def peer_certificate_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The common name of the peer's verified certificate, or None without one.

    Only meaningful on a server context with ``client_ca``: ``getpeercert``
    reports a certificate only after it was verified against that CA.
    """
    peer = ssl_object.getpeercert()
    if not peer:
        return None
    subject = peer.get("subject", ())
    # ``subject`` is a tuple of RDNs, each a tuple of (name, value) pairs.
    for rdn in subject if isinstance(subject, tuple) else ():
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName":
                return str(pair[1])
    return None


def restrict_groups(context: ssl.SSLContext, groups: tuple[str, ...]) -> bool:
    """Limit the key exchange groups ``context`` negotiates; False (and a warning) if it cannot.

    Uses ``SSLContext.set_groups`` where Python has it (3.15+); else OpenSSL's
    ``SSL_CTX_set1_groups_list`` through ctypes, on the ``SSL_CTX`` pointer that
    CPython keeps first after the object header of an ``SSLContext``. That
    pointer is used only once ``SSL_CTX_get_options`` through it returns the
    context's own options, read through Python; a mismatch, another Python, or a
    missing symbol leaves OpenSSL's default groups in place.
    """
    names = ":".join(groups)
    setter = getattr(context, "set_groups", None)
    if setter is not None:  # pragma: no cover - Python 3.15+
        setter(names)
        return True
    try:
        done = _set_groups_list(context, names)
    except (OSError, AttributeError, ValueError) as exc:
        log.warning("cannot restrict TLS key exchange groups: %s", exc)
        return False
    if not done:
        log.warning("cannot restrict TLS key exchange groups to %s", names)
    return done


def _set_groups_list(context: ssl.SSLContext, names: str) -> bool:
    import _ssl
    import sys

    if sys.implementation.name != "cpython" or not _ssl.__file__:
        return False
    libssl = ctypes.CDLL(_ssl.__file__)  # its symbols include the libssl it links
    get_options = libssl.SSL_CTX_get_options
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = [ctypes.c_void_p]
    control = libssl.SSL_CTX_ctrl
    control.restype = ctypes.c_long
    control.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or pointer % ctypes.alignment(ctypes.c_void_p):
        return False
    if get_options(pointer) != int(context.options):
        return False
    encoded = ctypes.create_string_buffer(names.encode())
    return bool(control(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.addressof(encoded)))
