"""The evidence of a cluster's ranks, verified against the signed policy.

Shared by the ranks (each verifies every other before any key or row moves) and by the
recipients (the release manifest lists every rank's evidence; a recipient re-verifies each one
offline). No torch here: recipients do not need it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cctrain.attestation.base import Evidence, VerifiedClaims
from cctrain.attestation.binding import cluster_report_data
from cctrain.attestation.pipeline import verify_for_policy

__all__ = ["RankReference", "verify_rank_evidence"]


class RankReference:
    """The policy as the attestation pipeline reads it for one rank. Rank 0 is held to
    ``attestation.reference`` (what every party accepted at Attest); the other ranks to
    ``cluster.measurements`` when the policy gives them (else the same reference)."""

    def __init__(self, policy: Any, rank: int) -> None:
        self._policy = policy
        self._rank = rank

    @property
    def attestation(self) -> Mapping[str, Any]:
        attestation: Mapping[str, Any] = self._policy.attestation
        return attestation

    def reference_for(self, platform: str) -> Mapping[str, Any]:
        ref = dict(self._policy.reference_for(platform))
        workers = self._policy.cluster.get("measurements")
        if self._rank != 0 and workers:
            ref["measurements"] = list(workers)
        return MappingProxyType(ref)


def verify_rank_evidence(
    evidence: Evidence,
    policy: Any,
    *,
    rank: int,
    joint_nonce: bytes,
    link_public_key: bytes,
    now: _dt.datetime | None = None,
) -> VerifiedClaims:
    """``evidence`` of rank ``rank``: genuine, of a measurement the policy accepts for that
    rank, and binding the policy, the cluster's joint nonce and the rank's link key. Raises
    :class:`~cctrain.errors.AttestationError` naming what failed."""
    return verify_for_policy(
        evidence,
        RankReference(policy, rank),
        expected_report_data=cluster_report_data(
            policy_digest=policy.digest,
            joint_nonce=joint_nonce,
            rank=rank,
            link_public_key=link_public_key,
        ),
        now=now,
        allow_simulated=bool(policy.attestation.get("allow_simulated")),
    )
