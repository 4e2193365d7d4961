"""Throwaway TLS material for the secured local broker: a CA, broker and client certificates.

Everything is generated locally with ``cryptography`` (no openssl/keytool on PATH needed) and
written as PEM, which both Kafka's PEM keystore and Python/librdkafka clients read directly.
Private keys are unencrypted PKCS#8 (the only unencrypted form Kafka's PEM keystore accepts),
so their files are mode 0600. A second, unrelated CA lets tests prove that verification fails.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
BROKER_CN = "broker"
CLIENT_CN = "forestream"


@dataclass(frozen=True)
class TlsFiles:
    """Where one data directory's TLS material lives (all PEM)."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        """Broker key followed by its certificate chain: Kafka's ``ssl.keystore.type=PEM``."""
        return self.directory / "broker.pem"

    @property
    def broker_cert_file(self) -> Path:
        return self.directory / "broker-cert.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client-cert.pem"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client-key.pem"

    @property
    def untrusted_ca_file(self) -> Path:
        return self.directory / "untrusted-ca.pem"

    def all(self) -> list[Path]:
        return [
            self.ca_file,
            self.broker_keystore,
            self.broker_cert_file,
            self.client_cert_file,
            self.client_key_file,
            self.untrusted_ca_file,
        ]


def _key() -> ec.EllipticCurvePrivateKey:
    """P-256: accepted by Kafka's PEM loader, OpenSSL and Python, and instant to generate."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; an EC leaf signs handshakes (and may agree keys)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca(cn: str, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    cn: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA-signed certificate; the broker's also serves (it is a client of its controller)."""
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        san = [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write atomically; secrets are created 0600 so they are never readable by others."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _needs_renewal(files: TlsFiles, now: dt.datetime) -> bool:
    if not all(p.exists() for p in files.all()):
        return True
    try:
        for path in (files.broker_cert_file, files.client_cert_file):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            if cert.not_valid_after_utc - now < RENEW_BEFORE:
                return True
    except ValueError:
        return True
    return False


def ensure_tls(directory: Path) -> TlsFiles:
    """Create the CA, broker, client and untrusted-CA files once; renew them before expiry.

    Kept across restarts so clients' paths and trust stay valid. The CA key is not kept: when
    anything is missing or near expiry the whole set is issued again from a fresh CA.
    """
    files = TlsFiles(directory)
    now = dt.datetime.now(dt.UTC)
    if not _needs_renewal(files, now):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_key, ca_cert = _ca("forestream local CA", now)
    broker_key, broker_cert = _leaf(BROKER_CN, ca_key, ca_cert, now, server=True)
    client_key, client_cert = _leaf(CLIENT_CN, ca_key, ca_cert, now, server=False)
    _, untrusted = _ca("forestream untrusted CA", now)

    _write(files.ca_file, _cert_pem(ca_cert))
    _write(files.broker_cert_file, _cert_pem(broker_cert, ca_cert))
    _write(
        files.broker_keystore, _key_pem(broker_key) + _cert_pem(broker_cert, ca_cert), secret=True
    )
    _write(files.client_cert_file, _cert_pem(client_cert, ca_cert))
    _write(files.client_key_file, _key_pem(client_key), secret=True)
    _write(files.untrusted_ca_file, _cert_pem(untrusted))
    return files
