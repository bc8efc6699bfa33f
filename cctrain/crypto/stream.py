"""The STREAM construction over AES-256-GCM (Hoang, Reyhanitabar, Rogaway, Vizár 2015).

Chunk i is sealed with nonce = prefix(7) ‖ i (u32, big-endian) ‖ last-flag(1),
and the header digest as associated data.  Reordering, duplication, dropping,
truncation (no chunk with the last flag) and extension (a chunk after it) all
fail: either the index check or the tag.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
MAX_CHUNKS = 2**32


def stream_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if len(prefix) != NONCE_PREFIX_SIZE:
        raise ValueError("STREAM nonce prefix must be 7 bytes")
    if not 0 <= index < MAX_CHUNKS:
        raise ValueError("chunk index out of range")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class StreamSealer:
    def __init__(self, key: bytes, prefix: bytes, associated_data: bytes) -> None:
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._ad = associated_data

    def seal(self, index: int, plaintext: bytes, *, last: bool) -> bytes:
        return self._aead.encrypt(stream_nonce(self._prefix, index, last), plaintext, self._ad)


class StreamOpener:
    def __init__(self, key: bytes, prefix: bytes, associated_data: bytes) -> None:
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._ad = associated_data

    def open(self, index: int, ciphertext: bytes, *, last: bool) -> bytes | None:
        """Plaintext, or None when the chunk does not authenticate (one opaque failure)."""
        try:
            return self._aead.decrypt(stream_nonce(self._prefix, index, last), ciphertext, self._ad)
        except InvalidTag:
            return None
