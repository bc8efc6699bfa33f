"""Validate verified SEV-SNP claims against a policy's SNP reference values.

Measurement, debug and report_data binding are checked by
:func:`cctrain.attestation.pipeline.validate_claims` for every platform; this
module adds what only SNP has.  It returns every mismatch, never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cctrain.attestation.base import VerifiedClaims

REFERENCE_KEYS = frozenset(
    {"min_tcb", "host_data", "vmpl", "min_guest_svn", "family_id", "image_id", "products"}
)
#: min_tcb applies to each of these: the reported TCB (what the VCEK
#: certifies), the committed TCB (the floor firmware cannot roll back below)
#: and the current TCB.
_TCB_FIELDS = ("reported_tcb", "committed_tcb", "current_tcb")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hex_field(claims: VerifiedClaims, name: str, want: Any, problems: list[str]) -> None:
    got = claims.extra.get(name)
    got_hex = got.hex() if isinstance(got, bytes) else str(got)
    if not isinstance(want, str):
        problems.append(f"{name}: reference value must be a hex string, got {want!r}")
        return
    want_hex = want.lower().removeprefix("0x")
    try:
        bytes.fromhex(want_hex)
    except ValueError:
        problems.append(f"{name}: reference value {want!r} is not hex")
        return
    if got_hex != want_hex:
        problems.append(f"{name}: got {got_hex}, want {want_hex}")


def validate(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    """Every mismatch between SNP claims and ``reference``, as "field: got X, want Y"."""
    problems: list[str] = []
    extra = claims.extra

    min_tcb = reference.get("min_tcb")
    if min_tcb is not None:
        if not isinstance(min_tcb, Mapping):
            problems.append(f"min_tcb: reference value must be a mapping, got {min_tcb!r}")
        else:
            for name, minimum in sorted(min_tcb.items()):
                if not _is_int(minimum) or minimum < 0:
                    problems.append(f"min_tcb.{name}: reference value {minimum!r} is not an int")
                    continue
                for field in _TCB_FIELDS:
                    tcb = extra.get(field) or {}
                    got = tcb.get(name)
                    if got is None:
                        problems.append(
                            f"{field}.{name}: got no such component on {extra.get('product')} "
                            f"(has {sorted(tcb)}), want >= {minimum}"
                        )
                        break
                    if got < minimum:
                        problems.append(f"{field}.{name}: got {got}, want >= {minimum}")

    vmpl = reference.get("vmpl")
    if vmpl is not None:
        allowed = list(vmpl) if isinstance(vmpl, (list, tuple)) else [vmpl]
        if not all(_is_int(v) for v in allowed):
            problems.append(f"vmpl: reference value {vmpl!r} is not an int")
        elif extra.get("vmpl") not in allowed:
            want = allowed[0] if len(allowed) == 1 else f"one of {allowed}"
            problems.append(f"vmpl: got {extra.get('vmpl')}, want {want}")

    min_svn = reference.get("min_guest_svn")
    if min_svn is not None:
        if not _is_int(min_svn):
            problems.append(f"min_guest_svn: reference value {min_svn!r} is not an int")
        elif extra.get("guest_svn", -1) < min_svn:
            problems.append(f"guest_svn: got {extra.get('guest_svn')}, want >= {min_svn}")

    for name in ("host_data", "family_id", "image_id"):
        if reference.get(name) is not None:
            _hex_field(claims, name, reference[name], problems)

    products = reference.get("products")
    if products is not None:
        if isinstance(products, str) or not all(isinstance(p, str) for p in products):
            problems.append(f"products: reference value must be a list of names, got {products!r}")
        else:
            allowed_products = {p.lower() for p in products}
            got_product = str(extra.get("product"))
            if got_product.lower() not in allowed_products:
                problems.append(f"product: got {got_product}, want one of {sorted(products)}")
    return problems
