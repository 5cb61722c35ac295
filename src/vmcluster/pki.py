"""The cluster's certificates: one CA, a key and certificate per host, a revocation list.

Built on the ``cryptography`` package (no hand-written crypto). The CA is an
ECDSA P-256 key with a self-signed certificate; each host makes its own key
(it never leaves the host) and a certificate request, which the CA signs with
both usages (TLS server and client: etcd peers, agent RPC, QEMU migration
streams and NBD are mutual TLS) and an IP SAN for every cluster-network
address of the host, plus a DNS SAN of the host's name. :func:`ca_hash` is
what a joining host checks, as kubeadm's ``--discovery-token-ca-cert-hash``
does: SHA-256 of the CA's SubjectPublicKeyInfo.

:class:`NodeCredentials` writes a host's files with the names each consumer
expects: ``ca.pem``, ``node.pem``, ``node-key.pem`` (etcd, Python's ``ssl``),
and a ``qemu/`` directory with QEMU's ``tls-creds-x509`` names
(``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem``, ``client-cert.pem``,
``client-key.pem``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmcluster.errors import InputError

__all__ = [
    "ADMIN",
    "CertificateAuthority",
    "NodeCredentials",
    "ca_hash",
    "crl_serials",
    "make_csr",
    "new_key",
    "token_hash",
    "write_file",
]

ADMIN = "admin"  # the operator's own certificate's name (the CLI, from the admin side)
_VALID_CA = dt.timedelta(days=3650)
_VALID_NODE = dt.timedelta(days=825)


def write_file(path: Path, data: bytes, secret: bool = True) -> None:
    """Write ``path`` (its directory made 0700 if new); a ``secret`` is mode 0600 from its
    creation on, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, node: str) -> bytes:
    """A certificate request for host ``node`` (PEM); the CA decides the SANs."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def token_hash(token: str) -> str:
    """What the store keeps of an API token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def ca_hash(ca_cert_pem: bytes) -> str:
    """``sha256:<hex>`` of the CA's SubjectPublicKeyInfo (what a joining host pins)."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def crl_serials(crl_pem: bytes) -> frozenset[int]:
    """The serial numbers a revocation list names."""
    crl = x509.load_pem_x509_crl(crl_pem)
    return frozenset(r.serial_number for r in crl)


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster CA: its key and certificate (PEM), and the serials it revoked."""

    key_pem: bytes
    cert_pem: bytes
    revoked: tuple[int, ...] = ()

    @classmethod
    def create(cls, cluster: str) -> CertificateAuthority:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmcluster {cluster} CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + _VALID_CA)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(_key_pem(key), _cert_pem(cert))

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError("the cluster CA key is not an EC key")
        return key

    def _cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def sign(self, csr_pem: bytes, node: str, addresses: Iterable[str]) -> bytes:
        """Sign host ``node``'s request: server and client usage, its addresses as SANs."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InputError(f"the certificate request of {node} is not a PEM CSR") from exc
        if not csr.is_signature_valid:
            raise InputError(f"the certificate request of {node} has a bad signature")
        ips = [ipaddress.ip_address(a) for a in addresses]
        ca = self._cert()
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
                .issuer_name(ca.subject).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + _VALID_NODE)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_encipherment=True, key_agreement=True,
                    key_cert_sign=False, crl_sign=False, content_commitment=False,
                    data_encipherment=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(node), *(x509.IPAddress(ip) for ip in ips)]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key().public_key()), critical=False)
                .sign(self._key(), hashes.SHA256()))
        return _cert_pem(cert)

    def revoke(self, cert: bytes | int) -> CertificateAuthority:
        """The CA with ``cert`` (a PEM certificate or its serial number) revoked too."""
        serial = (cert if isinstance(cert, int)
                  else x509.load_pem_x509_certificate(cert).serial_number)
        return CertificateAuthority(self.key_pem, self.cert_pem,
                                    tuple(sorted({*self.revoked, serial})))

    def crl_pem(self) -> bytes:
        """The revocation list, signed by the CA (Python's ``ssl`` checks it with
        ``VERIFY_CRL_CHECK_LEAF``)."""
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self._cert().subject)
                   .last_update(now - dt.timedelta(minutes=5))
                   .next_update(now + dt.timedelta(days=30)))
        for serial in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=5)).build())
        return builder.sign(self._key(), hashes.SHA256()).public_bytes(
            serialization.Encoding.PEM)


@dataclass(frozen=True)
class NodeCredentials:
    """A host's TLS files in ``directory`` (see the module docstring)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "node.pem"

    @property
    def key(self) -> Path:
        return self.directory / "node-key.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def qemu_dir(self) -> Path:
        return self.directory / "qemu"

    def exists(self) -> bool:
        return self.ca.is_file() and self.cert.is_file() and self.key.is_file()

    def client_context(self, ca: Path | None = None, present: bool = True) -> ssl.SSLContext:
        """TLS as a client: the peer verified against the cluster CA (or ``ca``), this host's
        certificate presented (``present``)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(ca or self.ca)
        if present:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def server_context(self, check_crl: bool = False) -> ssl.SSLContext:
        """TLS as a server: this host's certificate; callers must present one of the cluster
        CA (not on the revocation list, with ``check_crl``)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(self.ca)
        if check_crl:
            ctx.load_verify_locations(self.crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def write(self, ca_cert_pem: bytes, cert_pem: bytes, key: ec.EllipticCurvePrivateKey,
              crl_pem: bytes | None = None) -> None:
        """Write every file (keys mode 0600), QEMU's copies included."""
        key_pem = _key_pem(key)
        files = {self.ca: ca_cert_pem, self.cert: cert_pem, self.key: key_pem,
                 self.qemu_dir / "ca-cert.pem": ca_cert_pem,
                 self.qemu_dir / "server-cert.pem": cert_pem,
                 self.qemu_dir / "server-key.pem": key_pem,
                 self.qemu_dir / "client-cert.pem": cert_pem,
                 self.qemu_dir / "client-key.pem": key_pem}
        for path, data in files.items():
            write_file(path, data, secret=path.name.endswith("key.pem"))
        if crl_pem is not None:
            self.write_crl(crl_pem)

    def write_crl(self, crl_pem: bytes) -> bool:
        """The revocation list, for Python's TLS (``crl.pem``) and QEMU's (``qemu/ca-crl.pem``:
        each migration's TLS object and each NBD server reads it when made), each replaced
        atomically; True when either changed."""
        changed = False
        for path in (self.crl, self.qemu_dir / "ca-crl.pem"):
            try:
                if path.read_bytes() == crl_pem:
                    continue
            except OSError:
                pass
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(crl_pem)
            tmp.replace(path)
            changed = True
        return changed

    def issue(self, ca: CertificateAuthority, node: str, addresses: Iterable[str]) -> None:
        """Make this host's key here, have ``ca`` sign its request, write everything."""
        key = new_key()
        cert = ca.sign(make_csr(key, node), node, addresses)
        self.write(ca.cert_pem, cert, key, ca.crl_pem())
