"""HPKE (RFC 9180) single-shot sealing of small secrets (data keys) with `cryptography`.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (base mode).
The ``info`` string binds context (policy digest, party, shard) so a wrapped
key cannot be replayed into another upload or release.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cctrain.errors import CctrainError

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class HpkeError(CctrainError):
    """An HPKE-sealed value does not open (wrong key, wrong context, or tampered)."""


def info_for(tag: bytes, *parts: bytes) -> bytes:
    """Domain tag followed by length-prefixed parts: unambiguous context binding."""
    return tag + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def seal(public_key: X25519PublicKey, plaintext: bytes, *, info: bytes) -> bytes:
    return SUITE.encrypt(plaintext, public_key, info=info)


def open_sealed(private_key: X25519PrivateKey, sealed: bytes, *, info: bytes) -> bytes:
    try:
        return SUITE.decrypt(sealed, private_key, info=info)
    except (InvalidTag, ValueError):
        raise HpkeError(
            "sealed key does not open: wrong recipient key, context, or tampered"
        ) from None
