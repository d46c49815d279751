"""TLS certificates and SuperNode keys for a real deployment (`fedprivacy credentials`).

One private CA signs the SuperLink's server certificate, whose subject alternative names are
every host and IP address the SuperNodes and ``flwr`` reach it by (a name missing there is a
failed TLS handshake); each SuperNode gets an ECDSA P-384 key pair in OpenSSH format, the
public half registered on the SuperLink with ``flwr supernode register`` (Flower 1.41's
SuperNode authentication). Keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Credentials:
    """Where `make_credentials` wrote everything."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # private keys; the public key of each is ``<key>.pub``


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedprivacy"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    """An IP address entry for an address, a DNS entry for a name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_credentials(out: str | Path, hosts: list[str], nodes: int, days: int = 365
                     ) -> Credentials:
    """A CA, a server certificate valid for ``hosts`` (names and IP addresses) and ``nodes``
    SuperNode key pairs, under ``out`` (``certificates/`` and ``keys/``)."""
    if not hosts:
        raise ValueError("--host: name at least one host or IP address the SuperLink is "
                         "reached by (it goes into the certificate's subject alternative names)")
    if nodes < 0:
        raise ValueError(f"--nodes: must be >= 0 (got {nodes})")
    out = Path(out).expanduser()
    certs, keys = out / "certificates", out / "keys"
    certs.mkdir(parents=True, exist_ok=True)
    keys.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=days)}

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder(subject_name=_name("fedprivacy CA"),
                                  issuer_name=_name("fedprivacy CA"),
                                  public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder(subject_name=_name(hosts[0]), issuer_name=ca.subject,
                                      public_key=server_key.public_key(),
                                      serial_number=x509.random_serial_number(), **valid)
              .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]),
                             critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write(certs / "ca.key", _pem_key(ca_key), private=True)
    ca_cert = _write(certs / "ca.crt", ca.public_bytes(pem))
    server_cert = _write(certs / "server.pem", server.public_bytes(pem))
    server_key_path = _write(certs / "server.key", _pem_key(server_key), private=True)

    node_keys = []
    for i in range(1, nodes + 1):
        key = ec.generate_private_key(ec.SECP384R1())
        path = _write(keys / f"supernode-{i}", key.private_bytes(
            pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
            private=True)
        _write(keys / f"supernode-{i}.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
        node_keys.append(path)
    return Credentials(ca_cert, server_cert, server_key_path, node_keys)
