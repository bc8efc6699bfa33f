"""The state key when the consortium holds it: split at genesis, collected back after a restart.

A platform without a sealing key (TDX) cannot keep a key across restarts, and a sealing key
binds the state to one machine. With ``[state] key = "consortium"`` the enclave makes the
32-byte state key itself at genesis and splits it k-of-n with SLIP-39 (Trezor's reference
implementation, ``shamir-mnemonic``): one group of one share per party, in policy order, so
any k parties recover it and fewer learn nothing of it. Each party's share is HPKE-sealed to
its policy key and written, with a commitment to it, into the signed genesis entry.

After a restart the enclave verifies its journal but cannot unseal its identity: it is
*locked* (:class:`LockedState`). It makes an unlock key for this start only, which Attest
binds in place of the run's HPKE key. Each party fetches and verifies the journal, opens its
share with its own key and seals it again to the unlock key, bound to the journal head it
verified (:func:`cctrain.protocol.state_unlock_info`). At k distinct parties the enclave
combines the shares, unseals its identity, checks it is the one the genesis names, and opens
its state (:meth:`EnclaveState.from_sealer`). The shares are kept in memory only, and are
forgotten once combined or when opening fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cctrain.crypto import hpke
from cctrain.crypto.keys import x25519_public
from cctrain.journal import Record, RunState
from cctrain.policy import Policy
from cctrain.protocol import (
    SEALED_STATE_SHARE_MAX,
    state_share_commitment,
    state_share_info,
    state_unlock_info,
)
from cctrain.v1 import journal_pb2 as jpb
from cctrain_enclave.errors import Refusal, StateError
from cctrain_enclave.state.sealing import BoundSealer

if TYPE_CHECKING:
    from collections.abc import Callable

    from cctrain_enclave.state.enclave_state import EnclaveState

log = logging.getLogger("cctrain.enclave.state")

STATE_KEY_SIZE = 32
#: What a locked enclave answers every request that needs its keys (and what it logs).
LOCKED_TEXT = (
    "the enclave is locked: its state key is held by the consortium ({have} of {k} shares); "
    "parties unlock it with cctrain unlock"
)


# --------------------------------------------------------------------------- SLIP-39


def split_state_key(state_key: bytes, *, threshold: int, holders: int) -> list[bytes]:
    """``holders`` shares of ``state_key`` (UTF-8 SLIP-39 mnemonics), any ``threshold`` of
    which recover it.

    One single-share group per holder, with the group threshold as k: SLIP-39 forbids groups
    of several 1-of-m shares, and this form also allows k = 1. No passphrase (the shares are
    sealed to each holder instead) and the lowest iteration exponent (the passphrase
    stretching protects nothing here).
    """
    import shamir_mnemonic

    groups = shamir_mnemonic.generate_mnemonics(
        group_threshold=threshold,
        groups=[(1, 1)] * holders,
        master_secret=state_key,
        passphrase=b"",
        iteration_exponent=0,
    )
    return [group[0].encode() for group in groups]


def combine_state_key(shares: Sequence[bytes]) -> bytes:
    """The state key from exactly k shares (each already checked against its commitment)."""
    import shamir_mnemonic

    try:
        key: bytes = shamir_mnemonic.combine_mnemonics([s.decode() for s in shares], passphrase=b"")
    except (shamir_mnemonic.MnemonicError, ValueError) as exc:
        # The library's text may quote words of a share: say only which kind of failure.
        raise StateError(
            f"the {len(shares)} shares do not combine into a state key "
            f"({type(exc).__name__}): the genesis's commitments vouch for shares that do not fit"
        ) from None
    if len(key) != STATE_KEY_SIZE:
        raise StateError(f"the shares combine into a {len(key)}-byte key, not a state key")
    return key


def new_consortium_key(policy: Policy, run_id: bytes) -> tuple[bytes, jpb.StateKey]:
    """A fresh state key and its custody for the genesis entry: split k-of-n, each party's
    share sealed to its policy key and committed to.

    The split is checked to recover the key before anything is written: a run whose
    shares could not unlock it must not begin.
    """
    state_key = os.urandom(STATE_KEY_SIZE)
    k = int(policy.state["threshold"])
    shares = split_state_key(state_key, threshold=k, holders=len(policy.parties))
    if combine_state_key(shares[:k]) != state_key or combine_state_key(shares[-k:]) != state_key:
        raise StateError("the state key's shares do not recover it; refusing to begin the run")
    custody = jpb.StateKey(mode="consortium", threshold=k)
    for party, share in zip(policy.parties, shares, strict=True):
        if party.hpke_key is None:  # the policy check requires one; never seal to nobody
            raise StateError(f"party {party.id!r} has no hpke_key to seal its share to")
        custody.shares.add(
            party_id=party.id,
            sealed=hpke.seal(
                x25519_public(party.hpke_key),
                share,
                info=state_share_info(policy.digest, run_id, party.id),
            ),
            share_sha256=state_share_commitment(run_id, party.id, share),
        )
    return state_key, custody


# --------------------------------------------------------------------------- locked


@dataclass(frozen=True)
class UnlockProgress:
    """Where an unlock stands: k, and the parties whose share this start holds."""

    threshold: int
    unlocked_by: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return len(self.unlocked_by) >= self.threshold


class LockedState:
    """A verified journal whose state key the consortium holds, before k parties returned it.

    It answers what needs no key (the run state, the journal) and collects shares. It is
    not thread-safe: its owner (:class:`~cctrain_enclave.app.EnclaveApp`) calls
    :meth:`offer` and :meth:`open` under one lock.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        records: list[Record],
        view: RunState,
        open_with: Callable[[BoundSealer], EnclaveState],
        measurement: bytes,
    ) -> None:
        """``open_with(sealer)`` opens the state once the key is back (it unseals the
        identity and checks the files the journal vouches for)."""
        self.policy = policy
        self._records = records
        self.view = view
        self._open_with = open_with
        self._measurement = measurement
        #: Made for this start only: Attest binds it, parties seal their shares to it.
        self._unlock_key = X25519PrivateKey.generate()
        self._shares: dict[str, bytes] = {}
        #: Who gave a share, in order: an immutable snapshot, read without the owner's lock.
        self._holders: tuple[str, ...] = ()

    # -- what needs no key
    @property
    def records(self) -> list[Record]:
        return self._records

    @property
    def unlock_public(self) -> bytes:
        return self._unlock_key.public_key().public_bytes_raw()

    @property
    def progress(self) -> UnlockProgress:
        return UnlockProgress(self.view.state_key_threshold, self._holders)

    def refusal(self) -> Refusal:
        """The answer to any request that needs the enclave's keys."""
        return Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            LOCKED_TEXT.format(have=len(self._holders), k=self.view.state_key_threshold),
        )

    # -- shares
    def offer(
        self, party: str, sealed_share: bytes, *, journal_seq: int, journal_head_sha256: bytes
    ) -> UnlockProgress:
        """Take ``party``'s share, re-sealed to the unlock key for this journal head; refuse
        (changing nothing) a share bound elsewhere, that does not open, or is not its own."""
        view = self.view
        head = view.head
        if (journal_seq, journal_head_sha256) != (head.seq, head.sha256):
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the share is bound to journal head #{journal_seq} "
                f"{bytes(journal_head_sha256).hex()[:16]}…, but this enclave's journal head is "
                f"#{head.seq} {head.sha256.hex()[:16]}…: fetch and verify the journal again, "
                "then unlock",
            )
        if not 0 < len(sealed_share) <= SEALED_STATE_SHARE_MAX:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a sealed share is 1 to {SEALED_STATE_SHARE_MAX} bytes, got {len(sealed_share)}",
            )
        committed = view.state_share(party)
        if committed is None:  # the genesis holds one share per party of the policy
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"{party!r} holds no share")
        try:
            share = hpke.open_sealed(
                self._unlock_key,
                sealed_share,
                info=state_unlock_info(
                    self.policy.digest, view.run_id, party, head.seq, head.sha256
                ),
            )
        except hpke.HpkeError:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the share does not open with this enclave's unlock key (sealed for another "
                "enclave, another start, or another journal head): attest this enclave and "
                "unlock again",
            ) from None
        if state_share_commitment(view.run_id, party, share) != committed.share_sha256:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the share is not {party}'s share of this run (it does not match the "
                "commitment in the genesis entry)",
            )
        if party not in self._shares and not self.progress.complete:
            self._shares[party] = share
            self._holders = tuple(self._shares)
        progress = self.progress
        log.info(
            "state key: share of %s accepted (%d of %d)",
            party,
            len(progress.unlocked_by),
            progress.threshold,
        )
        return progress

    def open(self) -> EnclaveState:
        """Combine the k shares, unseal the identity and open the state; on any failure
        forget the shares (the enclave stays locked) and raise StateError saying why."""
        shares = list(self._shares.values())
        self._shares.clear()  # whatever happens next, the shares are not kept
        self._holders = ()
        key = combine_state_key(shares)
        del shares
        sealer = BoundSealer(key, policy_digest=self.policy.digest, measurement=self._measurement)
        del key
        return self._open_with(sealer)
