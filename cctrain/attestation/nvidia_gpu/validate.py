"""Validate verified GPU claims against a policy's NVIDIA reference values.

Reference keys (``reference_keys`` of the platform):

* ``driver_versions``: allowed driver versions, e.g. ``["550.90.07"]``.
* ``vbios_versions``: allowed VBIOS versions, e.g. ``["96.00.9F.00.01"]`` (case-insensitive).
* ``measurement_indices``: SPDM measurement block index (1-64, as in
  ``claims.extra["measurements"]``) -> allowed hex values; RIM-style golden values.
  NVIDIA's RIMs number measurements from 0: SPDM index = RIM index + 1.
  :func:`cctrain.attestation.nvidia_gpu.rim.reference_from_rim` does the conversion.

Every mismatch is returned at once as ``"field: got X, want Y"``; a malformed reference
is reported the same way rather than raised, so the policy author sees all problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cctrain.attestation.base import VerifiedClaims

REFERENCE_KEYS = frozenset({"driver_versions", "vbios_versions", "measurement_indices"})


def _strings(value: Any, key: str, problems: list[str]) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        problems.append(f"{key}: reference must be a list of strings, got {value!r}")
        return None
    return [str(v) for v in value]


def _index(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def validate(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    """Every NVIDIA-specific mismatch between ``claims`` and ``reference``."""
    problems: list[str] = []
    extra = claims.extra

    drivers = _strings(reference.get("driver_versions"), "driver_versions", problems)
    if drivers is not None and extra.get("driver_version") not in drivers:
        problems.append(
            f"driver_version: got {extra.get('driver_version')!r}, want one of {drivers}"
        )

    vbios = _strings(reference.get("vbios_versions"), "vbios_versions", problems)
    if vbios is not None:
        got = str(extra.get("vbios_version") or "")
        if got.upper() not in {v.upper() for v in vbios}:
            problems.append(
                f"vbios_version: got {extra.get('vbios_version')!r}, want one of {vbios}"
            )

    wanted = reference.get("measurement_indices")
    if wanted is not None:
        if not isinstance(wanted, Mapping):
            problems.append(f"measurement_indices: reference must be a mapping, got {wanted!r}")
            wanted = {}
        measurements: Mapping[int, str] = extra.get("measurements", {})
        for key in sorted(wanted, key=str):
            index = _index(key)
            allowed = _strings(wanted[key], f"measurement_indices[{key}]", problems)
            if index is None:
                problems.append(f"measurement_indices: key {key!r} is not a block index")
                continue
            if allowed is None:
                continue
            allowed_lower = sorted({a.lower() for a in allowed})
            got_value = measurements.get(index)
            if got_value is None:
                problems.append(
                    f"measurement[{index}]: got no such block, want one of {allowed_lower}"
                )
            elif got_value.lower() not in allowed_lower:
                problems.append(
                    f"measurement[{index}]: got {got_value}, want one of {allowed_lower}"
                )
    return problems
