"""Nitro reference values: PCRs.

A policy pins PCRs by index (TOML keys are strings, so ``"0"`` and ``0`` are the same)::

    [attestation.reference.aws-nitro]
    measurements = ["<PCR0 hex>"]          # the common allow-list, applied to PCR0
    pcrs = { "0" = "<hex>", "1" = "<hex>", "2" = "<hex>", "8" = ["<hex>", "<hex>"] }

Each listed PCR must equal the value (or one of the values) given; every mismatch is
reported. PCR0 is the enclave image, PCR1 the kernel and boot ramdisk, PCR2 the user
application, PCR3 the parent instance's IAM role, PCR4 the parent instance, PCR8 the
certificate that signed the enclave image file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cctrain.attestation.aws_nitro.parse import PCR_COUNT
from cctrain.attestation.base import VerifiedClaims

REFERENCE_KEYS = frozenset({"pcrs"})


def _index(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        index = key
    elif isinstance(key, str) and key.strip().isdigit():
        index = int(key)
    else:
        return None
    return index if 0 <= index < PCR_COUNT else None


def _wanted(value: Any) -> list[str] | None:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not values:
        return None
    if not all(isinstance(v, str) for v in values):
        return None
    return sorted({v.strip().lower() for v in values})


def validate(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    """Every PCR of ``reference["pcrs"]`` that the verified document does not match."""
    problems: list[str] = []
    wanted = reference.get("pcrs")
    if wanted is None:
        return problems
    if not isinstance(wanted, Mapping):
        return [f"pcrs: reference must be a table of PCR index -> hex, got {wanted!r}"]
    got_pcrs: Mapping[int, str] = claims.extra.get("pcrs", {})
    for key in sorted(wanted, key=str):
        index = _index(key)
        if index is None:
            problems.append(f"pcrs: key {key!r} is not a PCR index 0..{PCR_COUNT - 1}")
            continue
        allowed = _wanted(wanted[key])
        if allowed is None:
            problems.append(
                f"pcrs[{index}]: reference must be a hex string or a list of them, "
                f"got {wanted[key]!r}"
            )
            continue
        got = got_pcrs.get(index)
        want = allowed[0] if len(allowed) == 1 else f"one of {allowed}"
        if got is None:
            problems.append(f"pcrs[{index}]: got no such PCR, want {want}")
        elif got not in allowed:
            problems.append(f"pcrs[{index}]: got {got}, want {want}")
    return problems
