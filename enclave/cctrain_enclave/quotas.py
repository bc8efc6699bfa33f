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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from cctrain.journal import AcceptedShard
from cctrain.package import UPLOAD_FORMAT as PACKAGE_UPLOAD_FORMAT
from cctrain.policy import Policy
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.errors import Refusal


@dataclass(frozen=True)
class Holding:
    """One shard a provider holds in the enclave: accepted, or a partial upload."""

    shard_id: str
    plaintext_size: int
    plaintext_sha256: bytes

    @classmethod
    def of(cls, header: pb.ShardHeader, shard_id: str | None = None) -> Holding:
        """What a shard with this header holds (``shard_id``: the name it is stored under)."""
        return cls(
            header.shard_id if shard_id is None else shard_id,
            int(header.plaintext_size),
            bytes(header.plaintext_sha256),
        )


def accepted_holdings(shards: Iterable[AcceptedShard], party: str) -> list[Holding]:
    """The provider's accepted data shards, as holdings (a model package is not data: the
    policy's pin bounds it to one exact file, outside the data limits)."""
    return [
        Holding.of(s.header)
        for s in shards
        if s.party_id == party and s.header.format != PACKAGE_UPLOAD_FORMAT
    ]


def check_provider_limits(policy: Policy, new: Holding, holdings: Iterable[Holding]) -> None:
    """Refuse (RESOURCE_EXHAUSTED / ALREADY_EXISTS) a new shard that exceeds the provider's
    share. ``holdings`` are the provider's other shards (the one being uploaded, under the
    same id, is replaced by it and not counted)."""
    limits = policy.limits
    shard_id, plaintext_size, plaintext_sha256 = (
        new.shard_id,
        new.plaintext_size,
        new.plaintext_sha256,
    )
    others = [h for h in holdings if h.shard_id != shard_id]
    if not limits["allow_duplicate_shards"]:
        for h in others:
            if h.plaintext_sha256 == plaintext_sha256:
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
