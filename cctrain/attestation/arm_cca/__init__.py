"""Arm CCA attestation (a realm on an Arm CCA platform): parse → verify → validate, offline.

Importing this package registers the ``arm-cca`` platform. Its evidence chains to a public
key, not a certificate: the platform's CPAK, which the caller trusts (``cctrain attest
verify --key CPAK``, or the policy's reference value ``trust_keys``). No CPAK ships with
cctrain: every public one is a test key whose private half is public too.

* :mod:`.parse`: the tag-399 token or tag-907 CMW collection; every claim type-checked.
* :mod:`.verify`: platform token by a trusted CPAK, realm token by its RAK, and the binding
  (platform challenge == H(realm RAK claim)). ``measurement`` is the realm initial
  measurement (RIM); ``report_data`` and ``nonce`` are the 64-byte realm challenge.
* :mod:`.validate`: REMs, personalization value, firmware components, implementation id,
  lifecycle.

A lone platform token is refused by :func:`parse` (it attests no realm); use
:func:`verify_platform_token` to check one.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cctrain.attestation.arm_cca.parse import (
    CcaToken,
    PlatformClaims,
    PlatformToken,
    RealmClaims,
    SwComponent,
    parse,
    parse_platform_token,
    sniff,
)
from cctrain.attestation.arm_cca.validate import REFERENCE_KEYS, validate
from cctrain.attestation.arm_cca.verify import (
    VerifiedPlatformToken,
    verify,
    verify_platform_token,
)
from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform
from cctrain.errors import EvidenceParseError

__all__ = [
    "ArmCcaPlatform",
    "CcaToken",
    "PlatformClaims",
    "PlatformToken",
    "RealmClaims",
    "SwComponent",
    "VerifiedPlatformToken",
    "parse",
    "parse_platform_token",
    "sniff",
    "validate",
    "verify",
    "verify_platform_token",
]


class ArmCcaPlatform:
    """The ``arm-cca`` plug-in: thin glue over the parse, verify, validate modules."""

    name = "arm-cca"
    reference_keys = REFERENCE_KEYS
    trust_keys = True

    def sniff(self, raw: bytes) -> bool:
        return sniff(raw)

    def parse(self, raw: bytes) -> CcaToken:
        return parse(raw)

    def verify(
        self,
        report: Any,
        *,
        certificates: Sequence[x509.Certificate],
        collateral: Mapping[str, Any] | None,
        now: _dt.datetime,
        getter: CollateralGetter | None,
        trust_keys: Sequence[ec.EllipticCurvePublicKey] = (),
    ) -> VerifiedClaims:
        if not isinstance(report, CcaToken):
            raise EvidenceParseError("arm-cca: verify takes a parsed CCA token")
        if certificates:
            raise EvidenceParseError(
                "arm-cca: a CCA token chains to a CPAK, not to certificates (use --key)"
            )
        return verify(report, trust_keys=trust_keys)

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        return validate(claims, reference)


register_platform(ArmCcaPlatform())
