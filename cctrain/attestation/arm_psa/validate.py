"""Validate verified PSA claims against a policy's ``arm-psa`` reference values.

Reference keys (beyond the common ``measurements``, checked against the composite digest):

* ``trust_keys``: the IAK public keys verification accepts (read by verification, not here).
* ``sw_components``: a list of ``{measurement, type?, signer_id?}`` (hex for bytes); each
  must be in the token, with equal values for every key given. Components the token has
  beyond the list are allowed.
* ``implementation_ids``: accepted psa-implementation-id values (hex).
* ``lifecycles``: accepted lifecycle names (``secured``, ``non-psa-rot-debug``, ...).
* ``profiles``: accepted profile names (``PSA_IOT_PROFILE_1``, ``http://arm.com/psa/2.0.0``).

Returns every mismatch as ``"field: got X, want Y"``; never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cctrain.attestation.arm_psa.parse import LIFECYCLE_NAMES
from cctrain.attestation.base import VerifiedClaims

REFERENCE_KEYS = frozenset(
    {"trust_keys", "sw_components", "implementation_ids", "lifecycles", "profiles"}
)
_COMPONENT_KEYS = {"measurement": "measurement", "type": "type", "signer_id": "signer_id"}


def _hex(value: Any) -> str | None:
    """Lower-case hex of a reference value, or None when it is not hex."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower().removeprefix("0x")
    try:
        bytes.fromhex(text)
    except ValueError:
        return None
    return text


def _str_list(name: str, value: Any, problems: list[str]) -> list[str] | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        problems.append(f"{name}: reference value must be a list of strings, got {value!r}")
        return None
    return list(value)


def _component_text(c: Mapping[str, Any]) -> str:
    parts = [f"{k}={v.hex() if isinstance(v, bytes) else v}" for k, v in c.items() if v]
    return "{" + ", ".join(parts) + "}"


def _want_component(i: int, ref: Any, problems: list[str]) -> dict[str, Any] | None:
    where = f"sw_components[{i}]"
    if not isinstance(ref, Mapping):
        problems.append(f"{where}: reference value must be a table, got {ref!r}")
        return None
    unknown = sorted(set(ref) - set(_COMPONENT_KEYS))
    if unknown:
        problems.append(
            f"{where}: unknown reference keys {unknown} (known: measurement, type, signer_id)"
        )
        return None
    if "measurement" not in ref:
        problems.append(f"{where}: reference value needs a measurement")
        return None
    want: dict[str, Any] = {}
    for key, value in ref.items():
        if key == "type":
            if not isinstance(value, str):
                problems.append(f"{where}.type: reference value must be text, got {value!r}")
                return None
            want[key] = value
        else:
            text = _hex(value)
            if text is None:
                problems.append(f"{where}.{key}: reference value {value!r} is not hex")
                return None
            want[key] = bytes.fromhex(text)
    return want


def validate(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    """Every mismatch between verified PSA claims and ``reference``."""
    problems: list[str] = []
    extra = claims.extra

    refs = reference.get("sw_components")
    if refs is not None:
        if not isinstance(refs, list | tuple):
            problems.append(f"sw_components: reference value must be a list, got {refs!r}")
        else:
            have = list(extra.get("sw_components") or [])
            for i, ref in enumerate(refs):
                want = _want_component(i, ref, problems)
                if want is None:
                    continue
                if not any(all(c.get(k) == v for k, v in want.items()) for c in have):
                    got = (
                        ", ".join(
                            _component_text(
                                {k: c.get(k) for k in ("type", "measurement", "signer_id")}
                            )
                            for c in have
                        )
                        or "none"
                    )
                    problems.append(
                        f"sw_components[{i}]: got [{got}], want a component {_component_text(want)}"
                    )

    ids = reference.get("implementation_ids")
    if ids is not None:
        wanted = _str_list("implementation_ids", ids, problems)
        if wanted is not None:
            hexes = [_hex(v) for v in wanted]
            if None in hexes:
                problems.append(f"implementation_ids: reference values {wanted!r} are not all hex")
            else:
                got = extra["implementation_id"].hex()
                if got not in hexes:
                    problems.append(f"implementation_id: got {got}, want one of {hexes}")

    lifecycles = reference.get("lifecycles")
    if lifecycles is not None:
        wanted = _str_list("lifecycles", lifecycles, problems)
        if wanted is not None:
            unknown = sorted(set(wanted) - LIFECYCLE_NAMES)
            if unknown:
                problems.append(
                    f"lifecycles: unknown names {unknown} (known: {sorted(LIFECYCLE_NAMES)})"
                )
            lc = extra["lifecycle"]
            if lc["name"] not in wanted:
                problems.append(
                    f"lifecycle: got {lc['name']} ({lc['value']:#06x}), want one of {wanted}"
                )

    profiles = reference.get("profiles")
    if profiles is not None:
        wanted = _str_list("profiles", profiles, problems)
        if wanted is not None and extra["profile"] not in wanted:
            problems.append(f"profile: got {extra['profile']!r}, want one of {wanted}")
    return problems
