"""Crash-safe, sealed training checkpoints.

A checkpoint is a dict of tensors and primitive containers (model and optimiser state, the
accountant history as plain lists, RNG states, the data position), serialised with
``torch.save`` and read back only with ``torch.load(weights_only=True)``: never unpickled.
The bytes are sealed by the caller's ``seal`` (the enclave passes AES-GCM under the platform
key) before they touch the host's disk, and written atomically (temp file, fsync, rename,
fsync of the directory), so a crash leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cctrain.errors import CctrainError

__all__ = ["CheckpointError", "CheckpointStore"]


class CheckpointError(CctrainError):
    """A checkpoint cannot be unsealed or read, or belongs to a different training run."""


class CheckpointStore:
    """One sealed checkpoint file in ``directory``, replaced atomically on every save."""

    FILENAME = "trainer-checkpoint.sealed"

    def __init__(
        self,
        directory: Path,
        seal: Callable[[bytes], bytes],
        unseal: Callable[[bytes], bytes],
        *,
        every_steps: int = 50,
    ) -> None:
        if every_steps < 1:
            raise ValueError("every_steps must be at least 1")
        self.directory = Path(directory)
        self.every_steps = every_steps
        self._seal = seal
        self._unseal = unseal

    @property
    def path(self) -> Path:
        return self.directory / self.FILENAME

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        sealed = self._seal(buffer.getvalue())
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self.FILENAME}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(sealed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the rename itself durable
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when there is none."""
        try:
            sealed = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            plain = self._unseal(sealed)
        except Exception as exc:  # the sealing layer's error types are the caller's choice
            raise CheckpointError("checkpoint cannot be unsealed (tampered or foreign)") from exc
        try:
            state = torch.load(io.BytesIO(plain), weights_only=True)
        except Exception as exc:
            raise CheckpointError("checkpoint is not a valid weights-only archive") from exc
        if not isinstance(state, dict):
            raise CheckpointError("checkpoint does not hold a state dict")
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
