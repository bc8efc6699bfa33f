"""Composite CPU + GPU attestation: one verifier nonce binds both pieces of evidence.

The verifier's nonce goes into the CPU evidence's 64-byte report_data (DESIGN.md).  The
GPU's SPDM nonce is only 32 bytes and is chosen by whoever asks the GPU, so the enclave
derives it from the CPU report_data::

    gpu_nonce = SHA-256(b"cctrain-gpu-nonce-v1" || cpu_report_data)

A verifier recomputes it from the *verified* CPU claims and requires every GPU's
*verified* nonce (the first 32 bytes of its claims' report_data) to equal it.  A GPU
report captured for another CPU quote, another nonce or another session then fails;
evidence of one GPU presented twice is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from cctrain.attestation.base import VerifiedClaims
from cctrain.errors import EvidenceValidationError

GPU_NONCE_TAG = b"cctrain-gpu-nonce-v1"
GPU_PLATFORM = "nvidia-gpu"


def gpu_nonce(cpu_report_data: bytes) -> bytes:
    """The 32-byte SPDM nonce the enclave asks each GPU to sign."""
    return hashlib.sha256(GPU_NONCE_TAG + bytes(cpu_report_data)).digest()


def verify_composite(cpu: VerifiedClaims, gpus: Sequence[VerifiedClaims]) -> list[str]:
    """Every binding problem between verified CPU claims and verified GPU claims."""
    problems: list[str] = []
    if cpu.platform == GPU_PLATFORM:
        problems.append("cpu: got a GPU's claims, want a CPU TEE's claims")
    if not gpus:
        problems.append("gpus: got none, want at least one GPU's verified claims")
    want = gpu_nonce(cpu.report_data)
    seen: dict[bytes, int] = {}
    for i, gpu in enumerate(gpus):
        if gpu.platform != GPU_PLATFORM:
            problems.append(f"gpus[{i}].platform: got {gpu.platform!r}, want {GPU_PLATFORM!r}")
            continue
        got = gpu.report_data[:32]
        if len(gpu.report_data) != 64 or any(gpu.report_data[32:]):
            problems.append(f"gpus[{i}].report_data: not a 32-byte nonce padded with zeros")
        elif not hmac.compare_digest(got, want):
            problems.append(
                f"gpus[{i}].nonce: got {got.hex()}, want {want.hex()} "
                "(GPU evidence is not bound to this CPU evidence)"
            )
        if gpu.chip_id is not None:
            if gpu.chip_id in seen:
                problems.append(
                    f"gpus[{i}]: same device ({gpu.chip_id.hex()}) as gpus[{seen[gpu.chip_id]}]"
                )
            seen.setdefault(gpu.chip_id, i)
    return problems


def require_composite(cpu: VerifiedClaims, gpus: Sequence[VerifiedClaims]) -> None:
    """Raise EvidenceValidationError listing every binding problem, if any."""
    problems = verify_composite(cpu, gpus)
    if problems:
        raise EvidenceValidationError(problems)
