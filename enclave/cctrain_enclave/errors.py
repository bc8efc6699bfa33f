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

from cctrain.errors import CctrainError, InputError


class Refusal(Exception):
    """A refusal with the gRPC status to send; the message is safe to show the sender."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class StateError(CctrainError):
    """The state directory contradicts the journal (or cannot be trusted): the enclave stops."""


class StateDirectoryError(StateError, InputError):
    """The state directory cannot be used at all: not creatable or writable, not a directory,
    or in use by another enclave process. A setup problem (exit status 2), not tampering."""


class TrainerUnavailableError(InputError):
    """torch, Opacus or safetensors (the ``enclave`` extra) cannot be imported: an enclave
    without them would accept uploads it can never train on, so it does not start."""
