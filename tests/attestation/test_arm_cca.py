"""Arm CCA: every vector in ../shared/attestation-vectors/arm-cca yields PROVENANCE-batch2.md's
outcome with its named CPAK, and every tampering fails for the right reason.

Mutations (flipped bytes, swapped platform tokens, changed headers, malformed CBOR) are made
in memory from the vectors; tokens that need a new challenge or lifecycle are signed with the
test keys of :mod:`tests.attestation.cca_forge`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from cctrain.attestation.arm_cca import (
    parse,
    parse_platform_token,
    validate,
    verify,
    verify_platform_token,
)
from cctrain.attestation.base import Evidence, VerifiedClaims, get_platform
from cctrain.attestation.cose import load_anchor_key, loads_strict
from cctrain.attestation.pipeline import detect_platform, validate_claims, verify_evidence
from cctrain.attestation.verify_cli import run_attest_verify
from cctrain.cli.main import main
from cctrain.errors import (
    AttestationError,
    EvidenceParseError,
    EvidenceValidationError,
    EvidenceVerificationError,
)
from tests.attestation import cca_forge

TFA = "arm_tfa_cpak_public.pem"
HES = "islet_hes_cpak_public.bin"


@dataclass(frozen=True)
class Vector:
    file: str
    cpak: str
    form: str
    platform_profile: str
    realm_profile: str | None
    platform_challenge: str
    realm_challenge: str  # prefix...suffix as PROVENANCE gives it, or the full value
    rim: str
    lifecycle: int
    components: int
    realm_hash_alg: str = "sha-256"
    rems: tuple[str, ...] = ("00" * 32,) * 4
    instance_id_binding: str = "not-cpak-derived"


LEGACY = "http://arm.com/CCA-SSD/1.0.0"
P2023 = "tag:arm.com,2023:cca_platform#1.0.0"
TFA_CHALLENGE = "b5973cb68baa9fc55558786b7ec67f69e40df5ba5aa921cd0c27f40587a011ea"
REM1 = "7d43aefe4c6a955cd0753bccee2e707232d2b44b84c4607ac925597419ac104d"
REM3 = "9e6f6535ee6cf18be0eae95d0a2fd6876ccdc216a172e8f15607fe1a814d0b6c"

VECTORS = [
    Vector(
        "islet_fvp-hes_realm-verifier_token.bin",
        HES,
        "tag-399",
        LEGACY,
        None,
        "5353e0306715457cb8c83074a8b78888c920b9315e35d9ec9523434bed443076",
        "4a48877bc1b88630...d70224f2",
        "59587944ebd7baadb8d4790b55510c25181c83981a92c6970d7080a0cf85d3be",
        0x3000,
        9,
        instance_id_binding="ueid-cpak",
    ),
    Vector(
        "islet_fvp-hes_ratls-client_token.bin",
        HES,
        "tag-399",
        LEGACY,
        None,
        "21baae2c2a77f5dfc220e548221e3456a826677d9d4ac2532a024e0f610c10b2",
        "",
        "fdd82b3e2ef1da0091a3a9ce22549c4258265968d9c6487ea9886664b94a9b61",
        0x3000,
        2,
        instance_id_binding="ueid-cpak",
    ),
    Vector(
        "islet_fvp-tfa_rsictl_token.bin",
        TFA,
        "tag-399",
        LEGACY,
        None,
        TFA_CHALLENGE,
        "ad29c1d9...5bdc0f35",
        "08edc51c32a64743ebe0746c79466ad0e6ac84bc2951f53c9220afecf0013d00",
        0x3003,
        4,
        rems=("00" * 32, REM1, "00" * 32, REM3),
    ),
    Vector(
        "veraison-ccatoken_tf-rmm_cca_token.cbor",
        TFA,
        "tag-399",
        LEGACY,
        None,
        TFA_CHALLENGE,
        "ab" * 64,
        "00" * 32,
        0x3003,
        4,
    ),
    Vector(
        "tf-m-tools_cca_token.cbor",
        TFA,
        "cmw-907",
        LEGACY,
        None,
        TFA_CHALLENGE,
        "ab" * 64,
        "00" * 32,
        0x3003,
        4,
    ),
    Vector(
        "tf-m-tools_cca_example_token.cbor",
        TFA,
        "cmw-907",
        P2023,
        "tag:arm.com,2024:realm#2.0.0",
        "0d22e08a98469058486318283489bdb36f09dbefeb1864df433fa6e54ea2d711",
        "",
        "311314ab73620350cf758834ae5c65d9e8c2dc7febe6e7d9654bbe864e300d49",
        0x3003,
        13,
        rems=(
            "24d5b0a296cc05cbd8068c5067c5bd473b770dda6ae082fe3ba30abe3f9a6ab1",
            "788fc090bfc6b8ed903152ba8414e73daf5b8c7bb1e79ad502ab0699b659ed16",
            "dac46a58415dc3a00d7a741852008e9cae64f52d03b9f76d76f4b3644fefc416",
            "32c6afc627e55585c03155359f331a0e225f6840db947dd96efab81be2671939",
        ),
    ),
    Vector(
        "trustee_cca-example-token.cbor",
        TFA,
        "tag-399",
        LEGACY,
        None,
        TFA_CHALLENGE,
        "57e979ae...c8b85a96",
        "ae87fbf7f105e71a7827cb6f0896889c73d2beaf4830d4f9cb05e3e96c3fc7b4"
        "faa04caf36a26bd094cf9c7b738617e4c189aaee184dedda5d7a03c39dbdac7c",
        0x3003,
        13,
        realm_hash_alg="sha-512",
        rems=("00" * 64,) * 4,
    ),
]
IDS = [v.file for v in VECTORS]


@pytest.fixture(scope="module")
def cca(vectors_dir: Path) -> Path:
    d = vectors_dir / "arm-cca"
    if not (vectors_dir / "PROVENANCE-batch2.md").is_file() or not d.is_dir():
        pytest.skip(f"Arm CCA vectors not found at {d}")
    return d


def _key(cca: Path, name: str) -> Any:
    return load_anchor_key((cca / name).read_bytes(), name)


def _verified(cca: Path, v: Vector) -> VerifiedClaims:
    return verify(parse((cca / v.file).read_bytes()), trust_keys=[_key(cca, v.cpak)])


def _other(cpak: str) -> str:
    return TFA if cpak == HES else HES


# --------------------------------------------------------------------------- positive vectors


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_vector_verifies_with_its_cpak_with_provenance_claims(cca: Path, v: Vector) -> None:
    claims = _verified(cca, v)
    plat, realm = claims.extra["platform"], claims.extra["realm"]
    assert claims.platform == "arm-cca" and claims.signer == "cca-cpak"
    assert claims.extra["token_form"] == v.form
    assert claims.measurement.hex() == v.rim == realm["rim"].hex()
    assert len(claims.report_data) == 64 and claims.nonce == claims.report_data
    assert claims.report_data == realm["challenge"]
    if "..." in v.realm_challenge:
        head, tail = v.realm_challenge.split("...")
        assert claims.report_data.hex().startswith(head) and claims.report_data.hex().endswith(tail)
    elif v.realm_challenge:
        assert claims.report_data.hex() == v.realm_challenge
    assert plat["challenge"].hex() == v.platform_challenge
    assert plat["profile"] == v.platform_profile and realm["profile"] == v.realm_profile
    assert plat["lifecycle"] == v.lifecycle and plat["lifecycle_state"] == "secured"
    assert claims.debug is False
    assert len(plat["sw_components"]) == v.components
    assert realm["hash_alg"] == v.realm_hash_alg
    assert [r.hex() for r in realm["rems"]] == list(v.rems)
    assert plat["instance_id_binding"] == v.instance_id_binding
    assert claims.extra["claim_problems"] == []
    # The binding, recomputed from the claim's bytes as carried.
    h = getattr(hashlib, realm["rak_hash_alg"].replace("-", ""))
    assert h(realm["rak"]).digest() == plat["challenge"]
    json.dumps(claims.to_json())  # every claim is JSON-able


def test_provenance_details_of_the_islet_and_example_tokens(cca: Path) -> None:
    hes = _verified(cca, VECTORS[0]).extra["platform"]
    assert hes["implementation_id"].hex() == "aa" * 8 + "bb" * 8 + "cc" * 8 + "dd" * 8
    assert hes["instance_id"].hex().startswith("011be9c336d7a70b")
    assert hes["config"].hex() == "efbeadde"
    comps = {c["type"]: c for c in hes["sw_components"]}
    assert comps["BL2"]["hash_alg"] == "sha-512" and len(comps["BL2"]["measurement"]) == 64
    assert comps["RMM"]["measurement"].hex().startswith("6d3abde5a55f98d7")
    # HES instance id = 0x01 || SHA-256(CPAK point), and SHA-256(CPAK) is the file's hash.
    raw_cpak = (cca / HES).read_bytes()
    assert hes["instance_id"] == b"\x01" + hashlib.sha256(raw_cpak).digest()

    example = _verified(cca, VECTORS[5])
    assert example.extra["platform"]["config"].hex() == "cfcfcfcf"
    realm = example.extra["realm"]
    assert realm["rak"][:1] != b"\x04"  # a COSE_Key, not a raw point
    assert isinstance(loads_strict(realm["rak"], "rak"), dict)
    assert realm["mec_policy"] == 1 and realm["instance_id"] is not None
    types = [c["type"] for c in example.extra["platform"]["sw_components"]]
    assert types[0] == "RSE_BL1_2" and types[-1] == "SOC_FW_CONFIG"

    veraison = _verified(cca, VECTORS[3]).extra["realm"]
    assert veraison["personalization"] == b"The quick brown fox jumps over 13 lazy dogs." + (
        b"The quick brown fox "
    )
    assert _verified(cca, VECTORS[6]).extra["realm"]["rak_hash_alg"] == "sha-256"


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_sniffed_as_arm_cca(cca: Path, v: Vector) -> None:
    assert detect_platform((cca / v.file).read_bytes()) == "arm-cca"


# --------------------------------------------------------------------------- the lone platform token


def test_a_lone_platform_token_is_not_realm_evidence(cca: Path) -> None:
    raw = (cca / "islet_fvp-hes_platform_token.bin").read_bytes()
    with pytest.raises(EvidenceParseError, match="platform token alone.*no realm"):
        parse(raw)


def test_a_lone_platform_token_verifies_on_its_own_and_flags_its_instance_id(cca: Path) -> None:
    raw = (cca / "islet_fvp-hes_platform_token.bin").read_bytes()
    result = verify_platform_token(raw, trust_keys=[_key(cca, HES)])
    assert result.claims.challenge.hex().startswith("21baae2c")
    assert result.instance_id_binding == "cpak-hash-without-ueid-type"
    assert len(result.claims.instance_id) == 32
    assert any("without the UEID type byte" in p for p in result.claims.problems)
    # Same claims as the platform token inside the ratls-client token, but the instance id.
    full = parse((cca / "islet_fvp-hes_ratls-client_token.bin").read_bytes()).platform.claims
    assert full.instance_id == b"\x01" + result.claims.instance_id
    assert full.sw_components == result.claims.sw_components
    assert result.to_json()["platform"]["lifecycle_state"] == "secured"
    with pytest.raises(EvidenceVerificationError, match="none of the 1 trusted CPAK"):
        verify_platform_token(parse_platform_token(raw), trust_keys=[_key(cca, TFA)])


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_wrong_cpak_and_no_cpak_are_refused(cca: Path, v: Vector) -> None:
    token = parse((cca / v.file).read_bytes())
    with pytest.raises(EvidenceVerificationError) as exc:
        verify(token, trust_keys=[_key(cca, _other(v.cpak))])
    assert list(exc.value.errors) == [
        "platform token: the ES384 signature verifies with none of the 1 trusted CPAK(s) "
        "(ES384 signature does not verify)"
    ]
    with pytest.raises(EvidenceVerificationError, match="no CPAK given.*--key"):
        verify(token, trust_keys=[])
    # Several keys: the right one among them is enough.
    verify(token, trust_keys=[_key(cca, _other(v.cpak)), _key(cca, v.cpak)])


def _inner(raw: bytes) -> tuple[int, bytes, bytes]:
    top = cbor2.loads(raw)
    get = (lambda e: e[1]) if top.tag == 907 else (lambda e: e)
    return top.tag, get(top.value[44234]), get(top.value[44241])


def _collection(tag: int, platform: bytes, realm: bytes) -> bytes:
    wrap = (lambda b: [263, b]) if tag == 907 else (lambda b: b)
    return bytes(cbor2.dumps(cbor2.CBORTag(tag, {44234: wrap(platform), 44241: wrap(realm)})))


@pytest.mark.parametrize(
    ("realm_from", "platform_from"),
    [
        ("islet_fvp-hes_realm-verifier_token.bin", "islet_fvp-hes_ratls-client_token.bin"),
        ("islet_fvp-hes_ratls-client_token.bin", "islet_fvp-tfa_rsictl_token.bin"),
        ("tf-m-tools_cca_example_token.cbor", "trustee_cca-example-token.cbor"),
    ],
)
def test_a_realm_token_bound_to_another_platform_token_is_refused(
    cca: Path, realm_from: str, platform_from: str
) -> None:
    tag, _, realm = _inner((cca / realm_from).read_bytes())
    _, platform, _ = _inner((cca / platform_from).read_bytes())
    token = parse(_collection(tag, platform, realm))
    with pytest.raises(EvidenceVerificationError) as exc:
        verify(token, trust_keys=[_key(cca, TFA), _key(cca, HES)])
    # Both signatures are genuine: the binding is the only failure.
    assert len(exc.value.errors) == 1
    assert exc.value.errors[0].startswith("binding: platform challenge")
    assert "was not issued on this platform" in exc.value.errors[0]


def _flip_positions(start: int, length: int, count: int) -> list[int]:
    return sorted({start + (i * (length - 1)) // (count - 1) for i in range(count)})


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_byte_flips_in_signed_regions_are_refused(cca: Path, v: Vector) -> None:
    raw = (cca / v.file).read_bytes()
    keys = [_key(cca, v.cpak)]
    _, platform, realm = _inner(raw)
    flips = 0
    for which, inner in (("platform", platform), ("realm", realm)):
        base = raw.index(inner)
        msg = cbor2.loads(inner).value
        prot_at = base + inner.index(msg[0])
        payload_at = base + inner.index(msg[2])
        sig_at = base + inner.index(msg[3])
        positions = [prot_at + 1, prot_at + 2]  # the protected header's map and alg label
        positions += _flip_positions(payload_at, len(msg[2]), 12)
        for pos in positions:
            bad = bytearray(raw)
            bad[pos] ^= 0x01
            with pytest.raises(AttestationError):
                verify(parse(bytes(bad)), trust_keys=keys)
            flips += 1
        for pos in _flip_positions(sig_at, len(msg[3]), 4):
            bad = bytearray(raw)
            bad[pos] ^= 0x80
            with pytest.raises(EvidenceVerificationError, match=f"{which} token"):
                verify(parse(bytes(bad)), trust_keys=keys)
    assert flips >= 20


def test_no_single_flipped_byte_anywhere_in_a_token_is_accepted(cca: Path) -> None:
    raw = (cca / "islet_fvp-hes_ratls-client_token.bin").read_bytes()
    keys = [_key(cca, HES), _key(cca, TFA)]
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        with pytest.raises(AttestationError):
            verify(parse(bytes(bad)), trust_keys=keys)


@pytest.mark.parametrize("v", [VECTORS[0], VECTORS[5]], ids=["legacy", "2023"])
def test_a_wrong_algorithm_in_either_protected_header_is_refused(cca: Path, v: Vector) -> None:
    raw = (cca / v.file).read_bytes()
    tag, platform, realm = _inner(raw)
    es384 = cbor2.dumps({1: -35})
    assert es384 in platform[:8] and es384 in realm[:8]
    es512 = cbor2.dumps({1: -36})  # same length: the token's shape is unchanged
    for bad_platform, bad_realm, who in (
        (platform.replace(es384, es512, 1), realm, "platform token"),
        (platform, realm.replace(es384, es512, 1), "realm token"),
    ):
        token = parse(_collection(tag, bad_platform, bad_realm))
        with pytest.raises(EvidenceVerificationError) as exc:
            verify(token, trust_keys=[_key(cca, v.cpak)])
        assert who in exc.value.errors[0]
        assert "ES512 does not match the key's curve secp384r1" in exc.value.errors[0]
    ps256 = cbor2.dumps({1: -37})
    with pytest.raises(EvidenceVerificationError, match="want ES256, ES384 or ES512"):
        verify(
            parse(_collection(tag, platform.replace(es384, ps256, 1), realm)),
            trust_keys=[_key(cca, v.cpak)],
        )


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_truncated_and_over_long_cbor_is_refused(cca: Path, v: Vector) -> None:
    raw = (cca / v.file).read_bytes()
    for cut in (1, 2, 97, len(raw) // 2, len(raw) - 3):
        with pytest.raises(EvidenceParseError, match="not well-formed CBOR"):
            parse(raw[: len(raw) - cut])
    with pytest.raises(EvidenceParseError, match="byte\\(s\\) after the CBOR item"):
        parse(raw + b"\x00")
    # An inner token with a trailing byte (its bstr one byte longer).
    tag, platform, realm = _inner(raw)
    with pytest.raises(EvidenceParseError, match="platform token: 1 byte"):
        parse(_collection(tag, platform + b"\x00", realm))
    with pytest.raises(EvidenceParseError, match="realm token: 1 byte"):
        parse(_collection(tag, platform, realm + b"\xf6"))


def test_indefinite_length_and_duplicate_key_maps_are_refused(cca: Path) -> None:
    raw = (cca / "islet_fvp-hes_realm-verifier_token.bin").read_bytes()
    assert raw[:4] == bytes.fromhex("d9018fa2")  # tag 399, a definite map of 2
    indefinite = raw[:3] + b"\xbf" + raw[4:] + b"\xff"
    assert cbor2.loads(indefinite).tag == 399  # lax CBOR would take it
    with pytest.raises(EvidenceParseError, match="not well-formed CBOR"):
        parse(indefinite)
    _, platform, realm = _inner(raw)
    entry = cbor2.dumps(44234) + cbor2.dumps(platform)
    duplicate = raw[:3] + b"\xa3" + raw[4:] + entry
    with pytest.raises(EvidenceParseError, match="not well-formed CBOR"):
        parse(duplicate)
    # Inside the signed payload: a duplicate claim (claim 10 twice) and an indefinite map.
    msg = list(cbor2.loads(platform).value)
    payload = msg[2]
    assert payload[0] == 0xA9  # a map of 9 claims
    dup_payload = b"\xaa" + payload[1:] + cbor2.dumps(10) + cbor2.dumps(b"\x00" * 32)
    indef_payload = b"\xbf" + payload[1:] + b"\xff"
    for bad in (dup_payload, indef_payload):
        forged = bytes(cbor2.dumps(cbor2.CBORTag(18, [msg[0], msg[1], bad, msg[3]])))
        with pytest.raises(EvidenceParseError, match="platform token claims: not well-formed"):
            parse(_collection(399, forged, realm))
    # The COSE_Key RAK of the 2023 profile is decoded strictly too.
    tag, p2023, r2023 = _inner((cca / "tf-m-tools_cca_example_token.cbor").read_bytes())
    rmsg = list(cbor2.loads(r2023).value)
    claims = dict(cbor2.loads(rmsg[2]))
    claims[44237] = b"\xbf" + claims[44237][1:] + b"\xff"
    forged = bytes(cbor2.dumps(cbor2.CBORTag(18, [rmsg[0], rmsg[1], cbor2.dumps(claims), rmsg[3]])))
    with pytest.raises(EvidenceParseError, match="claim 44237 \\(rak\\) COSE_Key"):
        parse(_collection(tag, p2023, forged))


def _with_claims(
    cca: Path, change: Callable[[dict[Any, Any]], None], *, realm: bool = False
) -> bytes:
    """The realm-verifier token with one inner token's claims changed (signature now stale)."""
    raw = (cca / "islet_fvp-hes_realm-verifier_token.bin").read_bytes()
    _, platform, realm_raw = _inner(raw)
    target = realm_raw if realm else platform
    msg = list(cbor2.loads(target).value)
    claims = dict(cbor2.loads(msg[2]))
    change(claims)
    forged = bytes(cbor2.dumps(cbor2.CBORTag(18, [msg[0], msg[1], cbor2.dumps(claims), msg[3]])))
    return _collection(399, platform, forged) if realm else _collection(399, forged, realm_raw)


def test_missing_unknown_and_mistyped_claims_are_all_named(cca: Path) -> None:
    def platform_change(c: dict[Any, Any]) -> None:
        del c[2395]
        del c[2402]
        c[9999] = 1
        c[10] = "not bytes"

    with pytest.raises(EvidenceParseError) as exc:
        parse(_with_claims(cca, platform_change))
    msg = str(exc.value)
    for part in (
        "unknown claim(s) 9999",
        "claim 2395 (lifecycle): mandatory claim missing",
        "claim 2402 (hash_alg): mandatory claim missing",
        "claim 10 (challenge): want a byte string, got str",
    ):
        assert part in msg

    def realm_change(c: dict[Any, Any]) -> None:
        del c[44238]
        c[44239] = c[44239][:3]
        c[44236] = "md5"
        c[44237] = c[44237][:-1]

    with pytest.raises(EvidenceParseError) as exc:
        parse(_with_claims(cca, realm_change, realm=True))
    msg = str(exc.value)
    for part in (
        "claim 44238 (rim): mandatory claim missing",
        "claim 44239 (rems): 3 entries, want 4",
        "claim 44236 (hash_alg): 'md5'",
        "claim 44237 (rak): not an uncompressed P-256/P-384/P-521 point (96 bytes)",
    ):
        assert part in msg

    def components(c: dict[Any, Any]) -> None:
        c[2399] = [{**c[2399][0], 7: 1}, {1: "X"}, "junk"]

    with pytest.raises(EvidenceParseError) as exc:
        parse(_with_claims(cca, components))
    msg = str(exc.value)
    assert "sw_components[0]: unknown claim(s) 7" in msg
    assert "sw_components[1] claim 2 (measurement): mandatory claim missing" in msg
    assert "sw_components[2]: want a map, got str" in msg

    for lifecycle in (0x7000, -1, "secured", True):
        with pytest.raises(EvidenceParseError, match="claim 2395 \\(lifecycle\\)"):
            parse(_with_claims(cca, lambda c, lc=lifecycle: c.__setitem__(2395, lc)))


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        bytes.fromhex("d9018f"),
        bytes.fromhex("d9018fa0"),
        bytes.fromhex("d9018f80"),
        cbor2.dumps(cbor2.CBORTag(399, {44234: b"", 44241: b""})),
        cbor2.dumps(cbor2.CBORTag(399, {44234: 1, 44241: 2})),
        cbor2.dumps(cbor2.CBORTag(907, {44234: [264, b""], 44241: [263, b""]})),
        cbor2.dumps(cbor2.CBORTag(907, {44234: b"", 44241: b""})),
        cbor2.dumps(cbor2.CBORTag(400, {})),
        cbor2.dumps({44234: b"", 44241: b""}),
        b"\xff" * 64,
    ],
)
def test_garbage_is_a_parse_error(garbage: bytes) -> None:
    with pytest.raises(EvidenceParseError):
        parse(garbage)


# --------------------------------------------------------------------------- debug lifecycles


@pytest.mark.parametrize(
    ("lifecycle", "state", "debug"),
    [
        (0x3000, "secured", False),
        (0x30FF, "secured", False),
        (0x0000, "unknown", True),
        (0x1000, "assembly-and-test", True),
        (0x2001, "psa-rot-provisioning", True),
        (0x4000, "non-psa-rot-debug", True),
        (0x5000, "recoverable-psa-rot-debug", True),
        (0x6000, "decommissioned", True),
    ],
)
def test_lifecycle_decides_debug(lifecycle: int, state: str, debug: bool) -> None:
    raw = cca_forge.cca_token(b"\x42" * 64, lifecycle=lifecycle)
    claims = verify(parse(raw), trust_keys=[cca_forge.TEST_CPAK.public_key()])
    assert claims.extra["platform"]["lifecycle_state"] == state
    assert claims.debug is debug
    assert claims.extra["platform"]["instance_id_binding"] == "ueid-cpak"
    ref = {"lifecycles": ["secured"]}
    assert (validate(claims, ref) == []) is (state == "secured")


# --------------------------------------------------------------------------- validation


def _trustee_reference(cca: Path) -> dict[str, Any]:
    rv = json.loads((cca / "trustee_rvstore.json").read_text())
    ta = json.loads((cca / "trustee_tastore.json").read_text())
    plat, realm = rv["platform"][0], rv["realm"][0]
    return {
        "measurements": [realm["initial-measurement"]],
        "rems": [realm["extensible-measurements"]],
        "personalization": realm["personalization-value"],
        "implementation_ids": [plat["implementation-id"], ta[0]["implementation-id"]],
        "platform_configs": [plat["platform-configuration"]],
        "platform_sw_components": [
            {
                "type": c["component-type"],
                "measurement": c["measurement-value"],
                "signer_id": c["signer-id"],
            }
            for c in plat["sw-components"]
        ],
        "lifecycles": ["secured"],
    }


def test_trustee_token_validates_against_trustee_reference_values(cca: Path) -> None:
    claims = _verified(cca, VECTORS[6])
    ref = _trustee_reference(cca)
    assert len(ref["platform_sw_components"]) == 13
    assert validate(claims, ref) == []
    validate_claims(
        claims,
        accepted_platforms=["arm-cca"],
        reference=ref,
        allow_debug=False,
        expected_report_data=claims.report_data,
    )
    # The trust anchor store's CPAK (a JWK) is the TF-A sample CPAK.
    ta = json.loads((cca / "trustee_tastore.json").read_text())[0]
    assert ta["instance-id"] == claims.extra["platform"]["instance_id"].hex()
    point = claims.extra["cpak"]
    import base64

    x = base64.urlsafe_b64decode(ta["pkey"]["x"] + "==")
    assert point == b"\x04" + x + base64.urlsafe_b64decode(ta["pkey"]["y"] + "==")
    # The same reference values refuse the tf-m-tools example token: other RIM and REMs.
    example = _verified(cca, VECTORS[5])
    with pytest.raises(EvidenceValidationError) as exc:
        validate_claims(
            example,
            accepted_platforms=["arm-cca"],
            reference=ref,
            allow_debug=False,
            expected_report_data=example.report_data,
        )
    fields = {m.split(":")[0] for m in exc.value.mismatches}
    assert fields == {"measurement", "rems", "personalization"}


def test_every_reference_mismatch_is_reported_at_once(cca: Path) -> None:
    claims = _verified(cca, VECTORS[6])
    ref = _trustee_reference(cca)
    ref["rems"] = [["11" * 64] * 4]
    ref["personalization"] = "22" * 64
    ref["implementation_ids"] = ["33" * 32]
    ref["platform_configs"] = ["44"]
    ref["lifecycles"] = [0x3000]
    ref["platform_sw_components"] = [
        {"type": "RMM", "measurement": "55" * 32},
        {"type": "NOPE"},
        "66" * 32,
    ]
    ref["realm_hash_algs"] = ["sha-256"]
    ref["require_instance_id_binding"] = True
    problems = validate(claims, ref)
    fields = [p.split(":")[0] for p in problems]
    assert fields == [
        "rems",
        "personalization",
        "implementation_ids",
        "platform_configs",
        "realm_hash_algs",
        "platform_sw_components[0]",
        "platform_sw_components[1]",
        "platform_sw_components[2]",
        "lifecycle",
        "instance_id_binding",
    ]
    assert any("got RMM measurement a1fb50e6" in p for p in problems)
    assert "lifecycle: got 0x3003 (secured), want one of [12288]" in problems
    assert validate(claims, {"rems": "nope", "lifecycles": [1.5]}) != []


def test_islet_tokens_against_islet_realm_verifier_reference(cca: Path) -> None:
    doc = json.loads((cca / "islet_realm-verifier_realm.json").read_text())
    rv = doc["realm"]["reference-values"]
    ref = {"measurements": [rv["rim"]], "rems": rv["rems"], "realm_hash_algs": [rv["hash-algo"]]}
    ok = _verified(cca, VECTORS[0])
    assert validate(ok, ref) == []
    validate_claims(
        ok,
        accepted_platforms=["arm-cca"],
        reference={**ref, "require_instance_id_binding": True},
        allow_debug=False,
        expected_report_data=ok.report_data,
    )
    # The rsictl token carries the second accepted REM set, but another RIM.
    other = _verified(cca, VECTORS[2])
    assert validate(other, ref) == []
    with pytest.raises(EvidenceValidationError) as exc:
        validate_claims(
            other,
            accepted_platforms=["arm-cca"],
            reference=ref,
            allow_debug=False,
            expected_report_data=other.report_data,
        )
    assert [m.split(":")[0] for m in exc.value.mismatches] == ["measurement"]


def test_policy_accepts_the_arm_cca_reference_keys() -> None:
    keys = get_platform("arm-cca").reference_keys
    assert {
        "trust_keys",
        "rems",
        "personalization",
        "platform_sw_components",
        "implementation_ids",
        "lifecycles",
    } <= keys
    assert get_platform("arm-cca").trust_keys is True


def test_pipeline_with_trust_keys_from_bytes(cca: Path) -> None:
    raw = (cca / VECTORS[0].file).read_bytes()
    ev = Evidence(platform="arm-cca", report=raw)
    claims = verify_evidence(ev, trust_keys=[(cca / HES).read_bytes()])
    assert claims.measurement.hex() == VECTORS[0].rim
    with pytest.raises(EvidenceVerificationError, match="no CPAK given"):
        verify_evidence(ev)
    with pytest.raises(EvidenceParseError, match="not to certificates"):
        get_platform("arm-cca").verify(
            parse(raw),
            certificates=[object()],  # type: ignore[list-item]
            collateral=None,
            now=None,  # type: ignore[arg-type]
            getter=None,
            trust_keys=[],
        )


# --------------------------------------------------------------------------- attest verify CLI


def _cli(args: list[str]) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["attest", "verify", *args, "--format", "json"])
    return result.exit_code, json.loads(result.output)


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_cli_verifies_with_the_cpak(cca: Path, v: Vector) -> None:
    code, doc = _cli([str(cca / v.file), "--platform", "arm-cca", "--key", str(cca / v.cpak)])
    assert code == 0, doc["errors"]
    assert doc["platform"] == "arm-cca" and doc["verified"] is True and doc["errors"] == []
    assert doc["measurement"] == v.rim
    assert doc["nonce"] == doc["report_data"] and len(doc["nonce"]) == 128
    assert doc["claims"]["realm"]["rim"] == v.rim
    assert doc["claims"]["platform"]["challenge"] == v.platform_challenge
    assert doc["signer"] == "cca-cpak" and doc["debug"] is False


def test_cli_exit_codes(cca: Path, tmp_path: Path) -> None:
    token = str(cca / VECTORS[5].file)
    code, doc = _cli([token, "--platform", "arm-cca", "--key", str(cca / HES)])
    assert code == 1 and doc["verified"] is False
    assert "none of the 1 trusted CPAK" in doc["errors"][0]
    code, doc = _cli([token, "--platform", "arm-cca"])
    assert code == 1 and "no CPAK given" in doc["errors"][0]
    # auto-detection finds arm-cca; a DER SPKI key works as well as PEM.
    der = tmp_path / "cpak.der"
    der.write_bytes(
        _key(cca, TFA).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, doc = _cli([token, "--key", str(der)])
    assert code == 0 and doc["platform"] == "arm-cca"
    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\xd9\x01\x8f\xa2garbage")
    code, doc = _cli([str(garbage), "--platform", "arm-cca", "--key", str(cca / TFA)])
    assert code == 2 and doc["verified"] is False and doc["errors"]
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    code, doc = _cli([token, "--platform", "arm-cca", "--key", str(bad_key)])
    assert code == 2 and "not an EC public key" in doc["errors"][0]
    code, doc = _cli([token, "--platform", "arm-cca", "--key", str(tmp_path / "missing")])
    assert code == 2 and "cannot read --key" in doc["errors"][0]
    lone = str(cca / "islet_fvp-hes_platform_token.bin")
    code, doc = _cli([lone, "--platform", "arm-cca", "--key", str(cca / HES)])
    assert code == 2 and "platform token alone" in doc["errors"][0]


def test_run_attest_verify_contract(cca: Path) -> None:
    code, doc = run_attest_verify(cca / VECTORS[0].file, platform="arm-cca", key_files=[cca / HES])
    assert code == 0
    assert doc["nonce"].startswith("4a48877bc1b88630") and doc["nonce"].endswith("d70224f2")
    assert doc["claims"]["platform"]["instance_id_binding"] == "ueid-cpak"
