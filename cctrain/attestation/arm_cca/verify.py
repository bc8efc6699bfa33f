"""Verify a parsed CCA token: the platform token by a trusted CPAK, the realm token by its
RAK, and the binding between them. No certificates are involved, so nothing depends on time.

* Platform token: COSE_Sign1 over the platform claims, by one of the caller's trusted CPAKs
  (its protected-header algorithm, ES384 for every CCA platform, must match the key's curve).
* Realm token: COSE_Sign1 by the RAK the realm token itself carries (claim 44237).
* Binding: the platform challenge (claim 10) is ``H(claim 44237)``, H named by realm claim
  44240, over the claim's bytes exactly as the realm token carries them: the 97-byte raw point
  in the legacy profile, the encoded COSE_Key (not its point) in the 2023+ profiles. Without
  it a genuine platform token could be paired with any realm token.

The platform instance id is also compared with the CPAK (``0x01 || SHA-256(CPAK point)``,
as RSE/HES derives it), and the outcome recorded as ``instance_id_binding``; TF-A's FVP
mock platform token carries a placeholder instance id, so a mismatch is not a verification
failure (validation can require it: ``require_instance_id_binding``).

Every failure is collected into one :class:`~cctrain.errors.EvidenceVerificationError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from cctrain.attestation.arm_cca.parse import (
    LIFECYCLE_SECURED,
    CcaToken,
    PlatformClaims,
    PlatformToken,
    RealmClaims,
    parse_platform_token,
)
from cctrain.attestation.base import VerifiedClaims
from cctrain.attestation.cose import point_bytes
from cctrain.errors import EvidenceVerificationError

PLATFORM = "arm-cca"
SIGNER = "cca-cpak"
_HASHES = {"sha-256": hashlib.sha256, "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}

NO_CPAK = (
    "platform token: no CPAK given: a CCA token verifies only against a trusted CPAK public "
    "key (cctrain attest verify --key FILE, or the policy's reference value trust_keys)"
)


def instance_id_binding(instance_id: bytes, cpak: ec.EllipticCurvePublicKey) -> str:
    """``ueid-cpak``: 0x01 || SHA-256(CPAK point); ``cpak-hash-without-ueid-type``: the bare
    hash (the older Islet HES build); ``not-cpak-derived`` otherwise (TF-A's FVP mock)."""
    digest = hashlib.sha256(point_bytes(cpak)).digest()
    if instance_id == b"\x01" + digest:
        return "ueid-cpak"
    if instance_id == digest:
        return "cpak-hash-without-ueid-type"
    return "not-cpak-derived"


def _verify_platform(
    token: PlatformToken, trust_keys: Sequence[ec.EllipticCurvePublicKey], errors: list[str]
) -> ec.EllipticCurvePublicKey | None:
    if not trust_keys:
        errors.append(NO_CPAK)
        return None
    reasons: list[str] = []
    for key in trust_keys:
        why = token.sign1.verify(key)
        if why is None:
            return key
        reasons.append(why)
    unique = sorted(set(reasons))
    errors.append(
        f"platform token: the {token.sign1.alg_name} signature verifies with none of the "
        f"{len(trust_keys)} trusted CPAK(s) ({'; '.join(unique)})"
    )
    return None


def _sw_json(claims: PlatformClaims) -> list[dict[str, Any]]:
    return [
        {
            "type": c.type,
            "measurement": c.measurement,
            "signer_id": c.signer_id,
            "version": c.version,
            "hash_alg": c.hash_alg,
        }
        for c in claims.sw_components
    ]


def platform_json(claims: PlatformClaims, binding: str) -> dict[str, Any]:
    return {
        "profile": claims.profile,
        "implementation_id": claims.implementation_id,
        "instance_id": claims.instance_id,
        "instance_id_binding": binding,
        "lifecycle": claims.lifecycle,
        "lifecycle_state": claims.lifecycle_state,
        "config": claims.config,
        "challenge": claims.challenge,
        "hash_alg": claims.hash_alg,
        "verification_service": claims.verification_service,
        "sw_components": _sw_json(claims),
    }


def realm_json(claims: RealmClaims) -> dict[str, Any]:
    return {
        "profile": claims.profile,
        "challenge": claims.challenge,
        "personalization": claims.personalization,
        "rim": claims.rim,
        "rems": list(claims.rems),
        "hash_alg": claims.hash_alg,
        "rak": claims.rak_claim,
        "rak_hash_alg": claims.rak_hash_alg,
        "instance_id": claims.instance_id,
        "mec_policy": claims.mec_policy,
    }


def verify(token: CcaToken, *, trust_keys: Sequence[ec.EllipticCurvePublicKey]) -> VerifiedClaims:
    """Verify ``token`` against the trusted CPAKs; every failure in one error."""
    errors: list[str] = []
    cpak = _verify_platform(token.platform, trust_keys, errors)
    realm = token.realm
    why = token.realm_sign1.verify(realm.rak)
    if why is not None:
        errors.append(f"realm token: {why} with the RAK of claim 44237")
    expected = _HASHES[realm.rak_hash_alg](realm.rak_claim).digest()
    challenge = token.platform.claims.challenge
    if challenge != expected:
        errors.append(
            f"binding: platform challenge {challenge.hex()} is not {realm.rak_hash_alg}(realm "
            f"RAK claim 44237) {expected.hex()}: the realm token was not issued on this "
            "platform (or for this RAK)"
        )
    if errors or cpak is None:
        raise EvidenceVerificationError(errors)
    plat = token.platform.claims
    binding = instance_id_binding(plat.instance_id, cpak)
    return VerifiedClaims(
        platform=PLATFORM,
        measurement=realm.rim,
        report_data=realm.challenge,
        nonce=realm.challenge,
        debug=plat.lifecycle_state != LIFECYCLE_SECURED,
        signer=SIGNER,
        chip_id=plat.instance_id,
        extra={
            "token_form": token.form,
            "cpak": point_bytes(cpak),
            "claim_problems": list(plat.problems),
            "platform": platform_json(plat, binding),
            "realm": realm_json(realm),
        },
    )


@dataclass(frozen=True)
class VerifiedPlatformToken:
    """A platform token alone whose signature verified with a trusted CPAK. It says what
    firmware a platform runs, nothing about any realm; it is not :class:`VerifiedClaims`, so
    it cannot be validated as an enclave's evidence."""

    claims: PlatformClaims
    cpak: ec.EllipticCurvePublicKey
    instance_id_binding: str

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": platform_json(self.claims, self.instance_id_binding),
            "claim_problems": list(self.claims.problems),
            "cpak": point_bytes(self.cpak),
        }


def verify_platform_token(
    token: PlatformToken | bytes, *, trust_keys: Sequence[ec.EllipticCurvePublicKey]
) -> VerifiedPlatformToken:
    """Verify a CCA platform token on its own (``rsictl verify-platform``)."""
    parsed = parse_platform_token(token) if isinstance(token, bytes) else token
    errors: list[str] = []
    cpak = _verify_platform(parsed, trust_keys, errors)
    if cpak is None:
        raise EvidenceVerificationError(errors)
    return VerifiedPlatformToken(
        parsed.claims, cpak, instance_id_binding(parsed.claims.instance_id, cpak)
    )
