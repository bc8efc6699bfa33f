"""NVIDIA confidential-GPU evidence (Hopper, Blackwell): SPDM measurements, verified offline.

parse (:mod:`.parse`) → verify (:mod:`.verify`: device chain to NVIDIA's pinned Device
Identity CA, ECDSA P-384 signature over the SPDM transcript) → validate (:mod:`.validate`:
driver/VBIOS versions, per-index golden measurements, e.g. from a RIM via :mod:`.rim`).
:mod:`.composite` binds GPU evidence to CPU evidence through one verifier nonce.

Why not NVIDIA's ``nv-local-gpu-verifier`` (PyPI)?  Judged from its PyPI page and the
nvtrust sources, not installed: it cannot serve as a fully offline library here.  It is
built to collect evidence on the GPU host through NVML (``nvidia-ml-py``), fetches RIMs
from NVIDIA's RIM service and checks revocation against NVIDIA's OCSP responder by
default (local RIM files can be passed, OCSP stays online), pins exact old dependencies
(``cryptography==43.0.1``, ``signxml``, ``lxml``) that conflict with ours, reads the clock
itself, and PyPI now marks it unsupported as a stand-alone tool in favour of the C++ SDK.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform
from cctrain.attestation.nvidia_gpu import parse as _parse
from cctrain.attestation.nvidia_gpu import validate as _validate
from cctrain.attestation.nvidia_gpu import verify as _verify
from cctrain.attestation.nvidia_gpu.composite import gpu_nonce, require_composite, verify_composite
from cctrain.attestation.nvidia_gpu.parse import GpuReport, parse_evidence_list
from cctrain.attestation.nvidia_gpu.rim import reference_from_rim


class NvidiaGpuPlatform:
    """The ``nvidia-gpu`` platform plug-in (see :class:`cctrain.attestation.base.Platform`)."""

    name = "nvidia-gpu"
    reference_keys = _validate.REFERENCE_KEYS

    def sniff(self, raw: bytes) -> bool:
        return _parse.sniff(raw)

    def parse(self, raw: bytes) -> GpuReport:
        return _parse.parse(raw)

    def verify(
        self,
        report: Any,
        *,
        certificates: Sequence[x509.Certificate],
        collateral: Mapping[str, Any] | None = None,
        now: _dt.datetime,
        getter: CollateralGetter | None = None,
    ) -> VerifiedClaims:
        # Offline by design: no collateral exists for GPUs and nothing is fetched.
        del collateral, getter
        return _verify.verify(report, certificates=certificates, now=now)

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        return _validate.validate(claims, reference)


PLATFORM = register_platform(NvidiaGpuPlatform())

__all__ = [
    "PLATFORM",
    "GpuReport",
    "NvidiaGpuPlatform",
    "gpu_nonce",
    "parse_evidence_list",
    "reference_from_rim",
    "require_composite",
    "verify_composite",
]
