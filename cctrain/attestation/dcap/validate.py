"""Check verified DCAP claims against a policy's TDX/SGX reference values.

Only platform-specific fields live here; measurement allow-list, debug,
report_data binding and accepted TCB statuses/advisories are checked once for
every platform by :func:`cctrain.attestation.pipeline.validate_claims`.
Every mismatch is reported, as ``"field: got X, want Y"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cctrain.attestation.base import VerifiedClaims

TDX_REFERENCE_KEYS = frozenset(
    {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "min_tee_tcb_svn"}
)
SGX_REFERENCE_KEYS = frozenset({"mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"})


def _allowed_hex(value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(v).lower().removeprefix("0x") for v in values]


def _check_hex(field: str, got: bytes, want: Any, problems: list[str]) -> None:
    allowed = _allowed_hex(want)
    if got.hex() not in allowed:
        shown = allowed[0] if len(allowed) == 1 else f"one of {allowed}"
        problems.append(f"{field}: got {got.hex()}, want {shown}")


def _svn_vector(value: Any) -> list[int] | None:
    """A 16-component minimum given as 32 hex characters or a list of 16 ints."""
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return None
        return list(raw) if len(raw) == 16 else None
    if isinstance(value, (list, tuple)) and len(value) == 16:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
    return None


def validate_tdx(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    extra = claims.extra
    fields: dict[str, bytes] = {
        "mrtd": extra["mrtd"],
        "mr_config_id": extra["mr_config_id"],
        "mr_owner": extra["mr_owner"],
    }
    for i, rtmr in enumerate(extra["rtmrs"]):
        fields[f"rtmr{i}"] = rtmr
    for field, got in fields.items():
        if field in reference and reference[field] is not None:
            _check_hex(field, got, reference[field], problems)
    if reference.get("min_tee_tcb_svn") is not None:
        want = _svn_vector(reference["min_tee_tcb_svn"])
        got = bytes(extra["tee_tcb_svn"])
        if want is None:
            problems.append(
                f"min_tee_tcb_svn: got {got.hex()}, want a valid minimum "
                f"(32 hex characters or 16 integers), not {reference['min_tee_tcb_svn']!r}"
            )
        elif any(g < w for g, w in zip(got, want, strict=True)):
            problems.append(
                f"tee_tcb_svn: got {got.hex()}, want every component >= {bytes(want).hex()}"
            )
    return problems


def validate_sgx(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    extra = claims.extra
    for field in ("mrenclave", "mrsigner"):
        if reference.get(field) is not None:
            _check_hex(field, extra[field], reference[field], problems)
    if reference.get("isv_prod_id") is not None:
        want = reference["isv_prod_id"]
        allowed = list(want) if isinstance(want, (list, tuple)) else [want]
        if extra["isv_prod_id"] not in allowed:
            shown = allowed[0] if len(allowed) == 1 else f"one of {allowed}"
            problems.append(f"isv_prod_id: got {extra['isv_prod_id']}, want {shown}")
    if reference.get("min_isv_svn") is not None:
        want_svn = reference["min_isv_svn"]
        if not isinstance(want_svn, int) or isinstance(want_svn, bool):
            problems.append(f"min_isv_svn: got {extra['isv_svn']}, want an integer minimum")
        elif extra["isv_svn"] < want_svn:
            problems.append(f"isv_svn: got {extra['isv_svn']}, want >= {want_svn}")
    return problems
