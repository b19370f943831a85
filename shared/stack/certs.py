"""A local certificate authority and one certificate per identity, for TLS on one machine or a small
deployment: `cascade certs init` and `cascade up --tls` make them in HOME/tls.

    ca.pem / ca.key         the CA (the trust bundle every client and mTLS server is given)
    <name>.pem / <name>.key one leaf per identity: CN=<name>, serving and client auth, so the same
                            pair serves TLS and presents itself to others (mTLS)

Keys are EC P-256 in unencrypted PKCS#8 (what gRPC and Kafka's PEM keystores read), mode 0600.
Existing files are kept: a new name gets a certificate from the existing CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Identity", "LocalPki", "init_pki", "load_pki"]

_CA_NAME = "Cascade local CA"
# A DNS name a certificate may hold: dot-separated labels of letters, digits and inner hyphens.
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class Identity:
    name: str  # also the certificate's CN: the principal an mTLS peer becomes
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class LocalPki:
    directory: Path
    ca_file: Path

    def identity(self, name: str) -> Identity:
        identity = Identity(name, self.directory / f"{name}.pem", self.directory / f"{name}.key")
        if not identity.cert_file.exists() or not identity.key_file.exists():
            raise FileNotFoundError(
                f"no certificate for {name!r} in {self.directory}: `cascade certs init` makes one"
            )
        return identity


def load_pki(directory: Path) -> LocalPki | None:
    ca_file = directory / "ca.pem"
    return LocalPki(directory, ca_file) if ca_file.exists() else None


def init_pki(
    directory: Path,
    names: Iterable[str],
    *,
    hosts: Iterable[str] = (),
    force: bool = False,
    valid_days: int = 825,
) -> LocalPki:
    """The CA in `directory` (made if missing, or anew with `force`) and a certificate for each name
    that has none (every one with `force`). Each leaf is valid for its name, localhost, 127.0.0.1,
    ::1 and `hosts` (IP addresses or DNS names)."""
    identity_names, extra_hosts = list(names), list(hosts)
    # A name is also a file name here: checking it as a DNS name keeps it inside `directory`.
    for host in [*identity_names, *extra_hosts]:
        _check_host(host)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_cert_file, ca_key_file = directory / "ca.pem", directory / "ca.key"
    if force or not ca_cert_file.exists() or not ca_key_file.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, valid_days)
        _write_key(ca_key_file, ca_key)
        ca_cert_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        force = True  # leaves of an old CA would no longer verify
    else:
        loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_file} is not an EC private key")
        ca_key = loaded
        ca_cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
    for name in identity_names:
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        if not force and cert_file.exists() and key_file.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _leaf_certificate(name, key, ca_key, ca_cert, [name, *extra_hosts], valid_days)
        _write_key(key_file, key)
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return LocalPki(directory, ca_cert_file)


def _check_host(host: str) -> None:
    """A name or address a certificate can be valid for, or ValueError naming it."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _DNS_NAME.fullmatch(host):
            raise ValueError(f"{host!r} is neither an IP address nor a DNS name") from None


def _ca_certificate(key: ec.EllipticCurvePrivateKey, valid_days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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


def _leaf_certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
    valid_days: int,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    alternative: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"]):
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternative.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    temporary.replace(path)
