"""The sealed release: what the enclave signs, and how anyone verifies it offline.

A release is one manifest, signed by the enclave key, plus per recipient the
safetensors weights under a fresh AES-256-GCM key that is HPKE-sealed to the
recipient.  The manifest carries the evidence that binds the enclave keys to
the policy *and to this model* (its report_data nonce is derived from the model
hash), so a verifier needs nothing online: the manifest signature, the
evidence chain to a pinned vendor root, the policy digest, then (recipients
only) the unsealed weights' hash.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cctrain.attestation.base import Evidence, VerifiedClaims
from cctrain.attestation.binding import EnclaveIdentity, report_data_for
from cctrain.attestation.pipeline import validate_claims, verify_evidence
from cctrain.crypto import hpke
from cctrain.errors import AttestationError, ReleaseError
from cctrain.policy import Policy
from cctrain.protocol import (
    MANIFEST_SIG_TAG,
    RECEIPT_SIG_TAG,
    release_key_info,
    verify_signature,
)

MANIFEST_TYPE = "cctrain-release-manifest/v1"
RELEASE_NONCE_TAG = b"cctrain/release-nonce/v1\x00"


def release_nonce(model_sha256: bytes) -> bytes:
    """The evidence nonce of a release: binds the hardware-signed report to this model."""
    return hashlib.sha256(RELEASE_NONCE_TAG + model_sha256).digest()


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def evidence_to_json(ev: Evidence) -> dict[str, Any]:
    return {
        "platform": ev.platform,
        "report": b64(ev.report),
        "certificates": [b64(c) for c in ev.certificates],
        "collateral": ev.collateral,
    }


def evidence_from_json(doc: Mapping[str, Any]) -> Evidence:
    return Evidence(
        platform=str(doc["platform"]),
        report=unb64(doc["report"]),
        certificates=tuple(unb64(c) for c in doc["certificates"]),
        collateral=doc.get("collateral"),
    )


def evidence_digest(ev: Evidence) -> bytes:
    h = hashlib.sha256(b"cctrain/evidence/v1\x00")
    for part in (ev.platform.encode(), ev.report, *ev.certificates):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def seal_weights(
    weights: bytes,
    *,
    recipient_key: X25519PublicKey,
    recipient_id: str,
    policy_digest: bytes,
    manifest_sha256: bytes,
) -> tuple[bytes, bytes]:
    """(encapsulated key, sealed weights) for one recipient, under a fresh key."""
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ad = manifest_sha256 + recipient_id.encode()
    sealed = nonce + AESGCM(key).encrypt(nonce, weights, ad)
    enc = hpke.seal(
        recipient_key, key, info=release_key_info(policy_digest, recipient_id, manifest_sha256)
    )
    return enc, sealed


@dataclass(frozen=True)
class VerifiedRelease:
    manifest: dict[str, Any]
    manifest_sha256: bytes
    claims: VerifiedClaims

    @property
    def model_sha256(self) -> bytes:
        return bytes.fromhex(self.manifest["model_sha256"])

    @property
    def dp_certificate(self) -> dict[str, Any] | None:
        cert: dict[str, Any] | None = self.manifest.get("dp_certificate")
        return cert


def verify_manifest(
    manifest: bytes,
    signature: bytes,
    *,
    policy: Policy,
    allow_simulated: bool = False,
    now: _dt.datetime | None = None,
) -> VerifiedRelease:
    """Signature → evidence → policy → receipts; raise ReleaseError naming what failed."""
    try:
        doc = json.loads(manifest)
        if doc.get("type") != MANIFEST_TYPE:
            raise ValueError(f"type {doc.get('type')!r}")
        signing_key = bytes.fromhex(doc["enclave"]["signing_key"])
        hpke_key = bytes.fromhex(doc["enclave"]["hpke_key"])
        tls_spki = bytes.fromhex(doc["enclave"]["tls_spki_sha256"])
        evidence = evidence_from_json(doc["evidence"])
        model_sha = bytes.fromhex(doc["model_sha256"])
        policy_digest = bytes.fromhex(doc["policy_digest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"manifest is malformed: {exc}") from None
    if not verify_signature(
        Ed25519PublicKey.from_public_bytes(signing_key), MANIFEST_SIG_TAG, manifest, signature
    ):
        raise ReleaseError("manifest signature does not verify with the enclave key it names")
    if policy_digest != policy.digest:
        raise ReleaseError(
            f"manifest is for policy {policy_digest.hex()[:16]}…, ours is {policy.digest.hex()[:16]}…"
        )
    if evidence.platform == "simulated" and not (
        allow_simulated and policy.attestation["allow_simulated"]
    ):
        raise ReleaseError(
            "the release's evidence is simulated; refusing without --allow-simulated"
        )
    try:
        claims = verify_evidence(
            evidence, now=now, allow_simulated=evidence.platform == "simulated"
        )
        validate_claims(
            claims,
            accepted_platforms=list(policy.attestation["platforms"]),
            reference=policy.reference_for(claims.platform),
            allow_debug=bool(policy.attestation["allow_debug"]),
            expected_report_data=report_data_for(
                EnclaveIdentity(hpke_key, signing_key, tls_spki),
                policy_digest=policy.digest,
                nonce=release_nonce(model_sha),
            ),
        )
    except AttestationError as exc:
        raise ReleaseError(f"the release's evidence does not hold: {exc}") from None
    if doc.get("evidence_sha256") != evidence_digest(evidence).hex():
        raise ReleaseError("manifest evidence digest does not match its evidence")
    enclave_key = Ed25519PublicKey.from_public_bytes(signing_key)
    for i, r in enumerate(doc.get("receipts", [])):
        if not verify_signature(
            enclave_key, RECEIPT_SIG_TAG, unb64(r["body"]), unb64(r["signature"])
        ):
            raise ReleaseError(f"receipt {i} in the manifest is not signed by the enclave")
    return VerifiedRelease(doc, hashlib.sha256(manifest).digest(), claims)


def unseal_weights(
    release: VerifiedRelease,
    *,
    recipient_id: str,
    recipient_key: X25519PrivateKey,
    encapsulated_key: bytes,
    sealed_weights: bytes,
    policy: Policy,
) -> bytes:
    """Open the weights sealed to this recipient and check them against the manifest hash."""
    try:
        key = hpke.open_sealed(
            recipient_key,
            encapsulated_key,
            info=release_key_info(policy.digest, recipient_id, release.manifest_sha256),
        )
    except hpke.HpkeError:
        raise ReleaseError(
            "the release is not sealed to this recipient key (or to another manifest)"
        ) from None
    try:
        weights = AESGCM(key).decrypt(
            sealed_weights[:12],
            sealed_weights[12:],
            release.manifest_sha256 + recipient_id.encode(),
        )
    except (InvalidTag, ValueError):
        raise ReleaseError("sealed weights do not authenticate (tampered)") from None
    if hashlib.sha256(weights).digest() != release.model_sha256:
        raise ReleaseError("model hash does not match the manifest")
    return weights
