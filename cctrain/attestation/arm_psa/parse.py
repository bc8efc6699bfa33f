"""Parse a PSA initial attestation token: structure and claim types only, nothing verified.

A token is a tag-18 COSE_Sign1 (decoded strictly by :mod:`cctrain.attestation.cose`) whose
payload is a map of claims in one of two key sets:

* **PSA IoT profile 1** (``PSA_IOT_PROFILE_1``, draft-tschofenig-rats-psa-token-07 and
  earlier; what TF-M emitted up to about 1.6): private keys -75000..-75010.
* **PSA 2.0.0** (``http://arm.com/psa/2.0.0``, draft-tschofenig-rats-psa-token-08+, RFC 9783):
  EAT keys 10 (nonce), 256 (ueid = instance id), 265 (eat_profile) and 2394..2400.

Every claim is type-checked, mandatory ones are required, claims of the other key set and
unknown claims are refused; every problem is reported at once, each naming its claim.
Raises :class:`~cctrain.errors.EvidenceParseError` only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cctrain.attestation.cose import CoseSign1, loads_strict, sign1_from_item
from cctrain.errors import EvidenceParseError

PROFILE_IOT1 = "PSA_IOT_PROFILE_1"
PROFILE_2_0_0 = "http://arm.com/psa/2.0.0"

#: Claim name -> key, per profile (draft-tschofenig-rats-psa-token, RFC 9783 §4).
IOT1_KEYS: dict[str, int] = {
    "profile": -75000,
    "client_id": -75001,
    "security_lifecycle": -75002,
    "implementation_id": -75003,
    "boot_seed": -75004,
    "certification_reference": -75005,  # "hardware version" in profile 1
    "sw_components": -75006,
    "no_sw_measurements": -75007,
    "challenge": -75008,
    "instance_id": -75009,
    "verification_service": -75010,
}
PSA2_KEYS: dict[str, int] = {
    "challenge": 10,  # EAT nonce
    "instance_id": 256,  # EAT ueid
    "profile": 265,  # EAT eat_profile
    "client_id": 2394,
    "security_lifecycle": 2395,
    "implementation_id": 2396,
    "boot_seed": 2397,
    "certification_reference": 2398,
    "sw_components": 2399,
    "verification_service": 2400,
}
#: The names upstream specifications give the claims (used in every error message).
CLAIM_NAMES: dict[str, str] = {
    "profile": "psa-profile",
    "client_id": "psa-client-id",
    "security_lifecycle": "psa-security-lifecycle",
    "implementation_id": "psa-implementation-id",
    "boot_seed": "psa-boot-seed",
    "certification_reference": "psa-certification-reference",
    "sw_components": "psa-software-components",
    "no_sw_measurements": "psa-no-sw-measurements",
    "challenge": "psa-nonce",
    "instance_id": "psa-instance-id",
    "verification_service": "psa-verification-service-indicator",
}
_MANDATORY_IOT1 = ("client_id", "security_lifecycle", "implementation_id", "boot_seed")
_MANDATORY_PSA2 = ("profile", "client_id", "security_lifecycle", "implementation_id")

#: Software-component map keys.
SWC_TYPE, SWC_MEASUREMENT, SWC_EPOCH, SWC_VERSION, SWC_SIGNER_ID, SWC_DESC = 1, 2, 3, 4, 5, 6
_SWC_NAMES = {
    SWC_TYPE: "measurement-type",
    SWC_MEASUREMENT: "measurement-value",
    SWC_EPOCH: "security-epoch",
    SWC_VERSION: "version",
    SWC_SIGNER_ID: "signer-id",
    SWC_DESC: "measurement-description",
}

#: Security lifecycle ranges (PSA Security Model; the low byte is IMPLEMENTATION DEFINED).
LIFECYCLES: tuple[tuple[int, str], ...] = (
    (0x0000, "unknown"),
    (0x1000, "assembly-and-test"),
    (0x2000, "psa-rot-provisioning"),
    (0x3000, "secured"),
    (0x4000, "non-psa-rot-debug"),
    (0x5000, "recoverable-psa-rot-debug"),
    (0x6000, "decommissioned"),
)
LIFECYCLE_NAMES = frozenset(name for _, name in LIFECYCLES)

#: psa-hash-type: the sizes of SHA-256/384/512 digests.
_HASH_SIZES = (32, 48, 64)
#: EAN-13, optionally +5 digits; old TF-M (1.4) wrote the +5 without the hyphen.
_CERT_REF = re.compile(r"[0-9]{13}(-?[0-9]{5})?")
#: COSE header labels a PSA token may carry: alg, content type, kid.
_PROTECTED_LABELS = frozenset({1, 3, 4})
_UNPROTECTED_LABELS = frozenset({4})
INT32 = (-(2**31), 2**31 - 1)


def lifecycle_name(value: int) -> str | None:
    """The lifecycle state of a raw psa-security-lifecycle value; None: not a valid value."""
    for base, name in LIFECYCLES:
        if base <= value <= base + 0xFF:
            return name
    return None


@dataclass(frozen=True)
class SwComponent:
    measurement: bytes
    type: str | None = None
    version: str | None = None
    signer_id: bytes | None = None
    measurement_desc: str | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class PsaClaims:
    profile: str
    client_id: int
    security_lifecycle: int
    implementation_id: bytes
    boot_seed: bytes | None
    certification_reference: str | None
    #: Empty when the token asserts psa-no-sw-measurements (profile 1 only).
    sw_components: tuple[SwComponent, ...]
    no_sw_measurements: bool
    challenge: bytes
    instance_id: bytes
    verification_service: str | None

    @property
    def lifecycle_name(self) -> str:
        return lifecycle_name(self.security_lifecycle) or "invalid"


@dataclass(frozen=True)
class PsaToken:
    """A parsed PSA token: the COSE_Sign1 (its signature is not checked yet) and its claims."""

    sign1: CoseSign1
    claims: PsaClaims
    kid: bytes | None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _desc(v: Any) -> str:
    if isinstance(v, bytes):
        return f"a {len(v)}-byte string"
    if isinstance(v, bool):
        return "a boolean"
    if _is_int(v):
        return f"the integer {v}"
    if isinstance(v, str):
        return "text"
    if isinstance(v, Mapping):
        return "a map"
    if isinstance(v, list | tuple):
        return "an array"
    return type(v).__name__


class _Claims:
    """Reads one claims map, collecting every problem with the claim's name."""

    def __init__(self, items: Mapping[Any, Any], keys: dict[str, int]) -> None:
        self.items = items
        self.keys = keys
        self.problems: list[str] = []

    def label(self, name: str) -> str:
        return f"{CLAIM_NAMES[name]} ({self.keys[name]})"

    def get(self, name: str, mandatory: bool) -> Any:
        key = self.keys[name]
        if key not in self.items:
            if mandatory:
                self.problems.append(f"{self.label(name)}: mandatory claim missing")
            return None
        value = self.items[key]
        if value is None:
            self.problems.append(f"{self.label(name)}: null is not a value")
        return value

    def present(self, name: str) -> bool:
        return self.keys[name] in self.items

    def bad(self, name: str, want: str, got: Any) -> None:
        self.problems.append(f"{self.label(name)}: want {want}, got {_desc(got)}")

    def text(self, name: str, mandatory: bool = False) -> str | None:
        v = self.get(name, mandatory)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            self.bad(name, "non-empty text", v)
            return None
        return v

    def bstr(self, name: str, sizes: tuple[int, ...], mandatory: bool = False) -> bytes | None:
        v = self.get(name, mandatory)
        if v is None:
            return None
        if not isinstance(v, bytes) or len(v) not in sizes:
            span = f"{sizes[0]}..{sizes[-1]}" if len(sizes) > 3 else " or ".join(map(str, sizes))
            self.bad(name, f"a byte string of {span} bytes", v)
            return None
        return v

    def integer(self, name: str, lo: int, hi: int, mandatory: bool = False) -> int | None:
        v = self.get(name, mandatory)
        if v is None:
            return None
        if not _is_int(v) or not lo <= v <= hi:
            self.bad(name, f"an integer in {lo}..{hi}", v)
            return None
        return int(v)


def _sw_component(c: _Claims, index: int, item: Any, profile_1: bool) -> SwComponent | None:
    where = f"{c.label('sw_components')}[{index}]"
    if not isinstance(item, Mapping):
        c.problems.append(f"{where}: want a map, got {_desc(item)}")
        return None
    allowed = set(_SWC_NAMES) if profile_1 else set(_SWC_NAMES) - {SWC_EPOCH}
    bad_keys = [k for k in item if not _is_int(k) or k not in allowed]
    if bad_keys:
        c.problems.append(f"{where}: unknown keys {sorted(map(repr, bad_keys))}")
    found: dict[int, Any] = {}
    ok = True
    for key, name in _SWC_NAMES.items():
        v = item.get(key) if key in allowed else None
        if v is None:
            mandatory = key == SWC_MEASUREMENT or (key == SWC_SIGNER_ID and not profile_1)
            if mandatory:
                c.problems.append(f"{where}.{name} ({key}): mandatory field missing")
                ok = False
            continue
        if key in (SWC_MEASUREMENT, SWC_SIGNER_ID):
            good = isinstance(v, bytes) and len(v) in _HASH_SIZES
            want = "a byte string of 32, 48 or 64 bytes"
        elif key == SWC_EPOCH:
            good, want = _is_int(v) and 0 <= v <= 2**64 - 1, "an unsigned integer"
        else:
            good, want = isinstance(v, str), "text"
        if not good:
            c.problems.append(f"{where}.{name} ({key}): want {want}, got {_desc(v)}")
            ok = False
            continue
        found[key] = v
    if not ok or bad_keys:
        return None
    return SwComponent(
        measurement=found[SWC_MEASUREMENT],
        type=found.get(SWC_TYPE),
        version=found.get(SWC_VERSION),
        signer_id=found.get(SWC_SIGNER_ID),
        measurement_desc=found.get(SWC_DESC),
        epoch=found.get(SWC_EPOCH),
    )


def parse_claims(payload: Mapping[Any, Any], what: str = "PSA token") -> PsaClaims:
    """Type-check a claims map of either profile; EvidenceParseError lists every problem."""
    if not isinstance(payload, Mapping):
        raise EvidenceParseError(f"{what}: the payload is not a map of claims")
    bad_keys = [k for k in payload if not _is_int(k)]
    if bad_keys:
        raise EvidenceParseError(
            f"{what}: claim keys must be integers, got {sorted(map(repr, bad_keys))}"
        )
    iot1 = {k for k in payload if k in IOT1_KEYS.values()}
    psa2 = {k for k in payload if k in PSA2_KEYS.values()}
    if iot1 and psa2:
        raise EvidenceParseError(
            f"{what}: claims of both PSA IoT profile 1 ({sorted(iot1)}) and PSA 2.0.0 "
            f"({sorted(psa2)}): a token uses one key set"
        )
    profile_1 = not psa2
    if not iot1 and not psa2:
        raise EvidenceParseError(f"{what}: no PSA claims (keys {sorted(payload)})")
    keys = IOT1_KEYS if profile_1 else PSA2_KEYS
    c = _Claims(payload, keys)
    unknown = sorted(set(payload) - set(keys.values()))
    if unknown:
        c.problems.append(
            f"unknown claims {unknown} (not in the {'IoT profile 1' if profile_1 else 'PSA 2.0.0'} key set)"
        )

    want_profile = PROFILE_IOT1 if profile_1 else PROFILE_2_0_0
    profile = c.text("profile", mandatory=not profile_1)
    if profile is not None and profile != want_profile:
        c.problems.append(f"{c.label('profile')}: got {profile!r}, want {want_profile!r}")
    client_id = c.integer("client_id", *INT32, mandatory=True)
    lifecycle = c.integer("security_lifecycle", 0, 0xFFFF, mandatory=True)
    if lifecycle is not None and lifecycle_name(lifecycle) is None:
        c.problems.append(
            f"{c.label('security_lifecycle')}: {lifecycle:#06x} is in no PSA lifecycle range"
        )
    implementation_id = c.bstr("implementation_id", (32,), mandatory=True)
    boot_seed = c.bstr(
        "boot_seed", (32,) if profile_1 else tuple(range(8, 33)), mandatory=profile_1
    )
    cert_ref = c.text("certification_reference")
    if cert_ref is not None and not _CERT_REF.fullmatch(cert_ref):
        c.problems.append(
            f"{c.label('certification_reference')}: {cert_ref!r} is not EAN-13 or EAN-13+5"
        )
    challenge = c.bstr("challenge", _HASH_SIZES, mandatory=True)
    instance_id = c.bstr("instance_id", (33,), mandatory=True)
    if instance_id is not None and instance_id[0] != 0x01:
        c.problems.append(
            f"{c.label('instance_id')}: UEID type {instance_id[0]:#04x}, want 0x01 (RAND)"
        )
    verification_service = c.text("verification_service")

    components: list[SwComponent] = []
    raw_components = c.get("sw_components", mandatory=False)
    no_sw = False
    if profile_1:
        no_sw = c.integer("no_sw_measurements", 1, 1) is not None
        if raw_components is not None and c.present("no_sw_measurements"):
            c.problems.append(
                f"{c.label('sw_components')} and {c.label('no_sw_measurements')}: only one "
                "may be present"
            )
        elif not c.present("sw_components") and not c.present("no_sw_measurements"):
            c.problems.append(
                f"{c.label('sw_components')} or {c.label('no_sw_measurements')}: mandatory "
                "claim missing"
            )
    elif not c.present("sw_components"):
        c.problems.append(f"{c.label('sw_components')}: mandatory claim missing")
    if raw_components is not None:
        if not isinstance(raw_components, list | tuple) or not raw_components:
            c.bad("sw_components", "a non-empty array of maps", raw_components)
        else:
            for i, item in enumerate(raw_components):
                comp = _sw_component(c, i, item, profile_1)
                if comp is not None:
                    components.append(comp)

    if c.problems:
        raise EvidenceParseError(f"{what}: " + "; ".join(c.problems))
    if (
        client_id is None
        or lifecycle is None
        or implementation_id is None
        or challenge is None
        or instance_id is None
    ):  # unreachable: each missing one added a problem above
        raise EvidenceParseError(f"{what}: a mandatory claim is missing")
    return PsaClaims(
        profile=profile or want_profile,
        client_id=client_id,
        security_lifecycle=lifecycle,
        implementation_id=implementation_id,
        boot_seed=boot_seed,
        certification_reference=cert_ref,
        sw_components=tuple(components),
        no_sw_measurements=no_sw,
        challenge=challenge,
        instance_id=instance_id,
        verification_service=verification_service,
    )


def _check_headers(sign1: CoseSign1, what: str) -> bytes | None:
    problems: list[str] = []
    extra = sorted(map(repr, set(sign1.protected) - _PROTECTED_LABELS))
    if extra:
        problems.append(f"protected header labels {extra} are not used by PSA tokens")
    if 1 not in sign1.protected:
        problems.append("protected header has no algorithm (label 1)")
    elif not _is_int(sign1.protected[1]):
        problems.append(f"protected header algorithm is {_desc(sign1.protected[1])}")
    extra = sorted(map(repr, set(sign1.unprotected) - _UNPROTECTED_LABELS))
    if extra:
        problems.append(f"unprotected header labels {extra}: only a kid (4) may be there")
    kid = sign1.unprotected.get(4, sign1.protected.get(4))
    if kid is not None and not isinstance(kid, bytes):
        problems.append(f"kid is {_desc(kid)}, want a byte string")
    if problems:
        raise EvidenceParseError(f"{what}: " + "; ".join(problems))
    return kid if isinstance(kid, bytes) else None


def parse(raw: bytes, what: str = "PSA token") -> PsaToken:
    """Parse ``raw`` (the token's bytes) into a :class:`PsaToken`; nothing is verified."""
    item = loads_strict(raw, what)
    sign1 = sign1_from_item(item, what, tag="required")
    kid = _check_headers(sign1, what)
    payload = loads_strict(sign1.payload, f"{what} payload")
    return PsaToken(sign1=sign1, claims=parse_claims(payload, what), kid=kid)


def sniff(raw: bytes) -> bool:
    """A tag-18 COSE_Sign1 whose payload carries PSA (not CCA) claims. Never raises."""
    if raw[:1] != b"\xd2":
        return False
    try:
        sign1 = sign1_from_item(loads_strict(raw, "token"), "token", tag="required")
        payload = loads_strict(sign1.payload, "payload")
    except EvidenceParseError:
        return False
    if not isinstance(payload, Mapping):
        return False
    if any(k in payload for k in IOT1_KEYS.values()):
        return True
    return payload.get(PSA2_KEYS["profile"]) == PROFILE_2_0_0
