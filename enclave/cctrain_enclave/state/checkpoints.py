"""Training checkpoints the host cannot swap: sealed to the run and step, journaled by digest.

A checkpoint is written (sealed, atomically, under its own digest as name), then journaled
with its step, the ε it reaches and its SHA-256, and only then does training go on; older
files are removed after. On resume only the checkpoint of the newest journal entry is read,
and only if its bytes hash to what the entry says: an older checkpoint restored by the host
(which would make the enclave retrain steps with fresh noise) is refused at start.
"""

from __future__ import annotations

import hashlib

from cctrain_enclave.errors import StateError
from cctrain_enclave.state.enclave_state import EnclaveState
from cctrain_enclave.state.sealing import atomic_write


class JournaledCheckpoints:
    """A :class:`~cctrain_enclave.trainer.checkpoint.CheckpointBlobs` on the journal."""

    def __init__(self, state: EnclaveState) -> None:
        self.state = state

    def _ids(self, step: int) -> tuple[bytes | str, ...]:
        view = self.state.view
        assert view.uploads_closed is not None, "checkpoints exist only once training started"
        return (view.run_id, view.uploads_closed.sha256, str(step))

    def put(self, data: bytes, *, step: int, epsilon: float | None) -> None:
        paths = self.state.paths
        sealed = self.state.sealer.seal("checkpoint", self._ids(step), data)
        digest = hashlib.sha256(sealed).digest()
        paths.checkpoints.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(paths.checkpoint(digest), sealed)
        self.state.record_checkpoint(step=step, epsilon=epsilon, sha256=digest)
        for old in paths.checkpoints.iterdir():
            if old.name != paths.checkpoint(digest).name:
                old.unlink(missing_ok=True)

    def get(self) -> bytes | None:
        mark = self.state.view.checkpoint
        if mark is None:
            return None
        try:
            sealed = self.state.paths.checkpoint(mark.sha256).read_bytes()
        except FileNotFoundError:
            sealed = b""
        if hashlib.sha256(sealed).digest() != mark.sha256:
            raise StateError(
                f"the checkpoint of step {mark.step} that journal entry #{mark.seq} records is "
                "missing or altered"
            )
        return self.state.sealer.unseal("checkpoint", self._ids(mark.step), sealed)

    def clear(self) -> None:
        """After the release: the plaintext training state is no longer needed."""
        d = self.state.paths.checkpoints
        if d.exists():
            for f in d.iterdir():
                f.unlink(missing_ok=True)
