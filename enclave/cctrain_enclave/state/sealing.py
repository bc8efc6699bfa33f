"""Bound sealing: every object at rest opens only under this policy, this code and its own name.

An object is sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the platform's
state key with a context that binds the policy digest, the enclave measurement, the object's
kind and its identifiers; the same context is the AEAD's associated data. So an enclave
started under another policy or other code opens nothing of this state, a blob moved to
another name (another shard, another step, another run) does not open either, and the error
says which object refused. File and directory names decide nothing.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cctrain.errors import CctrainError
from cctrain.files import atomic_write, fsync_dir

SEAL_CONTEXT_TAG = b"cctrain/sealed-object/v2\x00"
#: The label under which the platform derives the state key (its hardware key mixes in the
#: measurement on SEV-SNP and SGX; the simulated platform mixes it in too).
STATE_KEY_LABEL = b"cctrain/state/v2"


__all__ = ["STATE_KEY_LABEL", "BoundSealer", "SealingError", "atomic_write", "fsync_dir"]


class SealingError(CctrainError):
    """A sealed object does not open: other policy, other enclave code, other name, or tampered."""


def _lp(part: bytes) -> bytes:
    return struct.pack(">I", len(part)) + part


class BoundSealer:
    """Seal and unseal state objects bound to (policy digest, measurement, kind, identifiers)."""

    def __init__(self, state_key: bytes, *, policy_digest: bytes, measurement: bytes) -> None:
        if len(state_key) != 32:
            raise ValueError("the state key must be 32 bytes")
        self._state_key = state_key
        self._prefix = SEAL_CONTEXT_TAG + _lp(policy_digest) + _lp(measurement)

    def _context(self, kind: str, ids: tuple[bytes | str, ...]) -> bytes:
        parts = [kind.encode(), *(i.encode() if isinstance(i, str) else i for i in ids)]
        return self._prefix + struct.pack(">H", len(parts)) + b"".join(_lp(p) for p in parts)

    def _aead(self, context: bytes) -> AESGCM:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(
            self._state_key
        )
        return AESGCM(key)

    def seal(self, kind: str, ids: tuple[bytes | str, ...], data: bytes) -> bytes:
        context = self._context(kind, ids)
        nonce = os.urandom(12)
        return nonce + self._aead(context).encrypt(nonce, data, context)

    def unseal(self, kind: str, ids: tuple[bytes | str, ...], blob: bytes) -> bytes:
        context = self._context(kind, ids)
        try:
            return self._aead(context).decrypt(blob[:12], blob[12:], context)
        except (InvalidTag, ValueError):
            raise SealingError(
                f"sealed {kind} does not open under this policy and this enclave code "
                "(sealed under another policy, by other code, for another object, or tampered)"
            ) from None
