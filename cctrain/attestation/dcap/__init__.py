"""Intel DCAP attestation: TDX (quote v4/v5) and SGX (quote v3), verified offline.

Registers two platforms, ``tdx`` and ``sgx``.  Stages live in their own
modules: :mod:`.parse` (bytes → typed quote), :mod:`.verify` (signatures, PCK
chain to the pinned Intel SGX Root CA, collateral), :mod:`.validate`
(reference values), with :mod:`.collateral`, :mod:`.pck` and :mod:`.tcb`
underneath.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform
from cctrain.attestation.dcap.collateral import load_collateral_path
from cctrain.attestation.dcap.parse import Quote, parse_quote, sniff_quote
from cctrain.attestation.dcap.validate import (
    SGX_REFERENCE_KEYS,
    TDX_REFERENCE_KEYS,
    validate_sgx,
    validate_tdx,
)
from cctrain.attestation.dcap.verify import verify_quote
from cctrain.errors import EvidenceVerificationError

__all__ = ["SGX", "TDX", "DcapPlatform", "Quote", "load_collateral_path", "parse_quote"]


class DcapPlatform:
    """One DCAP TEE (``tdx`` or ``sgx``) as a :class:`~cctrain.attestation.base.Platform`."""

    name: str
    reference_keys: frozenset[str]

    def __init__(self, *, name: str, reference_keys: frozenset[str]) -> None:
        self.name = name
        self.reference_keys = reference_keys

    def __repr__(self) -> str:
        return f"DcapPlatform(name={self.name!r})"

    def sniff(self, raw: bytes) -> bool:
        return sniff_quote(raw) == self.name

    def parse(self, raw: bytes) -> Quote:
        return parse_quote(raw, tee=self.name)

    def verify(
        self,
        report: Any,
        *,
        certificates: Sequence[x509.Certificate],
        collateral: Mapping[str, Any] | None,
        now: _dt.datetime,
        getter: CollateralGetter | None,
    ) -> VerifiedClaims:
        # The PCK chain travels inside the quote; ``certificates`` is not used by DCAP.
        if not isinstance(report, Quote):
            raise EvidenceVerificationError([f"{self.name}: not a parsed DCAP quote"])
        want_version = (3,) if self.name == "sgx" else (4, 5)
        if report.version not in want_version:
            raise EvidenceVerificationError(
                [f"{self.name}: quote version {report.version} is not {want_version}"]
            )
        return verify_quote(report, tee=self.name, collateral=collateral, now=now, getter=getter)

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        if claims.platform != self.name:
            return [f"platform: got {claims.platform!r}, want {self.name!r}"]
        if self.name == "tdx":
            return validate_tdx(claims, reference)
        return validate_sgx(claims, reference)


TDX = register_platform(DcapPlatform(name="tdx", reference_keys=TDX_REFERENCE_KEYS))
SGX = register_platform(DcapPlatform(name="sgx", reference_keys=SGX_REFERENCE_KEYS))
