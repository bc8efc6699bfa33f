"""The enclave's keys: a persistent HPKE + signing identity, and a fresh TLS key per start.

The identity keys outlive restarts (receipts and the release manifest are
signed with them), so they are kept sealed under the platform's sealing key.
The TLS key never leaves memory; evidence binds its SPKI hash each time.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from cctrain_enclave.sealing import Sealer, atomic_write

TLS_SERVER_NAME = "cctrain-enclave"


@dataclass(frozen=True)
class EnclaveKeys:
    hpke: X25519PrivateKey
    signing: Ed25519PrivateKey

    @property
    def hpke_public(self) -> bytes:
        return self.hpke.public_key().public_bytes_raw()

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes_raw()

    @classmethod
    def load_or_create(cls, state_dir: Path, sealer: Sealer) -> EnclaveKeys:
        path = state_dir / "enclave-keys.sealed"
        if path.exists():
            doc = json.loads(sealer.unseal(path.read_bytes(), label=b"enclave-keys"))
            return cls(
                X25519PrivateKey.from_private_bytes(bytes.fromhex(doc["hpke"])),
                Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc["signing"])),
            )
        keys = cls(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())
        doc = {
            "hpke": keys.hpke.private_bytes_raw().hex(),
            "signing": keys.signing.private_bytes_raw().hex(),
        }
        atomic_write(path, sealer.seal(json.dumps(doc).encode(), label=b"enclave-keys"))
        return keys


@dataclass(frozen=True)
class TlsIdentity:
    key_pem: bytes
    cert_pem: bytes
    cert: x509.Certificate

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @classmethod
    def generate(cls, hosts: list[str]) -> TlsIdentity:
        """A fresh ECDSA P-256 self-signed certificate; clients pin it after attestation."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        names: list[x509.GeneralName] = [x509.DNSName(TLS_SERVER_NAME)]
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_SERVER_NAME)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(key_pem, cert.public_bytes(serialization.Encoding.PEM), cert)
