"""The ``cctrain attest verify`` contract, as a function (the CLI only prints its result).

Returns ``(exit_code, document)``: 0 verified, 1 parsed but not verified,
2 unparseable evidence or bad arguments.  The document always has ``platform``,
``verified``, ``errors``, ``measurement``, ``report_data``, ``debug``,
``signer``, ``chip_id``, ``tcb_status``, ``advisories``, ``nonce`` (hex of the nonce or
challenge the evidence carries; ``report_data`` where that is the nonce) and ``claims``
(the platform's parsed claims, e.g. ``pcrs``, ``sw_components``; ``{}`` until verified).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cctrain.attestation.base import Evidence, get_platform
from cctrain.attestation.cose import load_anchor_key
from cctrain.attestation.pipeline import (
    detect_platform,
    load_certificates,
    read_evidence_bytes,
    verify_evidence,
)
from cctrain.errors import (
    AttestationError,
    EvidenceParseError,
    EvidenceVerificationError,
)


def _empty(platform: str | None) -> dict[str, Any]:
    return {
        "platform": platform,
        "verified": False,
        "errors": [],
        "measurement": None,
        "report_data": None,
        "debug": None,
        "signer": None,
        "chip_id": None,
        "tcb_status": None,
        "advisories": [],
        "nonce": None,
        "claims": {},
    }


def parse_time(at: str | None) -> _dt.datetime | None:
    if at is None:
        return None
    t = _dt.datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def load_collateral(path: Path) -> dict[str, Any]:
    try:
        from cctrain.attestation.dcap.collateral import load_collateral_path
    except ImportError:  # pragma: no cover - DCAP always ships
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    result: dict[str, Any] = load_collateral_path(path)
    return result


class _RequireGpus:
    """The policy ``attest verify --gpu`` checks against: GPUs required, nothing pinned."""

    attestation = {"gpu": "required", "allow_debug": False}

    def reference_for(self, platform: str) -> dict[str, Any]:
        return {}


def _verify_gpus(
    doc: dict[str, Any],
    cpu: Any,
    gpu_files: Sequence[Path],
    gpu_cert_files: Sequence[Path],
    now: _dt.datetime | None,
) -> int:
    from cctrain.attestation.pipeline import verify_gpus_for_policy
    from cctrain.errors import EvidenceValidationError

    try:
        chains = tuple(f.read_bytes() for f in gpu_cert_files)
        gpus = [
            Evidence("nvidia-gpu", read_evidence_bytes(f.read_bytes()), certificates=chains)
            for f in gpu_files
        ]
    except OSError as exc:
        doc["errors"] = [f"cannot read a --gpu or --gpu-cert file: {exc.strerror}"]
        return 2
    try:
        verified = verify_gpus_for_policy(cpu, gpus, _RequireGpus(), now=now)
    except EvidenceValidationError as exc:
        doc["errors"] = list(exc.mismatches)
        return 1
    doc["gpus"] = [g.to_json() for g in verified]
    return 0


def run_attest_verify(
    evidence_file: Path,
    *,
    platform: str = "auto",
    cert_files: Sequence[Path] = (),
    collateral_path: Path | None = None,
    at: str | None = None,
    allow_simulated: bool = False,
    key_files: Sequence[Path] = (),
    gpu_files: Sequence[Path] = (),
    gpu_cert_files: Sequence[Path] = (),
) -> tuple[int, dict[str, Any]]:
    """Verify one piece of evidence; with ``gpu_files``, a composite CPU+GPU attestation:
    each GPU report (chains in ``gpu_cert_files``) must verify and be bound to this CPU
    evidence's nonce (``attestation.gpu = "required"``, no GPU reference values)."""
    doc = _empty(None if platform == "auto" else platform)
    try:
        now = parse_time(at)
    except ValueError:
        doc["errors"] = [f"--at: not an ISO-8601 time: {at!r}"]
        return 2, doc
    try:
        raw = read_evidence_bytes(evidence_file.read_bytes())
    except OSError as exc:
        doc["errors"] = [f"cannot read {evidence_file}: {exc.strerror}"]
        return 2, doc
    try:
        name = detect_platform(raw) if platform == "auto" else platform
        doc["platform"] = name
        get_platform(name)
        certs: list[bytes] = []
        for f in cert_files:
            try:
                certs.append(f.read_bytes())
            except OSError as exc:
                raise EvidenceParseError(f"cannot read --cert {f}: {exc.strerror}") from None
        load_certificates(certs)  # fail early, with exit 2, on an unparseable certificate
        keys: list[bytes] = []
        for f in key_files:
            try:
                keys.append(f.read_bytes())
            except OSError as exc:
                raise EvidenceParseError(f"cannot read --key {f}: {exc.strerror}") from None
        for i, k in enumerate(keys):
            load_anchor_key(k, f"--key {key_files[i]}")  # exit 2 on an unreadable key
        collateral = load_collateral(collateral_path) if collateral_path is not None else None
        evidence = Evidence(
            platform=name, report=raw, certificates=tuple(certs), collateral=collateral
        )
        # Parse separately so parse errors (exit 2) are told apart from verification ones (exit 1).
        get_platform(name).parse(raw)
    except EvidenceParseError as exc:
        doc["errors"] = [str(exc)]
        return 2, doc
    except (OSError, ValueError) as exc:
        doc["errors"] = [f"cannot read the input: {exc}"]
        return 2, doc
    try:
        claims = verify_evidence(
            evidence, now=now, allow_simulated=allow_simulated, trust_keys=keys
        )
    except EvidenceVerificationError as exc:
        doc["errors"] = list(exc.errors)
        return 1, doc
    except EvidenceParseError as exc:
        doc["errors"] = [str(exc)]
        return 2, doc
    except AttestationError as exc:
        doc["errors"] = [str(exc)]
        return 1, doc
    if gpu_files:
        code = _verify_gpus(doc, claims, gpu_files, gpu_cert_files, now)
        if code:
            return code, doc
    out = claims.to_json()
    doc.update({k: out[k] for k in doc if k in out})
    doc["verified"] = True
    doc["errors"] = []
    doc["extra"] = out["extra"]
    doc["claims"] = out["extra"]
    return 0, doc
