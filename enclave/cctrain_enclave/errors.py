"""Errors of the enclave service.

``Refusal`` is a decision the enclave takes on a request (a bad upload, a closed phase, an
expired policy): it carries the gRPC status and a message safe to show the sender. The
servicer maps it; anything else raised while handling a request is an internal error.
``StateError`` stops the enclave at start: its state directory contradicts its journal
(``StateDirectoryError``: it cannot be used at all). ``TrainerUnavailableError``: the trainer's
libraries cannot be imported, so the enclave does not start.
"""

from __future__ import annotations

import grpc

from cctrain.errors import CctrainError, InputError, ShardError

#: The most of one refusal the log keeps: a caller must not write megabytes into it.
LOG_TEXT_MAX = 400


class Refusal(Exception):
    """A refusal with the gRPC status to send; the message is safe to show the sender.

    The sender may be told about its own data (which column is not a number, what label
    range a shard holds); the host's log may not, and gets ``log`` instead when given."""

    def __init__(self, code: grpc.StatusCode, message: str, *, log: str | None = None) -> None:
        self.code = code
        self.message = message
        self._log = log
        super().__init__(message)

    @property
    def log_text(self) -> str:
        """What the enclave's log (which the host reads) may say about this refusal."""
        text = self._log if self._log is not None else self.message
        return text if len(text) <= LOG_TEXT_MAX else text[:LOG_TEXT_MAX] + "… (cut)"


class StateError(CctrainError):
    """The state directory contradicts the journal (or cannot be trusted): the enclave stops."""


class StoredShardError(ShardError):
    """An accepted shard does not read back at training.

    ``at_rest`` failures (the stored ciphertext does not authenticate, or does not match
    the journaled commitment) are the host's doing, and their text names no data: every
    party may read it. Any other failure to read a shard back concerns its provider only.
    """

    def __init__(self, party_id: str, shard_id: str, seq: int, reason: str, *, at_rest: bool):
        self.party_id, self.shard_id, self.seq, self.at_rest = party_id, shard_id, seq, at_rest
        super().__init__(
            f"stored shard {party_id}/{shard_id} (journal entry #{seq}) does not read back: "
            f"{reason}"
        )


class StateDirectoryError(StateError, InputError):
    """The state directory cannot be used at all: not creatable or writable, not a directory,
    or in use by another enclave process. A setup problem (exit status 2), not tampering."""


class TrainingDeviceError(InputError):
    """``training.device`` names a device this machine lacks, or one the policy does not let
    the data reach: a setup problem, refused when the enclave starts. (Here, not in the
    trainer, so the serving process can raise it without importing torch.)"""


class TrainerUnavailableError(InputError):
    """torch, Opacus or safetensors (the ``enclave`` extra) cannot be imported: an enclave
    without them would accept uploads it can never train on, so it does not start."""
