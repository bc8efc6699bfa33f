"""Crash-safe, sealed training checkpoints.

A checkpoint is a dict of tensors and primitive containers (model and optimiser state, the
accountant history as plain lists, RNG states, the data position), serialised with
``torch.save`` and read back only with ``torch.load(weights_only=True)``: never unpickled.

The trainer talks to a :class:`Checkpointer`. Two exist:

* :class:`BlobCheckpoints` hands the bytes, with the step and ε they reach, to a byte store:
  the enclave's journaled store (``cctrain_enclave.state.checkpoints``) seals them bound to
  the run and the step, and journals their digest, step and ε before training goes on.
* :class:`CheckpointStore` keeps one file sealed by the caller's ``seal`` (tests and tools),
  written atomically (temp file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from cctrain.errors import CctrainError

__all__ = [
    "BlobCheckpoints",
    "CheckpointBlobs",
    "CheckpointError",
    "CheckpointStore",
    "Checkpointer",
]


class CheckpointError(CctrainError):
    """A checkpoint cannot be unsealed or read, or belongs to a different training run."""


class Checkpointer(Protocol):
    """Where the trainer saves its position and resumes from."""

    every_steps: int

    def save(self, state: dict[str, Any], *, step: int, epsilon: float | None) -> None: ...

    def load(self) -> dict[str, Any] | None: ...


class CheckpointBlobs(Protocol):
    """A store of serialised checkpoints: the newest one is what ``get`` returns."""

    def put(self, data: bytes, *, step: int, epsilon: float | None) -> None: ...

    def get(self) -> bytes | None: ...


def serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def deserialize(plain: bytes) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(plain), weights_only=True)
    except Exception as exc:
        raise CheckpointError("checkpoint is not a valid weights-only archive") from exc
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint does not hold a state dict")
    return state


class BlobCheckpoints:
    """Serialise checkpoints into a :class:`CheckpointBlobs` store."""

    def __init__(self, blobs: CheckpointBlobs, *, every_steps: int = 50) -> None:
        if every_steps < 1:
            raise ValueError("every_steps must be at least 1")
        self.blobs = blobs
        self.every_steps = every_steps

    def save(self, state: dict[str, Any], *, step: int, epsilon: float | None) -> None:
        self.blobs.put(serialize(state), step=step, epsilon=epsilon)

    def load(self) -> dict[str, Any] | None:
        data = self.blobs.get()
        return None if data is None else deserialize(data)


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

    def save(self, state: dict[str, Any], *, step: int = 0, epsilon: float | None = None) -> None:
        sealed = self._seal(serialize(state))
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
        return deserialize(plain)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
