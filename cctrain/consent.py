"""Consent taken back: a provider's deletion receipt, verified offline.

Before training starts a provider may withdraw one of its shards. The enclave answers with
its journal's ``shard withdrawn`` entry, signed by the enclave key: that entry *is* the
deletion receipt. It carries the provider's own signed withdrawal, so it proves two things
to anyone holding the policy and the enclave key the genesis evidence binds: the provider
asked (its signature), and the enclave committed to dropping the shard (its signature, in
the hash chain every audit replays, before any uploads-closed entry could name the shard).

What it cannot prove is that the bytes are gone from the host's disk: the host may have
copied the ciphertext before the enclave deleted it. Such a copy stays encrypted under a
data key that only the enclave's run key (sealed to this run) and the provider unwrap, and
nothing can bring the shard back into this run: its id stays withdrawn, and every
uploads-closed entry, hence every training set and manifest, lists exactly the shards not
withdrawn before it (:func:`cctrain.journal.apply`). A host that rolls the journal back to
before the withdrawal is the rollback case, which the parties' memory of the journal head
is for (DESIGN.md, "No forks, no rollback"): this receipt names the head it made.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cctrain.errors import JournalError, ReceiptError
from cctrain.journal import parse_record, verify_consent
from cctrain.policy import Policy
from cctrain.protocol import JOURNAL_SIG_TAG, verify_signature

__all__ = ["DELETION_RECEIPT_TYPE", "DeletionReceipt", "verify_deletion_receipt"]

DELETION_RECEIPT_TYPE = "cctrain-deletion-receipt/v1"


@dataclass(frozen=True)
class DeletionReceipt:
    """A verified deletion receipt: the journal entry that withdrew ``party_id/shard_id``."""

    policy_digest: bytes
    party_id: str
    shard_id: str
    header_sha256: bytes  # of the withdrawn shard's signed upload header
    accepted_seq: int  # the journal entry that had accepted it
    journal_seq: int  # this entry
    journal_sha256: bytes  # SHA-256 of this entry: match it with `cctrain audit`
    enclave_signing_key: bytes
    record: bytes  # the serialized SignedJournalEntry, as the enclave signed it

    def to_json(self) -> dict[str, Any]:
        return {
            "type": DELETION_RECEIPT_TYPE,
            "policy_digest": self.policy_digest.hex(),
            "party_id": self.party_id,
            "shard_id": self.shard_id,
            "header_sha256": self.header_sha256.hex(),
            "accepted_seq": self.accepted_seq,
            "journal": {"seq": self.journal_seq, "sha256": self.journal_sha256.hex()},
            "enclave_signing_key": self.enclave_signing_key.hex(),
            "record": base64.b64encode(self.record).decode(),
        }


def verify_deletion_receipt(
    raw: bytes,
    *,
    enclave_key: bytes,
    policy: Policy,
    party_id: str,
    shard_id: str,
) -> DeletionReceipt:
    """Check that ``raw`` is a ``shard withdrawn`` entry of this policy, signed by the
    enclave key ``enclave_key``, carrying ``party_id``'s own valid signed withdrawal of
    ``shard_id``; return its fields. Raise :class:`ReceiptError` saying what is wrong."""
    try:
        record = parse_record(raw, position=0)
    except JournalError:
        raise ReceiptError("the deletion receipt is not a journal entry (malformed)") from None
    try:
        key = Ed25519PublicKey.from_public_bytes(enclave_key)
    except ValueError:
        raise ReceiptError("the enclave key is not an Ed25519 key") from None
    if not verify_signature(key, JOURNAL_SIG_TAG, record.entry_bytes, record.signature):
        raise ReceiptError("the deletion receipt is not signed by the attested enclave key")
    if record.kind != "shard_withdrawn":
        raise ReceiptError(f"the deletion receipt is a {record.kind or 'empty'} entry")
    if record.entry.policy_digest != policy.digest:
        raise ReceiptError("the deletion receipt is for another policy")
    w = record.entry.shard_withdrawn
    body, problems = verify_consent(w.request, policy=policy, action="withdraw")
    if body is not None and (body.party_id, body.shard_id) != (party_id, shard_id):
        problems.append(f"it withdraws {body.party_id}/{body.shard_id}, not {party_id}/{shard_id}")
    if problems or body is None:
        raise ReceiptError(
            "the deletion receipt's withdrawal does not hold: " + "; ".join(problems)
        )
    if len(w.header_sha256) != 32:
        raise ReceiptError("the deletion receipt does not name the shard's upload header")
    return DeletionReceipt(
        policy_digest=policy.digest,
        party_id=party_id,
        shard_id=shard_id,
        header_sha256=bytes(w.header_sha256),
        accepted_seq=int(w.accepted_seq),
        journal_seq=record.seq,
        journal_sha256=record.sha256,
        enclave_signing_key=enclave_key,
        record=record.raw,
    )
