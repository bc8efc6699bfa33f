"""Parse an Arm CCA attestation token into typed claims: structure and types only.

A CCA token (RMM specification §A.7, draft-ffm-rats-cca-token) is a collection of two
COSE_Sign1 tokens:

* tag 399 ``{44234: bstr .cbor platform-token, 44241: bstr .cbor realm-token}``, where each
  bstr holds a tagged (18) or untagged COSE_Sign1; or
* tag 907, a CMW collection of the same two entries, each the CMW record ``[263, bstr]``
  (263: the CoAP content format of an EAT in a COSE_Sign1).

Every claim is type-checked and length-checked; every problem of a token (a missing
mandatory claim, an unknown claim, a claim of the wrong type) is named in one
:class:`~cctrain.errors.EvidenceParseError`. Unknown claims are refused, not skipped: a
verifier that ignored a claim it does not understand could accept a token whose meaning it
does not know. Nothing here checks a signature (:mod:`.verify` does).

Profiles understood: the legacy ``http://arm.com/CCA-SSD/1.0.0`` platform profile with a
realm token without a profile claim (RAK as a raw uncompressed point), and the 2023+
profiles ``tag:arm.com,2023:cca_platform#1.0.0`` with ``tag:arm.com,2023:realm#1.0.0`` or
``tag:arm.com,2024:realm#2.0.0`` (RAK as a CBOR-encoded COSE_Key; 2.0.0 also makes the realm
instance id and MEC policy mandatory).

A platform token alone (tag 18, as the Islet HES hands out) is not realm evidence: it has no
realm measurement and no realm challenge. :func:`parse` refuses it with that reason;
:func:`parse_platform_token` parses it for :func:`.verify.verify_platform_token`, whose
result is its own type and can never be validated as an enclave's evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from cctrain.attestation.cose import (
    CoseSign1,
    ec_key_from_cose,
    ec_key_from_point,
    loads_strict,
    parse_sign1,
)
from cctrain.errors import EvidenceParseError

CCA_TOKEN_TAG = 399
CMW_COLLECTION_TAG = 907
#: CMW record type of each token in a tag-907 collection (application/eat+cwt in COSE_Sign1).
CMW_EAT_COSE_SIGN1 = 263
PLATFORM_KEY = 44234
REALM_KEY = 44241

PLATFORM_PROFILE_LEGACY = "http://arm.com/CCA-SSD/1.0.0"
PLATFORM_PROFILE_2023 = "tag:arm.com,2023:cca_platform#1.0.0"
PLATFORM_PROFILES = (PLATFORM_PROFILE_LEGACY, PLATFORM_PROFILE_2023)
REALM_PROFILE_2023 = "tag:arm.com,2023:realm#1.0.0"
REALM_PROFILE_2024 = "tag:arm.com,2024:realm#2.0.0"
REALM_PROFILES = (REALM_PROFILE_2023, REALM_PROFILE_2024)

#: Hash algorithm names (IANA Named Information registry) -> digest size.
HASH_SIZES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}

#: Platform claims: key -> name. All mandatory except the verification service.
PLATFORM_CLAIMS = {
    265: "profile",
    10: "challenge",
    2396: "implementation_id",
    256: "instance_id",
    2401: "config",
    2395: "lifecycle",
    2399: "sw_components",
    2400: "verification_service",
    2402: "hash_alg",
}
PLATFORM_OPTIONAL = frozenset({2400})
#: Realm claims: key -> name.
REALM_CLAIMS = {
    10: "challenge",
    265: "profile",
    44235: "personalization",
    44236: "hash_alg",
    44237: "rak",
    44238: "rim",
    44239: "rems",
    44240: "rak_hash_alg",
    256: "instance_id",
    44243: "mec_policy",
}
_REALM_BASE = frozenset({10, 44235, 44236, 44237, 44238, 44239, 44240})
REALM_MANDATORY: dict[str | None, frozenset[int]] = {
    None: _REALM_BASE,
    REALM_PROFILE_2023: _REALM_BASE | {265},
    REALM_PROFILE_2024: _REALM_BASE | {265, 256, 44243},
}
#: Software component map keys (PSA token, RFC 9783 §4.4.1): measurement value and signer
#: id are mandatory.
SW_COMPONENT_KEYS = {
    1: "type",
    2: "measurement",
    3: "epoch",
    4: "version",
    5: "signer_id",
    6: "hash_alg",
}
SW_COMPONENT_MANDATORY = frozenset({2, 5})

#: PSA security lifecycle (RFC 9783 §4.3.1): the high byte is the state, the low byte is
#: IMPLEMENTATION DEFINED. Only ``secured`` is a production state; cctrain reports every
#: other one as debug (the device is not locked, or is being debugged, or is retired).
LIFECYCLE_STATES = {
    0x00: "unknown",
    0x10: "assembly-and-test",
    0x20: "psa-rot-provisioning",
    0x30: "secured",
    0x40: "non-psa-rot-debug",
    0x50: "recoverable-psa-rot-debug",
    0x60: "decommissioned",
}
LIFECYCLE_SECURED = "secured"

UEID_RAND = 0x01


def lifecycle_state(value: int) -> str | None:
    """The PSA lifecycle state name of a lifecycle claim, or None when out of range."""
    if not 0 <= value <= 0xFFFF:
        return None
    return LIFECYCLE_STATES.get(value >> 8)


@dataclass(frozen=True)
class SwComponent:
    measurement: bytes
    signer_id: bytes
    type: str | None = None
    version: str | None = None
    hash_alg: str | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class PlatformClaims:
    profile: str
    challenge: bytes
    implementation_id: bytes
    instance_id: bytes
    config: bytes
    lifecycle: int
    lifecycle_state: str
    sw_components: tuple[SwComponent, ...]
    hash_alg: str
    verification_service: str | None
    #: Well-formed but irregular claims, reported by validation (an instance id without
    #: the UEID type byte, as the older Islet HES build writes it).
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class RealmClaims:
    profile: str | None
    challenge: bytes
    personalization: bytes
    hash_alg: str
    rim: bytes
    rems: tuple[bytes, bytes, bytes, bytes]
    #: The RAK claim's bytes exactly as the token carries them (a raw point or an encoded
    #: COSE_Key): the platform challenge is their hash.
    rak_claim: bytes
    rak: ec.EllipticCurvePublicKey
    rak_hash_alg: str
    instance_id: bytes | None
    mec_policy: int | str | None


@dataclass(frozen=True)
class PlatformToken:
    sign1: CoseSign1
    claims: PlatformClaims


@dataclass(frozen=True)
class CcaToken:
    """A parsed (not verified) CCA token: both COSE_Sign1 messages and their claims."""

    form: str  # "tag-399" | "cmw-907"
    platform: PlatformToken
    realm_sign1: CoseSign1
    realm: RealmClaims


def sniff(raw: bytes) -> bool:
    """Tag 399 (``d9 01 8f``) or tag 907 (``d9 03 8b``) at the start."""
    return raw[:3] in (b"\xd9\x01\x8f", b"\xd9\x03\x8b")


# --------------------------------------------------------------------------- claim helpers


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Claims:
    """Reads typed claims out of one claims map, collecting every problem."""

    def __init__(self, claims: Mapping[Any, Any], names: Mapping[int, str], what: str) -> None:
        self.claims = claims
        self.names = names
        self.what = what
        self.problems: list[str] = []
        unknown = [k for k in claims if not _is_int(k) or k not in names]
        if unknown:
            self.problems.append(f"{what}: unknown claim(s) {', '.join(repr(k) for k in unknown)}")

    def _name(self, key: int) -> str:
        return f"{self.what} claim {key} ({self.names[key]})"

    def require(self, keys: frozenset[int]) -> None:
        missing = sorted(k for k in keys if k not in self.claims)
        for k in missing:
            self.problems.append(f"{self._name(k)}: mandatory claim missing")

    def bstr(self, key: int, sizes: Sequence[int] | None = None) -> bytes | None:
        if key not in self.claims:
            return None
        v = self.claims[key]
        if not isinstance(v, bytes):
            self.problems.append(f"{self._name(key)}: want a byte string, got {type(v).__name__}")
            return None
        if sizes is not None and len(v) not in sizes:
            want = " or ".join(str(s) for s in sizes)
            self.problems.append(f"{self._name(key)}: {len(v)} bytes, want {want}")
            return None
        return v

    def tstr(self, key: int, allowed: Sequence[str] | None = None) -> str | None:
        if key not in self.claims:
            return None
        v = self.claims[key]
        if not isinstance(v, str):
            self.problems.append(f"{self._name(key)}: want a text string, got {type(v).__name__}")
            return None
        if allowed is not None and v not in allowed:
            self.problems.append(f"{self._name(key)}: {v!r}, want one of {list(allowed)}")
            return None
        return v

    def uint(self, key: int, maximum: int) -> int | None:
        if key not in self.claims:
            return None
        v = self.claims[key]
        if not _is_int(v) or not 0 <= v <= maximum:
            self.problems.append(f"{self._name(key)}: want an unsigned integer <= {maximum}")
            return None
        return int(v)


def _payload_map(sign1: CoseSign1, what: str) -> Mapping[Any, Any]:
    claims = loads_strict(sign1.payload, f"{what} claims")
    if not isinstance(claims, Mapping):
        raise EvidenceParseError(f"{what}: the claims are not a CBOR map")
    return claims


def _fail(problems: list[str]) -> None:
    if problems:
        raise EvidenceParseError("; ".join(problems))


# --------------------------------------------------------------------------- platform token


def _sw_component(item: Any, i: int, what: str, problems: list[str]) -> SwComponent | None:
    where = f"{what} sw_components[{i}]"
    if not isinstance(item, Mapping):
        problems.append(f"{where}: want a map, got {type(item).__name__}")
        return None
    c = _Claims(item, SW_COMPONENT_KEYS, where)
    c.require(SW_COMPONENT_MANDATORY)
    measurement = c.bstr(2)
    signer_id = c.bstr(5)
    comp_type, version, desc = c.tstr(1), c.tstr(4), c.tstr(6)
    epoch = c.uint(3, 0xFFFFFFFF)
    if measurement is not None and not measurement:
        c.problems.append(f"{where}: empty measurement")
    problems.extend(c.problems)
    if c.problems or measurement is None or signer_id is None:
        return None
    return SwComponent(measurement, signer_id, comp_type, version, desc, epoch)


def _platform_claims(claims: Mapping[Any, Any], what: str) -> PlatformClaims:
    c = _Claims(claims, PLATFORM_CLAIMS, what)
    c.require(frozenset(PLATFORM_CLAIMS) - PLATFORM_OPTIONAL)
    profile = c.tstr(265, PLATFORM_PROFILES)
    challenge = c.bstr(10, (32, 48, 64))
    impl_id = c.bstr(2396, (32,))
    instance_id = c.bstr(256, (32, 33))
    config = c.bstr(2401)
    lifecycle = c.uint(2395, 0xFFFF)
    hash_alg = c.tstr(2402, tuple(HASH_SIZES))
    service = c.tstr(2400)
    irregular: list[str] = []
    if instance_id is not None:
        if len(instance_id) == 33 and instance_id[0] != UEID_RAND:
            c.problems.append(
                f"{what} claim 256 (instance_id): UEID type 0x{instance_id[0]:02x}, want 0x01 "
                "(RAND)"
            )
        elif len(instance_id) == 32:
            irregular.append(
                "platform instance_id: 32 bytes without the UEID type byte 0x01 (an older "
                "HES build; the CCA profile wants 0x01 || SHA-256(CPAK))"
            )
    state = None
    if lifecycle is not None:
        state = lifecycle_state(lifecycle)
        if state is None:
            c.problems.append(
                f"{what} claim 2395 (lifecycle): 0x{lifecycle:04x} is no PSA lifecycle state"
            )
    comps: list[SwComponent] = []
    raw_comps = claims.get(2399)
    if 2399 in claims:
        if not isinstance(raw_comps, Sequence) or isinstance(raw_comps, (str, bytes)):
            c.problems.append(f"{what} claim 2399 (sw_components): want an array")
        elif not raw_comps:
            c.problems.append(f"{what} claim 2399 (sw_components): empty")
        else:
            for i, item in enumerate(raw_comps):
                comp = _sw_component(item, i, what, c.problems)
                if comp is not None:
                    comps.append(comp)
    _fail(c.problems)
    assert profile is not None and challenge is not None and impl_id is not None
    assert instance_id is not None and config is not None and lifecycle is not None
    assert state is not None and hash_alg is not None
    return PlatformClaims(
        profile=profile,
        challenge=challenge,
        implementation_id=impl_id,
        instance_id=instance_id,
        config=config,
        lifecycle=lifecycle,
        lifecycle_state=state,
        sw_components=tuple(comps),
        hash_alg=hash_alg,
        verification_service=service,
        problems=tuple(irregular),
    )


def _platform_token(data: Any, what: str) -> PlatformToken:
    if not isinstance(data, bytes):
        raise EvidenceParseError(f"{what}: want a byte string holding a COSE_Sign1")
    sign1 = parse_sign1(data, what, tag="either")
    return PlatformToken(sign1, _platform_claims(_payload_map(sign1, what), what))


def parse_platform_token(raw: bytes) -> PlatformToken:
    """A CCA platform token on its own (a tagged or untagged COSE_Sign1)."""
    return _platform_token(bytes(raw), "CCA platform token")


# --------------------------------------------------------------------------- realm token


def _rak(raw: bytes, profile: str | None, what: str) -> ec.EllipticCurvePublicKey:
    if profile is None:
        # Legacy realm token (RMM 1.0 EAC5): the RAK is a raw uncompressed point.
        return ec_key_from_point(raw, f"{what} claim 44237 (rak)")
    # 2023+ profiles: bstr .cbor COSE_Key.
    return ec_key_from_cose(loads_strict(raw, f"{what} claim 44237 (rak) COSE_Key"), what)


def _realm_claims(claims: Mapping[Any, Any], what: str) -> RealmClaims:
    c = _Claims(claims, REALM_CLAIMS, what)
    profile = c.tstr(265, REALM_PROFILES)
    if 265 not in claims or profile is not None:
        c.require(REALM_MANDATORY[profile])
    challenge = c.bstr(10, (64,))
    perso = c.bstr(44235, (64,))
    hash_alg = c.tstr(44236, tuple(HASH_SIZES))
    size = HASH_SIZES.get(hash_alg or "")
    rim = c.bstr(44238, (size,) if size else None)
    rak_claim = c.bstr(44237)
    rak_hash_alg = c.tstr(44240, tuple(HASH_SIZES))
    instance_id = c.bstr(256, (33,))
    if instance_id is not None and instance_id[0] != UEID_RAND:
        c.problems.append(f"{what} claim 256 (instance_id): UEID type must be 0x01 (RAND)")
    mec: int | str | None = None
    if 44243 in claims:
        v = claims[44243]
        if _is_int(v) and 0 <= v <= 0xFFFFFFFF:
            mec = int(v)
        elif isinstance(v, str) and v in ("private", "shared"):
            mec = v
        else:
            c.problems.append(
                f"{what} claim 44243 (mec_policy): want an unsigned integer or 'private'/'shared'"
            )
    rems: list[bytes] = []
    if 44239 in claims:
        raw_rems = claims[44239]
        if not isinstance(raw_rems, Sequence) or isinstance(raw_rems, (str, bytes)):
            c.problems.append(f"{what} claim 44239 (rems): want an array of 4 byte strings")
        elif len(raw_rems) != 4:
            c.problems.append(f"{what} claim 44239 (rems): {len(raw_rems)} entries, want 4")
        else:
            for i, rem in enumerate(raw_rems):
                if not isinstance(rem, bytes) or (size is not None and len(rem) != size):
                    c.problems.append(
                        f"{what} claim 44239 (rems[{i}]): want a {size or 'digest'}-byte string"
                    )
                else:
                    rems.append(rem)
    rak = None
    if rak_claim is not None and (profile is not None or 265 not in claims):
        try:
            rak = _rak(rak_claim, profile, what)
        except EvidenceParseError as exc:
            c.problems.append(str(exc))
    _fail(c.problems)
    assert challenge is not None and perso is not None and hash_alg is not None
    assert rim is not None and rak_claim is not None and rak is not None
    assert rak_hash_alg is not None and len(rems) == 4
    return RealmClaims(
        profile=profile,
        challenge=challenge,
        personalization=perso,
        hash_alg=hash_alg,
        rim=rim,
        rems=(rems[0], rems[1], rems[2], rems[3]),
        rak_claim=rak_claim,
        rak=rak,
        rak_hash_alg=rak_hash_alg,
        instance_id=instance_id,
        mec_policy=mec,
    )


# --------------------------------------------------------------------------- the collection


def _entry(value: Any, form: str, what: str) -> Any:
    if form == "tag-399":
        return value
    if (
        not isinstance(value, Sequence)
        or isinstance(value, (str, bytes))
        or len(value) != 2
        or value[0] != CMW_EAT_COSE_SIGN1
        or not _is_int(value[0])
    ):
        raise EvidenceParseError(
            f"{what}: a CMW collection entry must be the record [{CMW_EAT_COSE_SIGN1}, bstr]"
        )
    return value[1]


def parse(raw: bytes) -> CcaToken:
    """Parse a CCA token (tag 399 or tag-907 CMW collection); EvidenceParseError otherwise."""
    top = loads_strict(raw, "CCA token")
    if not isinstance(top, cbor2.CBORTag):
        raise EvidenceParseError("CCA token: want CBOR tag 399 or 907, got an untagged item")
    if top.tag == 18:
        raise EvidenceParseError(
            "CCA token: this is a platform token alone (a COSE_Sign1), not a CCA token: it has "
            "no realm token, so no realm measurement and no realm challenge to bind; "
            "cctrain.attestation.arm_cca.verify_platform_token checks it on its own"
        )
    if top.tag not in (CCA_TOKEN_TAG, CMW_COLLECTION_TAG):
        raise EvidenceParseError(f"CCA token: CBOR tag {top.tag}, want 399 or 907")
    form = "tag-399" if top.tag == CCA_TOKEN_TAG else "cmw-907"
    body = top.value
    if not isinstance(body, Mapping):
        raise EvidenceParseError("CCA token: the collection is not a map")
    if set(body) != {PLATFORM_KEY, REALM_KEY}:
        raise EvidenceParseError(
            f"CCA token: collection keys {sorted(map(repr, body))}, want exactly 44234 "
            "(platform) and 44241 (realm)"
        )
    platform = _platform_token(_entry(body[PLATFORM_KEY], form, "platform token"), "platform token")
    realm_raw = _entry(body[REALM_KEY], form, "realm token")
    if not isinstance(realm_raw, bytes):
        raise EvidenceParseError("realm token: want a byte string holding a COSE_Sign1")
    realm_sign1 = parse_sign1(realm_raw, "realm token", tag="either")
    realm = _realm_claims(_payload_map(realm_sign1, "realm token"), "realm token")
    return CcaToken(form=form, platform=platform, realm_sign1=realm_sign1, realm=realm)
