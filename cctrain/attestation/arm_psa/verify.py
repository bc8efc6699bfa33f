"""Verify a parsed PSA token: the ES256 signature by a trusted IAK, and the instance id.

A PSA device has no certificate chain: what the relying party trusts is the device's
Initial Attestation Key (IAK) public key, provisioned out of band (``--key``, or the
policy's reference value ``trust_keys``). The token must verify under one of those keys,
and its instance id must be that key's: 0x01 (UEID type RAND) || SHA-256 of the key's
uncompressed point, which is how TF-M derives it. Nothing here depends on the time.

``measurement`` in the verified claims is :func:`composite_measurement`: one SHA-256 a
policy can pin with the common ``measurements`` list. Its per-component form is
``claims.sw_components`` (validated by the ``sw_components`` reference value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from cctrain.attestation.arm_psa.parse import PsaToken, SwComponent
from cctrain.attestation.base import VerifiedClaims
from cctrain.attestation.cose import point_bytes
from cctrain.errors import EvidenceVerificationError

PLATFORM_NAME = "arm-psa"
SIGNER = "psa-iak"
ES256 = -7


def instance_id_for(key: ec.EllipticCurvePublicKey) -> bytes:
    """The PSA instance id of an IAK: 0x01 || SHA-256(uncompressed point)."""
    return b"\x01" + hashlib.sha256(point_bytes(key)).digest()


def composite_measurement(components: Sequence[SwComponent]) -> bytes:
    """SHA-256 over the canonical CBOR (RFC 8949 §4.2.1) of the array of
    ``[measurement-type or null, measurement-value]`` pairs, sorted by their encodings.

    What runs is the set of measured images, so the digest ignores the order the firmware
    listed them in, and the signer ids, versions and descriptions (checked per component
    through ``sw_components``). A token asserting psa-no-sw-measurements gives the digest
    of the empty array, which no image set shares.
    """
    pairs = sorted(
        ([c.type, c.measurement] for c in components),
        key=lambda pair: bytes(cbor2.dumps(pair, canonical=True)),
    )
    return hashlib.sha256(cbor2.dumps(pairs, canonical=True)).digest()


def _component_json(c: SwComponent) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": c.type,
        "version": c.version,
        "signer_id": c.signer_id,
        "measurement": c.measurement,
        "measurement_desc": c.measurement_desc,
    }
    if c.epoch is not None:
        out["epoch"] = c.epoch
    return out


def verify(
    token: PsaToken, *, trust_keys: Sequence[ec.EllipticCurvePublicKey] = ()
) -> VerifiedClaims:
    """The token's claims, once the signature by a key in ``trust_keys`` and the instance id
    check out; EvidenceVerificationError listing every failure otherwise."""
    sign1 = token.sign1
    if sign1.alg != ES256:
        raise EvidenceVerificationError(
            [f"signature algorithm {sign1.alg_name}: want ES256 (a PSA IAK is a P-256 key)"]
        )
    if not trust_keys:
        raise EvidenceVerificationError(
            [
                "no trusted IAK: a PSA token verifies only against the device's IAK public key "
                "(pass --key IAK.pem, or set the policy's trust_keys)"
            ]
        )
    problems: list[str] = []
    signer: ec.EllipticCurvePublicKey | None = None
    for i, key in enumerate(trust_keys):
        why = sign1.verify(key)
        if why is None:
            signer = key
            break
        problems.append(f"trust key {i + 1}: {why}")
    if signer is None:
        raise EvidenceVerificationError(
            [f"no trusted IAK signed this token ({len(trust_keys)} tried)", *problems]
        )
    c = token.claims
    want_id = instance_id_for(signer)
    if c.instance_id != want_id:
        raise EvidenceVerificationError(
            [
                f"psa-instance-id: got {c.instance_id.hex()}, want {want_id.hex()} "
                "(0x01 || SHA-256 of the IAK that signed the token)"
            ]
        )
    lifecycle = {"value": c.security_lifecycle, "name": c.lifecycle_name}
    extra: dict[str, Any] = {
        "profile": c.profile,
        "implementation_id": c.implementation_id,
        "instance_id": c.instance_id,
        "lifecycle": lifecycle,
        "client_id": c.client_id,
        "boot_seed": c.boot_seed,
        "certification_reference": c.certification_reference,
        "sw_components": [_component_json(x) for x in c.sw_components],
        "no_sw_measurements": c.no_sw_measurements,
        "verification_service": c.verification_service,
        "challenge": c.challenge,
        "iak": point_bytes(signer),
    }
    # The kid (an unprotected header in old TF-M tokens) is not signed: it stays on the
    # PsaToken and out of the verified claims.
    return VerifiedClaims(
        platform=PLATFORM_NAME,
        measurement=composite_measurement(c.sw_components),
        report_data=c.challenge,
        debug=c.lifecycle_name != "secured",
        signer=SIGNER,
        chip_id=c.instance_id,
        extra=extra,
        nonce=c.challenge,
    )
