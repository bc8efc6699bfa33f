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


CLUSTER_REPORT_DATA_TAG = b"cctrain/cluster-report-data/v1"


def cluster_report_data(
    *, policy_digest: bytes, joint_nonce: bytes, rank: int, link_public_key: bytes
) -> bytes:
    """report_data of a rank's evidence to the other ranks of a cluster (DESIGN.md,
    "Scale-out"): SHA-512(tag ‖ length-prefixed: policy digest, joint nonce, rank, the rank's
    X25519 link key). The joint nonce hashes every rank's own nonce, so each verifier's
    freshness is in every piece of evidence; the link key is the one the per-link keys are
    derived from, so a host between two ranks cannot put its own key in the middle."""
    if len(joint_nonce) != NONCE_SIZE:
        raise ValueError(f"joint nonce must be {NONCE_SIZE} bytes, got {len(joint_nonce)}")
    if len(link_public_key) != 32:
        raise ValueError(
            f"link key must be a raw X25519 key (32 bytes), got {len(link_public_key)}"
        )
    h = hashlib.sha512()
    h.update(CLUSTER_REPORT_DATA_TAG)
    for part in (policy_digest, joint_nonce, struct.pack(">I", rank), link_public_key):
        h.update(_lp(part))
    return h.digest()
