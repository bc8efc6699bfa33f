"""The report_data binding of DESIGN.md.

report_data (64 bytes) = SHA-512(domain tag ‖ length-prefixed: enclave HPKE public key,
enclave signing key, TLS certificate SPKI hash, policy digest, verifier nonce).

Binding every key and the policy into the hardware-signed field is what lets a
data owner trust the channel and the encryption key it is about to use.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

REPORT_DATA_TAG = b"cctrain/report-data/v1"
NONCE_SIZE = 32


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def spki_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (what the channel is pinned to)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


@dataclass(frozen=True)
class EnclaveIdentity:
    """The enclave's public keys that evidence binds."""

    hpke_public_key: bytes  # raw X25519
    signing_public_key: bytes  # raw Ed25519
    tls_spki_sha256: bytes


def report_data_for(identity: EnclaveIdentity, *, policy_digest: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"verifier nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    h = hashlib.sha512()
    h.update(REPORT_DATA_TAG)
    for part in (
        identity.hpke_public_key,
        identity.signing_public_key,
        identity.tls_spki_sha256,
        policy_digest,
        nonce,
    ):
        h.update(_lp(part))
    return h.digest()
