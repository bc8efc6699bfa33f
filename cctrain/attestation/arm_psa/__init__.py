"""Arm PSA initial attestation tokens (a TrustZone-M device's IAT): parse → verify → validate.

Verification only: no enclave runs on a microcontroller; this is how a PSA device (TF-M)
proves what firmware it runs. The token is a tag-18 COSE_Sign1 signed ES256 by the device's
Initial Attestation Key (IAK); there is no certificate chain, so the caller supplies the
IAK public keys it trusts (``trust_keys``: ``--key`` or the policy's reference value), and
verification does not depend on the time. See ``docs/attestation-arm-psa.md``.

Importing this package registers the ``arm-psa`` platform.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cctrain.attestation.arm_psa import parse as _parse
from cctrain.attestation.arm_psa import validate as _validate
from cctrain.attestation.arm_psa import verify as _verify
from cctrain.attestation.arm_psa.parse import PsaClaims, PsaToken, SwComponent, lifecycle_name
from cctrain.attestation.arm_psa.verify import composite_measurement, instance_id_for
from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform
from cctrain.errors import EvidenceParseError


class ArmPsaPlatform:
    """The ``arm-psa`` platform plug-in (see :class:`cctrain.attestation.base.KeyAnchoredPlatform`)."""

    name = "arm-psa"
    reference_keys = _validate.REFERENCE_KEYS
    trust_keys = True

    def sniff(self, raw: bytes) -> bool:
        return _parse.sniff(raw)

    def parse(self, raw: bytes) -> PsaToken:
        return _parse.parse(raw)

    def verify(
        self,
        report: Any,
        *,
        certificates: Sequence[x509.Certificate] = (),
        collateral: Mapping[str, Any] | None = None,
        now: _dt.datetime | None = None,
        getter: CollateralGetter | None = None,
        trust_keys: Sequence[ec.EllipticCurvePublicKey] = (),
    ) -> VerifiedClaims:
        # No certificates, no collateral, no clock: an IAK is trusted as a key, not a chain.
        del collateral, now, getter
        if certificates:
            raise EvidenceParseError(
                "arm-psa evidence chains to an IAK public key (--key), not to certificates"
            )
        if not isinstance(report, PsaToken):
            raise EvidenceParseError("arm-psa: verify takes a parsed PsaToken")
        return _verify.verify(report, trust_keys=trust_keys)

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        return _validate.validate(claims, reference)


PLATFORM = register_platform(ArmPsaPlatform())

__all__ = [
    "PLATFORM",
    "ArmPsaPlatform",
    "PsaClaims",
    "PsaToken",
    "SwComponent",
    "composite_measurement",
    "instance_id_for",
    "lifecycle_name",
]
