"""Azure confidential VM (SEV-SNP) with its vTPM: parse → verify → validate, offline.

Importing this package registers the ``azure-snp-vtpm`` platform.  Evidence is
one JSON document (trustee ``az-snp-vtpm`` forms v0, v1, v2) carrying the HCL
report, the vTPM quote and the VCEK.  The SNP report is verified by the
``sev-snp`` code; the quote by HCLAkPub from the runtime data it binds.

On Azure the guest cannot choose the SNP report_data (the HCL fixes it to the
runtime-data hash); the verifier's nonce travels in the quote's extraData.
So ``claims.nonce`` is extraData, and ``claims.report_data`` is extraData when
it is exactly 64 bytes (a cctrain enclave puts its report_data binding there),
else empty.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from cctrain.attestation.azure_vtpm.parse import AzureVtpmEvidence, parse, sniff
from cctrain.attestation.azure_vtpm.tpm import QuoteAttest, parse_quote_attest
from cctrain.attestation.azure_vtpm.validate import REFERENCE_KEYS, validate
from cctrain.attestation.azure_vtpm.verify import verify
from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform

__all__ = [
    "AzureVtpmEvidence",
    "AzureVtpmPlatform",
    "QuoteAttest",
    "parse",
    "parse_quote_attest",
    "sniff",
    "validate",
    "verify",
]


class AzureVtpmPlatform:
    """The ``azure-snp-vtpm`` plug-in: thin glue over parse, verify, validate."""

    name = "azure-snp-vtpm"
    reference_keys = REFERENCE_KEYS

    def sniff(self, raw: bytes) -> bool:
        return sniff(raw)

    def parse(self, raw: bytes) -> AzureVtpmEvidence:
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


register_platform(AzureVtpmPlatform())
