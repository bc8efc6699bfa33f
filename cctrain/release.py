"""The sealed release: what the enclave signs, and how anyone verifies it offline.

A release is one manifest, signed by the enclave key, plus per recipient the
safetensors weights under a fresh AES-256-GCM key that is HPKE-sealed to the
recipient.  The manifest carries the evidence that binds the enclave keys to
the policy *and to this model* (its report_data nonce is derived from the model
hash), the receipt of every shard trained on, and the journal's signed
"uploads closed" entry that fixes that shard set.  Providers approve the manifest's
digest; the journal's "released" entry (the release record) then carries every
approval with the approving party's own signature.  So a verifier needs nothing
online: the manifest signature, the evidence chain to a pinned vendor root, the
policy digest, the shard set, the release record and its approvals, then
(recipients only) the unsealed weights' hash.
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
from cctrain.attestation.pipeline import verify_for_policy, verify_gpus_for_policy
from cctrain.crypto import hpke
from cctrain.dpcheck import release_problems
from cctrain.errors import AttestationError, ReleaseError
from cctrain.journal import (
    MANIFEST_TYPE,
    JournalError,
    manifest_problems,
    manifest_rows,
    parse_record,
    verify_approval,
)
from cctrain.policy import Policy
from cctrain.protocol import (
    JOURNAL_SIG_TAG,
    MANIFEST_SIG_TAG,
    release_key_info,
    verify_signature,
)
from cctrain.untrusted import loads_json

BUNDLE_TYPE = "cctrain-release-bundle/v2"
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
    #: Who approved this manifest (each signature checked); empty until a release record
    #: was verified with :func:`verify_release_record`.
    approved_by: tuple[str, ...] = ()
    #: The verified claims of the GPUs the manifest's evidence names (``attestation.gpu``).
    gpu_claims: tuple[VerifiedClaims, ...] = ()

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
        doc = loads_json(manifest)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("type") != MANIFEST_TYPE:
            raise ValueError(
                f"type {doc.get('type')!r}, want {MANIFEST_TYPE!r} (a release from an older "
                "cctrain cannot be verified by this one)"
            )
        signing_key = bytes.fromhex(doc["enclave"]["signing_key"])
        enclave_key = Ed25519PublicKey.from_public_bytes(signing_key)
        hpke_key = bytes.fromhex(doc["enclave"]["hpke_key"])
        tls_spki = bytes.fromhex(doc["enclave"]["tls_spki_sha256"])
        evidence = evidence_from_json(doc["evidence"])
        model_sha = bytes.fromhex(doc["model_sha256"])
        policy_digest = bytes.fromhex(doc["policy_digest"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"manifest is malformed: {exc}") from None
    if not verify_signature(enclave_key, MANIFEST_SIG_TAG, manifest, signature):
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
        claims = verify_for_policy(
            evidence,
            policy,
            expected_report_data=report_data_for(
                EnclaveIdentity(hpke_key, signing_key, tls_spki),
                policy_digest=policy.digest,
                nonce=release_nonce(model_sha),
            ),
            now=now,
            allow_simulated=evidence.platform == "simulated",
        )
    except AttestationError as exc:
        raise ReleaseError(f"the release's evidence does not hold: {exc}") from None
    if doc.get("evidence_sha256") != evidence_digest(evidence).hex():
        raise ReleaseError("manifest evidence digest does not match its evidence")
    gpus = verify_release_gpus(doc, claims, policy, now=now)
    verify_release_cluster(doc, claims, policy, now=now)
    # Compared as JSON text: in Python, true == 1 and 1.0 == 1.
    if json.dumps(doc.get("release_rule"), sort_keys=True) != json.dumps(
        release_rule(policy), sort_keys=True
    ):
        raise ReleaseError(
            f"the manifest's release rule {doc.get('release_rule')!r} is not the policy's "
            f"{release_rule(policy)!r}"
        )
    _receipts, problems = manifest_problems(doc, signing_key=signing_key, policy=policy)
    if problems:
        raise ReleaseError("the manifest's shard set does not hold: " + "; ".join(problems))
    problems = release_problems(doc, policy, party_rows=manifest_rows(doc))
    if problems:
        raise ReleaseError(
            "the manifest's privacy claims disagree with the policy: " + "; ".join(problems)
        )
    return VerifiedRelease(doc, hashlib.sha256(manifest).digest(), claims, gpu_claims=gpus)


def verify_release_gpus(
    doc: Mapping[str, Any],
    cpu: VerifiedClaims,
    policy: Policy,
    *,
    now: _dt.datetime | None = None,
) -> tuple[VerifiedClaims, ...]:
    """The GPUs of a manifest (``gpu_evidence``, ``gpu_evidence_sha256``), against the policy's
    ``attestation.gpu`` and bound to the release's verified CPU ``claims`` as Attest binds
    them; and a ``training_device`` on CUDA, off the simulated platform, only with at least one
    verified GPU: a GPU outside the TEE would have seen the data in clear."""
    try:
        raw = doc.get("gpu_evidence", [])
        digests = doc.get("gpu_evidence_sha256", [])
        if not isinstance(raw, list) or not isinstance(digests, list):
            raise TypeError("gpu_evidence and gpu_evidence_sha256 must be lists")
        evidence = [evidence_from_json(e) for e in raw]
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"manifest is malformed: {exc}") from None
    if digests != [evidence_digest(e).hex() for e in evidence]:
        raise ReleaseError("manifest GPU evidence digests do not match its GPU evidence")
    try:
        gpus = tuple(verify_gpus_for_policy(cpu, evidence, policy, now=now))
    except AttestationError as exc:
        raise ReleaseError(f"the release's GPU evidence does not hold: {exc}") from None
    device = doc.get("training_device", "cpu")
    if not isinstance(device, str):
        raise ReleaseError(f"manifest is malformed: training_device {device!r} is not a string")
    if device.startswith("cuda") and cpu.platform != "simulated" and not gpus:
        raise ReleaseError(
            f"training_device: got {device!r} with no verified GPU evidence, want an attested "
            "GPU (a GPU outside the TEE sees the data and the gradients in clear)"
        )
    return gpus


def verify_release_cluster(
    doc: Mapping[str, Any],
    release: VerifiedClaims,
    policy: Policy,
    *,
    now: _dt.datetime | None = None,
) -> tuple[VerifiedClaims, ...]:
    """The ranks that trained (``cluster``): with ``[cluster] ranks = N > 1`` the manifest
    lists every rank 0..N-1 once, each rank's evidence verifies against the policy's reference
    for that rank and binds the policy, the cluster's joint nonce and the rank's link key
    (:func:`cctrain.attestation.binding.cluster_report_data`), rank 0 is the enclave that
    signed the release (same platform and measurement), and a DP certificate lists the same
    evidence digests. One rank: no ``cluster`` entry."""
    from cctrain.attestation.cluster import verify_rank_evidence

    world = int(policy.cluster["ranks"])
    entry = doc.get("cluster")
    if world == 1:
        if entry is not None:
            raise ReleaseError("the manifest lists cluster ranks, but the policy has one rank")
        return ()
    try:
        if not isinstance(entry, Mapping):
            raise TypeError(f"the policy trains on {world} ranks: cluster is missing")
        joint = bytes.fromhex(entry["joint_nonce"])
        members = entry["members"]
        if entry["ranks"] != world or [m["rank"] for m in members] != list(range(world)):
            raise ValueError(f"cluster must list ranks 0..{world - 1} once each, in order")
        parsed = [
            (
                int(m["rank"]),
                bytes.fromhex(m["link_public_key"]),
                evidence_from_json(m["evidence"]),
                m["evidence_sha256"],
            )
            for m in members
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"manifest is malformed: {exc}") from None
    verified = []
    for rank, link_key, evidence, digest in parsed:
        if digest != evidence_digest(evidence).hex():
            raise ReleaseError(f"cluster rank {rank}: evidence digest does not match its evidence")
        if evidence.platform == "simulated" and release.platform != "simulated":
            raise ReleaseError(f"cluster rank {rank}: simulated evidence in a hardware release")
        try:
            claims = verify_rank_evidence(
                evidence,
                policy,
                rank=rank,
                joint_nonce=joint,
                link_public_key=link_key,
                now=now,
            )
        except (AttestationError, ValueError) as exc:
            raise ReleaseError(f"cluster rank {rank}'s evidence does not hold: {exc}") from None
        verified.append(claims)
    if (verified[0].platform, verified[0].measurement) != (release.platform, release.measurement):
        raise ReleaseError("cluster rank 0 is not the enclave that signed the release")
    cert = doc.get("dp_certificate")
    if isinstance(cert, Mapping) and cert.get("rank_evidence_sha256") != [p[3] for p in parsed]:
        raise ReleaseError(
            "the DP certificate's rank_evidence_sha256 does not list the cluster's evidence"
        )
    return tuple(verified)


def release_rule(policy: Policy) -> dict[str, Any]:
    """The release rule a manifest states (and every verifier checks against the policy):
    whose approvals it needs, and how many releases of the policy may exist at most. Each
    approval carries its party's count of releases of the policy (``release_index``)."""
    return {
        "approvals_required_from": list(policy.release["approvals_required_from"]),
        "max_releases": policy.max_releases,
    }


def verify_release_record(
    release: VerifiedRelease, record: bytes, *, policy: Policy
) -> VerifiedRelease:
    """Check the journal's "released" entry for this manifest: signed by the manifest's
    enclave key, for this policy, and carrying a valid approval signed by every party the
    policy's release rule names. Return the release with ``approved_by`` filled in."""
    enclave_key = Ed25519PublicKey.from_public_bytes(
        bytes.fromhex(release.manifest["enclave"]["signing_key"])
    )
    try:
        rec = parse_record(record, position=0)
    except JournalError:
        raise ReleaseError("the release record is missing or malformed") from None
    if not verify_signature(enclave_key, JOURNAL_SIG_TAG, rec.entry_bytes, rec.signature):
        raise ReleaseError("the release record is not signed by the manifest's enclave key")
    if rec.kind != "released" or rec.entry.policy_digest != policy.digest:
        raise ReleaseError("the release record is not a release entry of this policy")
    rel = rec.entry.released
    if rel.manifest_sha256 != release.manifest_sha256:
        raise ReleaseError("the release record releases another manifest")
    approved: list[str] = []
    for signed in rel.approvals:
        party, problems = verify_approval(
            signed, policy=policy, manifest_sha256=release.manifest_sha256
        )
        if problems:
            raise ReleaseError(
                f"approval by {party or '?'!r} does not hold: " + "; ".join(problems)
            )
        if party in approved:
            raise ReleaseError(f"{party!r} approves twice")
        approved.append(party)
    missing = [p for p in policy.release["approvals_required_from"] if p not in approved]
    if missing:
        raise ReleaseError(f"approval required from {', '.join(missing)} is missing")
    return VerifiedRelease(
        release.manifest,
        release.manifest_sha256,
        release.claims,
        tuple(approved),
        gpu_claims=release.gpu_claims,
    )


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
