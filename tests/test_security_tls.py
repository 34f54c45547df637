"""Dev certificates and real TLS 1.3 handshakes over socket pairs (no ports)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from channel.security import tokens
from channel.security.devcert import (
    DevCertificates,
    ensure_dev_certificates,
    ensure_dev_token_keys,
    issue_client_certificate,
)
from channel.security.tls import (
    client_ssl_context,
    negotiated_protocol_ok,
    peer_certificate_identity,
    server_ssl_context,
)

DEVICE = "dev-42"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return ensure_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def client_cert(certs: DevCertificates) -> tuple[Path, Path]:
    return issue_client_certificate(
        certs.ca_cert, certs.ca_key, common_name=DEVICE, directory=certs.cert.parent / "clients"
    )


# --- dev certificates -------------------------------------------------------------


def test_dev_certificates_are_created_with_private_keys_0600(certs: DevCertificates) -> None:
    for path in (certs.ca_cert, certs.ca_key, certs.cert, certs.key):
        assert path.is_file()
    for path in (certs.ca_key, certs.key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_leaf_is_a_localhost_server_cert_signed_by_the_ca(certs: DevCertificates) -> None:
    ca, leaf = _cert(certs.ca_cert), _cert(certs.cert)
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3649)
    assert certs.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex(":").upper()
    assert len(certs.fingerprint_sha256) == 32 * 3 - 1


def test_existing_certificates_are_reused(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    contents = [p.read_bytes() for p in (first.ca_cert, first.ca_key, first.cert, first.key)]
    again = ensure_dev_certificates(tmp_path)
    assert again == first
    assert [p.read_bytes() for p in (again.ca_cert, again.ca_key, again.cert, again.key)] == (
        contents
    )


def test_leaf_near_expiry_is_reissued_under_the_same_ca(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    ca_before = first.ca_cert.read_bytes()
    expires = _cert(first.cert).not_valid_after_utc
    assert ensure_dev_certificates(tmp_path, now=expires - dt.timedelta(days=8)) == first
    renewed = ensure_dev_certificates(tmp_path, now=expires - dt.timedelta(days=6))
    assert renewed.fingerprint_sha256 != first.fingerprint_sha256
    assert renewed.ca_cert.read_bytes() == ca_before
    _cert(renewed.cert).verify_directly_issued_by(_cert(renewed.ca_cert))


def test_missing_or_foreign_files_are_regenerated(tmp_path: Path) -> None:
    first = ensure_dev_certificates(tmp_path)
    first.key.unlink()
    second = ensure_dev_certificates(tmp_path)
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    # A new CA makes the old leaf useless: both are replaced.
    second.ca_key.write_text("garbage")
    third = ensure_dev_certificates(tmp_path)
    assert third.fingerprint_sha256 != second.fingerprint_sha256
    _cert(third.cert).verify_directly_issued_by(_cert(third.ca_cert))


def test_client_certificate(certs: DevCertificates, client_cert: tuple[Path, Path]) -> None:
    cert_path, key_path = client_cert
    assert cert_path.name == "client-dev-42.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(certs.ca_cert))
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == DEVICE
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_dev_token_keys_are_created_once(tmp_path: Path) -> None:
    private_path, public_path = ensure_dev_token_keys(tmp_path)
    assert (private_path.name, public_path.name) == ("token-1.key", "token-1.pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    content = private_path.read_bytes()
    assert ensure_dev_token_keys(tmp_path) == (private_path, public_path)
    assert private_path.read_bytes() == content
    assert tokens.load_verification_keys(tmp_path).keys() == {1}
    public_path.unlink()
    ensure_dev_token_keys(tmp_path)
    assert private_path.read_bytes() != content
    key = tokens.load_private_key(private_path)
    assert key.public_key() == tokens.load_public_key(public_path)


# --- handshakes -------------------------------------------------------------------


@dataclass
class Outcome:
    server_error: Exception | None = None
    client_error: Exception | None = None
    server_alpn: str | None = None
    client_alpn: str | None = None
    identity: str | None = None
    protocol_ok: bool = False
    version: str | None = None
    session: ssl.SSLSession | None = None
    reused: bool = False


def handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    server_hostname: str = "localhost",
    session: ssl.SSLSession | None = None,
) -> Outcome:
    """One TLS connection over a socket pair: server in a thread, client here."""
    outcome = Outcome()
    server_sock, client_sock = socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.settimeout(5)

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                outcome.server_alpn = tls.selected_alpn_protocol()
                outcome.identity = peer_certificate_identity(tls)
                outcome.protocol_ok = negotiated_protocol_ok(tls)
                tls.sendall(b"ok")
                tls.recv(1)  # wait for the client to finish
        except (ssl.SSLError, OSError) as exc:
            outcome.server_error = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(
            client_sock, server_hostname=server_hostname, session=session
        ) as tls:
            # Reading application data also processes the NewSessionTicket.
            assert tls.recv(2) == b"ok"
            outcome.client_alpn = tls.selected_alpn_protocol()
            outcome.version = tls.version()
            outcome.session = tls.session
            outcome.reused = bool(tls.session_reused)
    except (ssl.SSLError, OSError, AssertionError) as exc:
        outcome.client_error = exc
    finally:
        client_sock.close()
        thread.join(5)
        server_sock.close()
    assert not thread.is_alive()
    return outcome


@pytest.fixture(scope="module")
def server_context(certs: DevCertificates) -> ssl.SSLContext:
    return server_ssl_context(certs.cert, certs.key)


@pytest.fixture(scope="module")
def client_context(certs: DevCertificates) -> ssl.SSLContext:
    return client_ssl_context(certs.ca_cert)


def test_contexts_are_tls13_only_with_one_ticket(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    for context in (server_context, client_context):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert server_context.num_tickets == 1
    assert client_context.check_hostname
    assert client_context.verify_mode is ssl.CERT_REQUIRED


def test_handshake_negotiates_tls13_and_alpn(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    outcome = handshake(server_context, client_context)
    assert outcome.client_error is None and outcome.server_error is None
    assert outcome.version == "TLSv1.3"
    assert outcome.server_alpn == outcome.client_alpn == "mmtp/1"
    assert outcome.protocol_ok
    assert outcome.identity is None


def test_ip_address_names_are_valid(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    assert handshake(server_context, client_context, server_hostname="127.0.0.1").reused is False


def test_wrong_host_name_is_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    outcome = handshake(server_context, client_context, server_hostname="example.com")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_tls12_client_is_refused(server_context: ssl.SSLContext, certs: DevCertificates) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(certs.ca_cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = handshake(server_context, old)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert isinstance(outcome.client_error, ssl.SSLError)


def test_client_without_alpn_is_detectable(
    server_context: ssl.SSLContext, certs: DevCertificates
) -> None:
    plain = ssl.create_default_context(cafile=certs.ca_cert)
    outcome = handshake(server_context, plain)
    assert outcome.client_error is None
    assert outcome.server_alpn is None
    assert not outcome.protocol_ok


def test_session_resumption(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    first = handshake(server_context, client_context)
    assert first.session is not None and first.session.has_ticket
    assert not first.reused
    second = handshake(server_context, client_context, session=first.session)
    assert second.client_error is None
    assert second.reused
    assert second.client_alpn == "mmtp/1"


def test_mutual_tls_reads_the_device_identity(
    certs: DevCertificates, client_cert: tuple[Path, Path]
) -> None:
    server = server_ssl_context(
        certs.cert, certs.key, client_ca=certs.ca_cert, require_client_cert=True
    )
    cert_path, key_path = client_cert
    client = client_ssl_context(certs.ca_cert, cert=cert_path, key=key_path)
    outcome = handshake(server, client)
    assert outcome.server_error is None and outcome.client_error is None
    assert outcome.identity == DEVICE


def test_mutual_tls_refuses_a_client_without_certificate(
    certs: DevCertificates, client_context: ssl.SSLContext
) -> None:
    server = server_ssl_context(
        certs.cert, certs.key, client_ca=certs.ca_cert, require_client_cert=True
    )
    outcome = handshake(server, client_context)
    assert isinstance(outcome.server_error, ssl.SSLError)
    # TLS 1.3: the client learns of the refusal on its first read.
    assert outcome.client_error is not None


def test_optional_client_certificate(
    certs: DevCertificates, client_cert: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    server = server_ssl_context(certs.cert, certs.key, client_ca=certs.ca_cert)
    without = handshake(server, client_context)
    assert without.server_error is None and without.identity is None
    cert_path, key_path = client_cert
    with_cert = handshake(server, client_ssl_context(certs.ca_cert, cert=cert_path, key=key_path))
    assert with_cert.identity == DEVICE


def test_client_certificate_from_another_ca_is_refused(
    certs: DevCertificates, tmp_path: Path
) -> None:
    other = ensure_dev_certificates(tmp_path / "other")
    cert_path, key_path = issue_client_certificate(
        other.ca_cert, other.ca_key, common_name="intruder", directory=tmp_path
    )
    server = server_ssl_context(certs.cert, certs.key, client_ca=certs.ca_cert)
    outcome = handshake(server, client_ssl_context(certs.ca_cert, cert=cert_path, key=key_path))
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.identity is None


def test_required_client_cert_needs_a_ca(certs: DevCertificates) -> None:
    with pytest.raises(ValueError, match="client_ca"):
        server_ssl_context(certs.cert, certs.key, require_client_cert=True)


# --- key exchange groups ------------------------------------------------------------


def _openssl_client_with_groups(
    server_context: ssl.SSLContext, certs: DevCertificates, groups: str
) -> tuple[bool, str | None]:
    """``openssl s_client -groups GROUPS`` against one accepted connection.

    Returns whether the handshake completed and the group the server chose
    (None if it did not), as the server's side saw it.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        listener.settimeout(10)
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                result["cipher"] = tls.cipher()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        run = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-tls1_3",
                "-groups",
                groups,
                "-alpn",
                "mmtp/1",
                "-CAfile",
                str(certs.ca_cert),
                "-servername",
                "localhost",
                "-brief",
            ],
            input=b"",
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        thread.join(20)
        listener.close()
    output = run.stdout.decode() + run.stderr.decode()
    # "Server Temp Key: X25519, 253 bits" or "...: ECDH, prime256v1, 256 bits"
    chosen = re.search(r"Server Temp Key: (?:ECDH, )?([\w-]+)", output)
    return "error" not in result, chosen.group(1) if chosen else None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize(
    ("offered", "accepted"),
    [
        ("X25519", True),
        ("P-256", True),
        ("X448", False),
        ("secp521r1", False),
        ("P-384", False),
        ("X448:P-256", True),  # the client retries with a group the server named
    ],
)
def test_server_accepts_only_x25519_and_p256_key_shares(
    server_context: ssl.SSLContext, certs: DevCertificates, offered: str, accepted: bool
) -> None:
    completed, chosen = _openssl_client_with_groups(server_context, certs, offered)
    assert completed is accepted, (offered, chosen)
    if accepted:
        assert chosen in ("X25519", "prime256v1"), output_hint(offered, chosen)


def output_hint(offered: str, chosen: str | None) -> str:
    return f"offered {offered}, server chose {chosen}"


def test_restrict_groups_reports_a_group_openssl_does_not_know() -> None:
    from channel.security.tls import restrict_groups

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert restrict_groups(context, ("X25519", "P-256"))
    assert not restrict_groups(context, ("no-such-group",))
