"""Validate verified Azure vTPM claims: the SNP reference values, then the PCRs.

Measurement, debug, report_data (the quote's extraData) and TCB status are
checked by :func:`cctrain.attestation.pipeline.validate_claims`.  The SNP
reference values (``min_tcb``, ``vmpl``, ``host_data`` ...) are checked by the
``sev-snp`` validator on the verified SNP claims; ``pcrs`` maps a PCR index to
the hex value (or list of accepted hex values) it must hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cctrain.attestation import sev_snp
from cctrain.attestation.base import VerifiedClaims
from cctrain.attestation.sev_snp.validate import REFERENCE_KEYS as SNP_REFERENCE_KEYS

REFERENCE_KEYS = SNP_REFERENCE_KEYS | {"pcrs"}


def _hex(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower().removeprefix("0x")
    try:
        bytes.fromhex(text)
    except ValueError:
        return None
    return text


def _index(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def _validate_pcrs(claims: VerifiedClaims, want: Any, problems: list[str]) -> None:
    if not isinstance(want, Mapping):
        problems.append(f"pcrs: reference value must map PCR index to hex, got {want!r}")
        return
    got_pcrs: Mapping[int, str] = claims.extra.get("pcrs") or {}
    for key, value in sorted(want.items(), key=lambda kv: str(kv[0]).zfill(4)):
        index = _index(key)
        if index is None:
            problems.append(f"pcrs: reference key {key!r} is not a PCR index")
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        allowed = [_hex(v) for v in values]
        if not allowed or any(a is None for a in allowed):
            problems.append(f"pcrs.{index}: reference value {value!r} is not hex")
            continue
        got = got_pcrs.get(index)
        if got is None:
            problems.append(f"pcrs.{index}: got none (the quote does not cover it), want {value}")
        elif got not in allowed:
            shown = allowed[0] if len(allowed) == 1 else f"one of {allowed}"
            problems.append(f"pcrs.{index}: got {got}, want {shown}")


def validate(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    """Every mismatch against ``reference``, as "field: got X, want Y"."""
    snp_extra = claims.extra.get("snp")
    problems: list[str] = []
    if not isinstance(snp_extra, Mapping):
        return ["snp: got no verified SNP claims, want them (not azure-snp-vtpm claims)"]
    # The sev-snp validator reads its fields from ``extra``: give it the SNP claims'.
    problems.extend(sev_snp.validate(dataclasses.replace(claims, extra=snp_extra), reference))
    if reference.get("pcrs") is not None:
        _validate_pcrs(claims, reference["pcrs"], problems)
    return problems
