"""One pipeline for every platform: parse → verify → validate.

Production callers use :func:`verify_evidence` then :func:`validate_claims`.
The simulated platform is reachable only with ``allow_simulated=True``; its
root is never trusted otherwise.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning

from cctrain.attestation.base import (
    CollateralGetter,
    Evidence,
    VerifiedClaims,
    get_platform,
    registered_platforms,
    utcnow,
)
from cctrain.attestation.cose import load_anchor_key
from cctrain.errors import (
    EvidenceParseError,
    EvidenceValidationError,
    EvidenceVerificationError,
)

log = logging.getLogger("cctrain.attestation")

SIMULATED_WARNING = (
    "SIMULATED TEE: this evidence is signed by cctrain's simulated vendor key, "
    "whose private key is public. It proves NOTHING about confidentiality or "
    "integrity. Use only for local development and tests."
)


def load_certificates(blobs: Sequence[bytes]) -> list[x509.Certificate]:
    """DER or PEM (possibly several PEM blocks per blob) into certificates."""
    certs: list[x509.Certificate] = []
    for blob in blobs:
        try:
            # AMD VCEKs carry serial number 0, which cryptography deprecates; they are
            # what the hardware vendor issues, so accept them quietly.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                if b"-----BEGIN" in blob:
                    certs.extend(x509.load_pem_x509_certificates(blob))
                else:
                    certs.append(x509.load_der_x509_certificate(blob))
        except ValueError as exc:
            raise EvidenceParseError(f"certificate cannot be parsed: {exc}") from None
    return certs


def detect_platform(raw: bytes) -> str:
    """Guess the platform of raw evidence bytes (``--platform auto``)."""
    for name in registered_platforms():
        if get_platform(name).sniff(raw):
            return name
    raise EvidenceParseError("cannot tell the platform of this evidence; pass --platform")


def verify_evidence(
    evidence: Evidence,
    *,
    now: _dt.datetime | None = None,
    getter: CollateralGetter | None = None,
    allow_simulated: bool = False,
    trust_keys: Sequence[bytes] = (),
) -> VerifiedClaims:
    """Parse and verify ``evidence`` at ``now`` (default: the current time).

    ``trust_keys`` are the public keys a key-anchored platform (Arm CCA, Arm PSA) chains to:
    PEM/DER SubjectPublicKeyInfo or raw uncompressed points. Raises EvidenceParseError or
    EvidenceVerificationError.  Simulated evidence is refused unless ``allow_simulated`` is
    true, and then logged loudly.
    """
    if evidence.platform == "simulated" and not allow_simulated:
        raise EvidenceVerificationError(
            ["simulated evidence is not trusted (the policy and the caller must both allow it)"]
        )
    platform = get_platform(evidence.platform)
    report = platform.parse(evidence.report)
    certs = load_certificates(evidence.certificates)
    kwargs: dict[str, Any] = {}
    if getattr(platform, "trust_keys", False):
        kwargs["trust_keys"] = [
            load_anchor_key(k, f"trust key {i + 1}") for i, k in enumerate(trust_keys)
        ]
    elif trust_keys:
        raise EvidenceParseError(
            f"{evidence.platform} evidence chains to certificates, not to a trust key: --key "
            "is for arm-cca and arm-psa"
        )
    try:
        claims = platform.verify(
            report,
            certificates=certs,
            collateral=evidence.collateral,
            now=now if now is not None else utcnow(),
            getter=getter,
            **kwargs,
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography decodes certificate fields lazily: a corrupt certificate carried
        # inside the evidence surfaces only now. It is unparseable input, not a crash.
        raise EvidenceParseError(
            f"evidence cannot be parsed: malformed embedded certificate: {exc}"
        ) from None
    if claims.platform == "simulated":
        log.warning(SIMULATED_WARNING)
    return claims


class AttestationPolicy(Protocol):
    """What :func:`verify_for_policy` reads of a policy (``cctrain.policy.Policy``)."""

    @property
    def attestation(self) -> Mapping[str, Any]: ...

    def reference_for(self, platform: str) -> Mapping[str, Any]: ...


def verify_for_policy(
    evidence: Evidence,
    policy: AttestationPolicy,
    *,
    expected_report_data: bytes,
    now: _dt.datetime | None = None,
    getter: CollateralGetter | None = None,
    allow_simulated: bool = False,
) -> VerifiedClaims:
    """:func:`verify_evidence`, then :func:`validate_claims` against the policy's attestation
    requirements (platforms, reference values, debug) and the expected report data. A
    key-anchored platform's trust keys are the policy's reference value ``trust_keys``."""
    keys = policy.reference_for(evidence.platform).get("trust_keys") or ()
    claims = verify_evidence(
        evidence,
        now=now,
        getter=getter,
        allow_simulated=allow_simulated,
        trust_keys=[_key_bytes(k) for k in keys],
    )
    validate_claims(
        claims,
        accepted_platforms=list(policy.attestation["platforms"]),
        reference=policy.reference_for(claims.platform),
        allow_debug=bool(policy.attestation["allow_debug"]),
        expected_report_data=expected_report_data,
    )
    return claims


def verify_gpus_for_policy(
    cpu: VerifiedClaims,
    gpu_evidence: Sequence[Evidence],
    policy: AttestationPolicy,
    *,
    now: _dt.datetime | None = None,
) -> list[VerifiedClaims]:
    """The GPUs of a composite CPU+GPU attestation, against ``attestation.gpu``.

    ``forbidden``: any GPU evidence is refused (the policy did not agree to GPUs). ``required``:
    at least one. Each is verified (chain to NVIDIA's pinned root, signature), validated
    against the policy's ``reference."nvidia-gpu"`` values (driver and VBIOS versions,
    measurement golden values) with debug refused unless ``allow_debug``, and bound to the
    already verified CPU claims through its SPDM nonce (``composite.gpu_nonce``), each device
    once. Raise listing every problem; return the GPUs' verified claims.
    """
    from cctrain.attestation.nvidia_gpu.composite import GPU_PLATFORM, verify_composite

    mode = policy.attestation.get("gpu", "forbidden")
    if mode not in ("forbidden", "optional", "required"):
        raise EvidenceValidationError(
            [f"attestation.gpu: got {mode!r}, want forbidden, optional or required"]
        )
    if mode == "forbidden":
        if gpu_evidence:
            raise EvidenceValidationError(
                [
                    f"gpus: got {len(gpu_evidence)} GPU evidence(s), but the policy's "
                    'attestation.gpu is "forbidden"'
                ]
            )
        return []
    if not gpu_evidence:
        if mode == "required":
            raise EvidenceValidationError(
                ['gpus: got none, but the policy\'s attestation.gpu is "required"']
            )
        return []
    problems: list[str] = []
    gpus: list[VerifiedClaims] = []
    for i, ev in enumerate(gpu_evidence):
        if ev.platform != GPU_PLATFORM:
            problems.append(f"gpus[{i}].platform: got {ev.platform!r}, want {GPU_PLATFORM!r}")
            continue
        try:
            claims = verify_evidence(ev, now=now)
            validate_claims(
                claims,
                accepted_platforms=[GPU_PLATFORM],
                reference=policy.reference_for(GPU_PLATFORM),
                allow_debug=policy.attestation.get("allow_debug") is True,
                expected_report_data=None,  # bound below, to the CPU evidence
            )
        except (EvidenceParseError, EvidenceVerificationError, EvidenceValidationError) as exc:
            errors = getattr(exc, "errors", None) or getattr(exc, "mismatches", None)
            problems.extend(f"gpus[{i}]: {e}" for e in (errors or [str(exc)]))
            continue
        gpus.append(claims)
    if not problems:
        problems = verify_composite(cpu, gpus)
    if problems:
        raise EvidenceValidationError(problems)
    return gpus


def _key_bytes(value: Any) -> bytes:
    """A policy's trust key: PEM text, or hex of DER SubjectPublicKeyInfo or of a raw point."""
    text = str(value).strip()
    if text.startswith("-----BEGIN"):
        return text.encode()
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise EvidenceParseError("a policy trust key is neither PEM nor hex") from None


def _hexset(values: Any) -> set[str]:
    return {str(v).lower() for v in (values or [])}


def validate_claims(
    claims: VerifiedClaims,
    *,
    accepted_platforms: Sequence[str],
    reference: Mapping[str, Any],
    allow_debug: bool,
    expected_report_data: bytes | None,
) -> None:
    """Check verified claims against the policy; raise with every mismatch at once.

    ``reference`` is the policy's reference-value table for ``claims.platform``.
    """
    problems: list[str] = []
    if claims.platform not in accepted_platforms:
        problems.append(
            f"platform: got {claims.platform!r}, want one of {sorted(accepted_platforms)}"
        )
    measurements = _hexset(reference.get("measurements"))
    if measurements and claims.measurement.hex() not in measurements:
        problems.append(
            f"measurement: got {claims.measurement.hex()}, want one of {sorted(measurements)}"
        )
    if claims.debug and not allow_debug:
        problems.append("debug: got True, want False (the policy forbids debug enclaves)")
    if expected_report_data is not None and claims.report_data != expected_report_data:
        problems.append(
            f"report_data: got {claims.report_data.hex()}, want {expected_report_data.hex()} "
            "(evidence is bound to another nonce, policy, TLS key or enclave key)"
        )
    statuses = reference.get("accepted_tcb_statuses")
    if statuses is not None and claims.tcb_status is not None and claims.tcb_status not in statuses:
        problems.append(f"tcb_status: got {claims.tcb_status!r}, want one of {list(statuses)}")
    accepted_adv = reference.get("accepted_advisories")
    if accepted_adv is not None:
        extra_adv = sorted(set(claims.advisories) - set(accepted_adv))
        if extra_adv:
            problems.append(f"advisories: got {extra_adv}, want only {list(accepted_adv)}")
    problems.extend(get_platform(claims.platform).validate(claims, reference))
    if problems:
        raise EvidenceValidationError(problems)


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def read_evidence_bytes(data: bytes) -> bytes:
    """Evidence files come raw or hex-encoded (as in the vectors); return raw bytes.

    Hex may be wrapped over lines (``xxd -p``) or use CRLF: all whitespace is
    dropped before deciding, so line breaks never make a hex file look raw.
    """
    compact = b"".join(data.split())
    if compact and len(compact) % 2 == 0 and all(b in _HEX_DIGITS for b in compact):
        return bytes.fromhex(compact.decode("ascii"))
    return data
