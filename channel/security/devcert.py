"""Development certificates and token keys, so `channel serve` works in one command.

``ensure_dev_certificates(directory)`` keeps these files in ``directory``::

    ca.pem / ca.key          a dev CA (ECDSA P-256, 10 years); trust ca.pem in the SDK
    server.pem / server.key  a leaf for localhost, 127.0.0.1 and ::1 (ECDSA P-256,
                             1 year, serverAuth), signed by the CA

Existing valid files are reused, so a device that trusts ``ca.pem`` keeps
working across restarts. The leaf is re-issued when it is missing, unreadable,
not signed by the CA, or expires within 7 days; the CA (and then the leaf) is
re-created when it is missing, unreadable or expires within 7 days. Private
keys are mode 0600. A lock file serialises concurrent callers (several worker
processes starting at once). P-256 keeps the TLS handshake near 1 KB.

These are for development and tests only: production gateways use
certificates from a real CA.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from channel.security import tokens
from channel.security.keys import write_private_file, write_public_file

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=7)
#: Backdating absorbs small clock differences between this host and devices.
_BACKDATE = dt.timedelta(minutes=5)
DEV_HOSTNAMES = ("localhost",)
DEV_ADDRESSES = ("127.0.0.1", "::1")
DEV_TOKEN_KEY_ID = 1

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server.key"
_LOCK_NAME = ".devcert.lock"


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the dev CA and server leaf, and the leaf's SHA-256 fingerprint."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    #: SHA-256 of the leaf's DER, uppercase hex pairs joined by colons (as openssl prints).
    fingerprint_sha256: str


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now_utc(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Channel development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its matching EC key, or None if either is missing or bad."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _create_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name("Channel development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    now: dt.datetime,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    validity: dt.timedelta = LEAF_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _server_san() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in DEV_HOSTNAMES]
    names.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in DEV_ADDRESSES)
    return names


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    write_private_file(key_path, _key_pem(key))
    write_public_file(cert_path, cert.public_bytes(Encoding.PEM))


def ensure_dev_certificates(directory: Path, *, now: dt.datetime | None = None) -> DevCertificates:
    """Create or reuse the dev CA and localhost leaf in ``directory`` (see module doc)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    at = _now_utc(now)
    paths = DevCertificates(
        ca_cert=directory / CA_CERT_NAME,
        ca_key=directory / CA_KEY_NAME,
        cert=directory / SERVER_CERT_NAME,
        key=directory / SERVER_KEY_NAME,
        fingerprint_sha256="",
    )
    with _directory_lock(directory):
        ca = _load_pair(paths.ca_cert, paths.ca_key)
        if ca is None or not _fresh(ca[0], at):
            ca = _create_ca(at)
            _write_pair(paths.ca_cert, paths.ca_key, *ca)
        leaf = _load_pair(paths.cert, paths.key)
        if leaf is None or not _fresh(leaf[0], at) or not _signed_by(leaf[0], ca[0]):
            leaf = _issue_leaf(
                ca[0],
                ca[1],
                common_name=DEV_HOSTNAMES[0],
                now=at,
                usage=ExtendedKeyUsageOID.SERVER_AUTH,
                san=_server_san(),
            )
            _write_pair(paths.cert, paths.key, *leaf)
    return DevCertificates(
        ca_cert=paths.ca_cert,
        ca_key=paths.ca_key,
        cert=paths.cert,
        key=paths.key,
        fingerprint_sha256=certificate_fingerprint(leaf[0]),
    )


def issue_client_certificate(
    ca_cert: Path,
    ca_key: Path,
    *,
    common_name: str,
    directory: Path,
    now: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Write ``client-<cn>.pem`` / ``.key`` (clientAuth, CN = device id) signed by the CA.

    For mutual-TLS devices (IoT boxes) in development and tests; the gateway
    reads the CN with ``tls.peer_certificate_identity``.
    """
    ca = _load_pair(ca_cert, ca_key)
    if ca is None:
        raise ValueError(f"{ca_cert} and {ca_key} are not a matching EC certificate and key")
    tokens.check_id("common_name", common_name)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in common_name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = _issue_leaf(
        ca[0],
        ca[1],
        common_name=common_name,
        now=_now_utc(now),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=None,
    )
    cert_path = directory / f"client-{safe}.pem"
    key_path = directory / f"client-{safe}.key"
    _write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def ensure_dev_token_keys(directory: Path) -> tuple[Path, Path]:
    """Create or reuse ``token-1.key`` / ``token-1.pub``, the embedded default token key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = tokens.key_file_paths(directory, DEV_TOKEN_KEY_ID)
    with _directory_lock(directory):
        try:
            private_key = tokens.load_private_key(private_path)
            public_key = tokens.load_public_key(public_path)
        except ValueError:
            pass
        else:
            if private_key.public_key() == public_key:
                return private_path, public_path
        # Missing or mismatched: start over (dev keys only; tokens must be re-issued).
        for path in (private_path, public_path):
            path.unlink(missing_ok=True)
        return tokens.generate_keypair(directory, DEV_TOKEN_KEY_ID)
