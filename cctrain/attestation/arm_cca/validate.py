"""Validate verified CCA claims against a policy's ``arm-cca`` reference values.

The realm initial measurement (RIM) is the common ``measurements`` allow-list, debug (a
platform lifecycle other than ``secured``) and the realm challenge as report_data are
checked by :func:`cctrain.attestation.pipeline.validate_claims`. This module adds:

* ``trust_keys``: the trusted CPAKs (used by the pipeline to verify, not here);
* ``rems``: acceptable REM sets, each a list of 4 hex strings (any set matching passes);
* ``personalization``: the realm personalization value, hex (or a list of them);
* ``realm_hash_algs``: accepted realm hash algorithms (``sha-256``, ...);
* ``platform_sw_components``: firmware that must be present, each entry a measurement hex
  (some component must have it) or a table ``{type, measurement, signer_id, version}``
  (a component of that type must match every field given; ``measurement`` may be a list);
* ``implementation_ids``, ``platform_configs``: accepted values, hex;
* ``lifecycles``: accepted lifecycle values (integers) or states (``"secured"``, ...);
* ``require_instance_id_binding``: the instance id must be ``0x01 || SHA-256(CPAK)``.

Irregular claims found at parse time (``claim_problems``) are always reported. Every
mismatch is returned as ``"field: got X, want Y"``; nothing raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cctrain.attestation.base import VerifiedClaims

REFERENCE_KEYS = frozenset(
    {
        "trust_keys",
        "rems",
        "personalization",
        "realm_hash_algs",
        "platform_sw_components",
        "implementation_ids",
        "platform_configs",
        "lifecycles",
        "require_instance_id_binding",
    }
)


def _hex(value: Any) -> str | None:
    """Normalised hex of a reference value, or None when it is not hex text."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower().removeprefix("0x")
    try:
        bytes.fromhex(text)
    except ValueError:
        return None
    return text


def _hex_list(name: str, value: Any, problems: list[str]) -> list[str] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, bytes):
        problems.append(f"{name}: reference value must be a list of hex strings, got {value!r}")
        return None
    out = []
    for item in items:
        h = _hex(item)
        if h is None:
            problems.append(f"{name}: reference value {item!r} is not hex")
            return None
        out.append(h)
    return out


def _one_of(name: str, got: str, want: list[str], problems: list[str]) -> None:
    if got not in want:
        shown = want[0] if len(want) == 1 else f"one of {want}"
        problems.append(f"{name}: got {got}, want {shown}")


def _rems(got: list[str], value: Any, problems: list[str]) -> None:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        problems.append(f"rems: reference value must be a list of REM sets, got {value!r}")
        return
    sets: list[list[str]] = []
    for i, rem_set in enumerate(value):
        hexes = _hex_list(f"rems[{i}]", rem_set, problems)
        if hexes is None:
            return
        if len(hexes) != 4:
            problems.append(f"rems[{i}]: reference value has {len(hexes)} REMs, want 4")
            return
        sets.append(hexes)
    if got not in sets:
        problems.append(f"rems: got {got}, want one of {sets}")


def _component_matches(comp: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    if "type" in want and comp.get("type") != want["type"]:
        return False
    if "measurement" in want and comp["measurement"].hex() not in want["measurement"]:
        return False
    if "signer_id" in want and comp["signer_id"].hex() != want["signer_id"]:
        return False
    return "version" not in want or comp.get("version") == want["version"]


def _sw_components(comps: Sequence[Mapping[str, Any]], value: Any, problems: list[str]) -> None:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        problems.append(f"platform_sw_components: reference value must be a list, got {value!r}")
        return
    for i, entry in enumerate(value):
        name = f"platform_sw_components[{i}]"
        want: dict[str, Any] = {}
        if isinstance(entry, str):
            h = _hex(entry)
            if h is None:
                problems.append(f"{name}: reference value {entry!r} is not hex")
                continue
            want["measurement"] = [h]
        elif isinstance(entry, Mapping):
            unknown = sorted(set(entry) - {"type", "measurement", "signer_id", "version"})
            if unknown or not entry:
                problems.append(f"{name}: unknown or no fields {unknown} in {dict(entry)!r}")
                continue
            for field in ("type", "version"):
                if field in entry:
                    if not isinstance(entry[field], str):
                        problems.append(f"{name}.{field}: reference value must be text")
                        break
                    want[field] = entry[field]
            if "measurement" in entry:
                m = _hex_list(f"{name}.measurement", entry["measurement"], problems)
                if m is None:
                    continue
                want["measurement"] = m
            if "signer_id" in entry:
                s = _hex(entry["signer_id"])
                if s is None:
                    problems.append(f"{name}.signer_id: reference value is not hex")
                    continue
                want["signer_id"] = s
        else:
            problems.append(f"{name}: reference value must be hex or a table, got {entry!r}")
            continue
        if any(_component_matches(c, want) for c in comps):
            continue
        same_type = [c for c in comps if "type" in want and c.get("type") == want["type"]]
        got = (
            ", ".join(
                f"{c.get('type')} measurement {c['measurement'].hex()} signer_id "
                f"{c['signer_id'].hex()} version {c.get('version')}"
                for c in same_type
            )
            if same_type
            else f"no such component (types {[c.get('type') for c in comps]})"
        )
        problems.append(f"{name}: got {got}, want {want}")


def _lifecycles(lifecycle: int, state: str, value: Any, problems: list[str]) -> None:
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    ok = False
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            problems.append(f"lifecycles: reference value {item!r} is neither an int nor a state")
            return
        ok = ok or item == lifecycle or item == state
    if not ok:
        problems.append(f"lifecycle: got 0x{lifecycle:04x} ({state}), want one of {list(items)}")


def validate(claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
    """Every mismatch between verified CCA claims and ``reference``."""
    problems: list[str] = [f"claims: {p}" for p in claims.extra.get("claim_problems", [])]
    realm: Mapping[str, Any] = claims.extra["realm"]
    plat: Mapping[str, Any] = claims.extra["platform"]

    if reference.get("rems") is not None:
        _rems([r.hex() for r in realm["rems"]], reference["rems"], problems)
    for key, got in (
        ("personalization", realm["personalization"]),
        ("implementation_ids", plat["implementation_id"]),
        ("platform_configs", plat["config"]),
    ):
        if reference.get(key) is not None:
            want = _hex_list(key, reference[key], problems)
            if want is not None:
                _one_of(key, got.hex(), want, problems)
    algs = reference.get("realm_hash_algs")
    if algs is not None:
        items = [algs] if isinstance(algs, str) else algs
        if not isinstance(items, Sequence) or not all(isinstance(a, str) for a in items):
            problems.append(f"realm_hash_algs: reference value must be names, got {algs!r}")
        else:
            _one_of("realm_hash_algs", realm["hash_alg"], list(items), problems)
    if reference.get("platform_sw_components") is not None:
        _sw_components(plat["sw_components"], reference["platform_sw_components"], problems)
    if reference.get("lifecycles") is not None:
        _lifecycles(plat["lifecycle"], plat["lifecycle_state"], reference["lifecycles"], problems)
    require = reference.get("require_instance_id_binding")
    if require is not None and not isinstance(require, bool):
        problems.append("require_instance_id_binding: reference value must be true/false")
    elif require and plat["instance_id_binding"] != "ueid-cpak":
        problems.append(
            f"instance_id_binding: got {plat['instance_id_binding']} (instance id "
            f"{plat['instance_id'].hex()}), want ueid-cpak (0x01 || SHA-256(CPAK))"
        )
    return problems
