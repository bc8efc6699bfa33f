"""The enclave's durable state, in one place. The host owns the disk, so none of it is
believed for being there::

    STATE/
      journal.log            signed, hash-chained entries (genesis … released); the only
                             source of what the enclave believes: replayed and re-verified at
                             every start (cctrain.journal.replay), appended + fsynced before a
                             transition is acknowledged
      identity.sealed        the run's HPKE + signing keys  ─┐ sealed: key and AAD bind policy
                                                             │ digest, measurement, object kind
      checkpoints/<sha256>.sealed  the journaled checkpoint ─┘ and ids (run, step)
      shards/<header-sha256>.ct  accepted ciphertext, exactly as the owner sent it (STREAM
                             AEAD under the owner's data key, which only the enclave's HPKE
                             key recovers from the signed header in the journal); deleted
                             when its owner withdraws it
      uploads/<party>/<shard>/   resumable partial uploads (same AEAD, not yet journaled)
      release/<manifest-sha256>/<recipient>.{enc,sealed}  weights sealed to each recipient
                             (deleted when a provider vetoes the release)

Start: verify the journal end to end → unseal the identity bound to its run → check every
file it vouches for (shards, the latest checkpoint, the release) → remove what it does not
vouch for. A journal of another policy or other code, a flipped byte, a missing or reordered
entry, a receipt or approval whose signature does not verify: the enclave stops, naming the
entry. No journal: a new run (genesis) with new keys; nothing left behind is read.

The state key is the platform's sealing key, or (``[state] key = "consortium"``) one the
enclave made at genesis and split among the parties (:mod:`.state_key`): then a start on an
existing journal stops after verifying it, *locked* (:class:`LockedState`), and goes on
(unseal, check, remove) once k parties returned their shares.
"""

from cctrain_enclave.state.enclave_state import (
    EnclaveKeys,
    EnclaveState,
    StatePaths,
    checked_consent,
    refuse_withdrawn_id,
    unusable,
)
from cctrain_enclave.state.sealing import BoundSealer, SealingError, atomic_write, fsync_dir
from cctrain_enclave.state.state_key import LockedState

__all__ = [
    "BoundSealer",
    "EnclaveKeys",
    "EnclaveState",
    "LockedState",
    "SealingError",
    "StatePaths",
    "atomic_write",
    "fsync_dir",
    "checked_consent",
    "refuse_withdrawn_id",
    "unusable",
]
