"""What one provider may put into the enclave: the policy's ``[limits]``, enforced twice.

Once when an upload's header arrives (before any byte of it is received: a provider over
its share learns so at once and the enclave stores nothing), counting the provider's
accepted shards and its partial uploads on disk; and again, atomically, when the journal
accepts the shard (two concurrent uploads from one provider cannot both take the last slot,
nor both carry the same bytes).

Each provider is a possible adversary of the others; these bounds keep one of them from
filling the host's disk or holding every upload slot, and from uploading the same bytes
twice under two shard ids. Only byte-identical shards are duplicates: the same rows in
another archive (another zip timestamp, one more blank CSV line) are not detected. Refusals
quote only counts and sizes, never data.

The plaintext SHA-256 is known only once a shard was received (it is in no header, and the
published commitment is salted by each shard's own data key), so duplicates are found when
the journal accepts a shard, by its *duplicate tag*: an HMAC of party ‖ plaintext SHA-256
under a key derived from the enclave's signing key. The journal carries the tag; nobody but
the enclave can compute one, so it confirms no guessed dataset.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cctrain.journal import AcceptedShard
from cctrain.package import UPLOAD_FORMAT as PACKAGE_UPLOAD_FORMAT
from cctrain.policy import Policy
from cctrain.protocol import DUPLICATE_TAG_INFO
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.errors import Refusal


@dataclass(frozen=True)
class Holding:
    """One shard a provider holds in the enclave: accepted, or a partial upload."""

    shard_id: str
    plaintext_size: int
    #: :func:`duplicate_tag` of its plaintext; empty while unknown (a partial upload).
    duplicate_tag: bytes = b""

    @classmethod
    def of(
        cls, header: pb.ShardHeader, shard_id: str | None = None, *, duplicate_tag: bytes = b""
    ) -> Holding:
        """What a shard with this header holds (``shard_id``: the name it is stored under)."""
        return cls(
            header.shard_id if shard_id is None else shard_id,
            int(header.plaintext_size),
            duplicate_tag,
        )


def duplicate_tag(signing_key: Ed25519PrivateKey, party_id: str, plaintext_sha256: bytes) -> bytes:
    """HMAC-SHA256(HKDF-SHA256(enclave signing key, info ``cctrain/duplicate-tag/v1``),
    len(party) ‖ party ‖ plaintext SHA-256): equal for a provider's byte-identical shards,
    unlinkable across providers, computable by the enclave alone."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DUPLICATE_TAG_INFO).derive(raw)
    party = party_id.encode()
    msg = len(party).to_bytes(4, "big") + party + plaintext_sha256
    return hmac.new(key, msg, hashlib.sha256).digest()


def accepted_holdings(shards: Iterable[AcceptedShard], party: str) -> list[Holding]:
    """The provider's accepted data shards, as holdings (a model package is not data: the
    policy's pin bounds it to one exact file, outside the data limits)."""
    return [
        Holding.of(s.header, duplicate_tag=s.duplicate_tag)
        for s in shards
        if s.party_id == party and s.header.format != PACKAGE_UPLOAD_FORMAT
    ]


def check_provider_limits(policy: Policy, new: Holding, holdings: Iterable[Holding]) -> None:
    """Refuse (RESOURCE_EXHAUSTED / ALREADY_EXISTS) a new shard that exceeds the provider's
    share. ``holdings`` are the provider's other shards (the one being uploaded, under the
    same id, is replaced by it and not counted)."""
    limits = policy.limits
    shard_id, plaintext_size, tag = new.shard_id, new.plaintext_size, new.duplicate_tag
    others = [h for h in holdings if h.shard_id != shard_id]
    if not limits["allow_duplicate_shards"] and tag:
        for h in others:
            if h.duplicate_tag and hmac.compare_digest(h.duplicate_tag, tag):
                raise Refusal(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"shard {shard_id!r} has the same content (plaintext SHA-256) as your shard "
                    f"{h.shard_id!r}; the policy does not accept duplicate shards "
                    "(limits.allow_duplicate_shards)",
                )
    max_shards = int(limits["shards_per_provider"])
    if len(others) + 1 > max_shards:
        raise Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"you already hold {len(others)} shard(s) in this enclave (accepted or partly "
            f"uploaded), the policy allows {max_shards} per provider "
            "(limits.shards_per_provider)",
        )
    max_bytes = int(limits["bytes_per_provider"])
    used = sum(h.plaintext_size for h in others)
    if used + plaintext_size > max_bytes:
        raise Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this shard ({plaintext_size} bytes) and the {used} bytes you already hold exceed "
            f"the policy's {max_bytes} bytes per provider (limits.bytes_per_provider)",
        )
