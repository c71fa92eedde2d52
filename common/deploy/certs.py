"""A local test PKI for a Flower deployment: CA, SuperLink certificate, SuperNode keys.

What Flower 1.42 accepts (STACK.md section 7):
- TLS: the SuperLink takes ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem
  --ssl-keyfile server.key``; SuperNodes and the ``flwr`` CLI trust ``ca.crt``.
  The server certificate names where it is reached (subjectAltName
  ``IP:127.0.0.1``, ``IP:::1``, ``DNS:localhost`` by default; add the real host
  name or address for a deployment beyond this machine).
- Node authentication: each SuperNode holds an **EC** private key (P-384) in
  **OpenSSH** format (``flower-supernode --auth-supernode-private-key``; Flower
  loads it with ``load_ssh_private_key`` and rejects ed25519); the SuperLink
  operator registers the matching OpenSSH public key (``flwr supernode register
  KEY.pub``).

Everything is generated with `cryptography` (no openssl or ssh-keygen needed).
Private keys are written with mode 0600. This is a *test* CA: for a real
federation use your organisation's CA and keep ``ca.key`` offline.
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

from common.atomic import atomic_write_bytes

DEFAULT_IPS = ("127.0.0.1", "::1")
DEFAULT_DNS = ("localhost",)
CURVE = ec.SECP384R1


@dataclass(frozen=True)
class ServerPKI:
    ca_cert: Path  # give to every SuperNode and to the flwr CLI (root certificates)
    ca_key: Path  # keep private (offline, for a real CA)
    cert: Path  # the SuperLink's certificate (server.pem)
    key: Path  # the SuperLink's private key (server.key)


@dataclass(frozen=True)
class NodeKey:
    private: Path  # stays at the site: flower-supernode --auth-supernode-private-key
    public: Path  # goes to the operator: flwr supernode register


def _write_private(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o600)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgckd test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_public(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_server_pki(out: Path | str, ips: tuple[str, ...] = DEFAULT_IPS, dns: tuple[str, ...] = DEFAULT_DNS,
                    days: int = 365) -> ServerPKI:
    """A self-signed CA and a SuperLink certificate it signs, in `out` (overwrites)."""
    out = Path(out)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = _name("fedgckd test CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(CURVE())
    names = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
    if not names:
        raise ValueError("the server certificate needs at least one IP address or DNS name")
    cert = (x509.CertificateBuilder().subject_name(_name(dns[0] if dns else ips[0])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = ServerPKI(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    _write_public(pki.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    _write_private(pki.ca_key, _pem_key(ca_key))
    _write_public(pki.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(pki.key, _pem_key(key))
    return pki


def make_node_key(path: Path | str, comment: str = "") -> NodeKey:
    """An EC P-384 key pair for SuperNode authentication: `path` (OpenSSH private) and `path`.pub (OpenSSH public)."""
    path = Path(path)
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if comment:
        public += b" " + comment.encode()
    _write_private(path, private)
    pub = path.with_name(path.name + ".pub")
    _write_public(pub, public + b"\n")
    return NodeKey(path, pub)


def check_node_key(path: Path | str) -> None:
    """Raise ValueError unless `path` is an OpenSSH EC private key (what flower-supernode accepts)."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, OSError) as ex:
        raise ValueError(f"{path}: not an unencrypted OpenSSH private key ({ex})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: a {type(key).__name__.removeprefix('_')}; Flower's node authentication needs an "
                         "EC key (e.g. `fedgckd certs node-key`, or ssh-keygen -t ecdsa -b 384)")
