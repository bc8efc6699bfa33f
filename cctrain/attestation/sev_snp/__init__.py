"""AMD SEV-SNP attestation: parse → verify → validate, offline.

Importing this package registers the ``sev-snp`` platform.  The AMD roots
(ARK, ASK, ASVK for Milan, Genoa and Turin) ship under
``cctrain/attestation/roots/amd_*.pem`` and each ARK is pinned by the SHA-256
of its public key in :mod:`.certs`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform
from cctrain.attestation.sev_snp.abi import TcbVersion
from cctrain.attestation.sev_snp.certs import load_amd_roots, vcek_url
from cctrain.attestation.sev_snp.parse import (
    AttestationReport,
    SnpEvidence,
    parse,
    parse_report,
    sniff,
)
from cctrain.attestation.sev_snp.validate import REFERENCE_KEYS, validate
from cctrain.attestation.sev_snp.verify import clear_cache, verify

__all__ = [
    "AttestationReport",
    "SevSnpPlatform",
    "SnpEvidence",
    "TcbVersion",
    "clear_cache",
    "load_amd_roots",
    "parse",
    "parse_report",
    "sniff",
    "validate",
    "vcek_url",
    "verify",
]


class SevSnpPlatform:
    """The ``sev-snp`` plug-in: thin glue over the parse, verify, validate modules."""

    name = "sev-snp"
    reference_keys = REFERENCE_KEYS

    def sniff(self, raw: bytes) -> bool:
        return sniff(raw)

    def parse(self, raw: bytes) -> SnpEvidence:
        return parse(raw)

    def verify(
        self,
        report: Any,
        *,
        certificates: Sequence[x509.Certificate],
        collateral: Mapping[str, Any] | None,
        now: _dt.datetime,
        getter: CollateralGetter | None,
    ) -> VerifiedClaims:
        return verify(
            report, certificates=certificates, collateral=collateral, now=now, getter=getter
        )

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        return validate(claims, reference)


register_platform(SevSnpPlatform())
