"""Data at rest: AES-256-GCM under the platform's sealing key, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cctrain.errors import CctrainError


class SealingError(CctrainError):
    """Sealed state does not open: wrong platform key (other machine or code) or tampered."""


class Sealer:
    """Seal/unseal small state objects; ``label`` binds each blob to its purpose."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, data: bytes, *, label: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, b"cctrain/sealed/v1\x00" + label)

    def unseal(self, blob: bytes, *, label: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], b"cctrain/sealed/v1\x00" + label)
        except (InvalidTag, ValueError):
            raise SealingError(
                f"sealed state {label.decode(errors='replace')!r} does not open "
                "(another platform, other enclave code, or tampered)"
            ) from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename with fsyncs, so a crash leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
