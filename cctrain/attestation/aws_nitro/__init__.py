"""AWS Nitro Enclaves attestation documents: parse → verify → validate, offline.

Importing this package registers the ``aws-nitro`` platform. The document is what the
Nitro Secure Module (``/dev/nsm``) returns: an untagged COSE_Sign1 (ES384) whose payload
carries the PCRs, the signing certificate and its CA bundle. The chain ends at AWS Nitro
Enclaves Root-G1, shipped as ``cctrain/attestation/roots/aws_nitro_root_g1.pem`` and
pinned by its SHA-256 fingerprint in :mod:`.verify`. Claims and binding are documented in
:mod:`.verify`, reference values in :mod:`.validate`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from cctrain.attestation.aws_nitro.parse import NitroDocument, parse, parse_document, sniff
from cctrain.attestation.aws_nitro.validate import REFERENCE_KEYS, validate
from cctrain.attestation.aws_nitro.verify import NitroClaims, pinned_root, verify
from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform

__all__ = [
    "AwsNitroPlatform",
    "NitroClaims",
    "NitroDocument",
    "parse",
    "parse_document",
    "pinned_root",
    "sniff",
    "validate",
    "verify",
]


class AwsNitroPlatform:
    """The ``aws-nitro`` plug-in: thin glue over the parse, verify, validate modules."""

    name = "aws-nitro"
    reference_keys = REFERENCE_KEYS

    def sniff(self, raw: bytes) -> bool:
        return sniff(raw)

    def parse(self, raw: bytes) -> NitroDocument:
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
        return verify(report, certificates=certificates, now=now)

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        return validate(claims, reference)


register_platform(AwsNitroPlatform())
