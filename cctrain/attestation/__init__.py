"""Attestation: parse → verify → validate, one plug-in per platform."""

from cctrain.attestation.base import Evidence, VerifiedClaims, get_platform, registered_platforms
from cctrain.attestation.pipeline import detect_platform, validate_claims, verify_evidence

__all__ = [
    "Evidence",
    "VerifiedClaims",
    "detect_platform",
    "get_platform",
    "registered_platforms",
    "validate_claims",
    "verify_evidence",
]
