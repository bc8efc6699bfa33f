"""Arm PSA initial attestation tokens (``arm-psa``): parse → verify → validate.

Expected values are the facts in ``../shared/attestation-vectors/PROVENANCE-batch2.md`` (and
upstream's own claims listing ``psatoken_tf-m_psa-2_0_0_claims.diag``). Every positive token
there is signed by TF-M's dummy IAK (``tfm_default_iak_public.pem``). Tokens forged here are
signed with throwaway P-256 keys derived from fixed scalars, with deterministic ECDSA
(RFC 6979), so every run signs the same bytes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from cctrain.attestation import arm_psa
from cctrain.attestation.arm_psa import composite_measurement, instance_id_for
from cctrain.attestation.arm_psa.parse import PSA2_KEYS, PsaToken, lifecycle_name
from cctrain.attestation.base import Evidence, VerifiedClaims
from cctrain.attestation.cose import CoseSign1, load_anchor_key, point_bytes
from cctrain.attestation.pipeline import validate_claims, verify_evidence, verify_for_policy
from cctrain.attestation.verify_cli import run_attest_verify
from cctrain.cli.main import main
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import (
    EvidenceParseError,
    EvidenceValidationError,
    EvidenceVerificationError,
    PolicyError,
)
from cctrain.policy import parse_policy
from tests.consortium import RECIPIENT, policy_document

IAK_PEM = "tfm_default_iak_public.pem"
IAK_POINT = (
    "0479eba90e8bf450a6751576ad4599b07adf938da3bb0bd17d0036ed49a2d0fc3fbfcdfa8956b568bfdb8673e6"
    "48d8b58d929955b14a26c3080f34117d971d6864"
)
INSTANCE_ID = "01fa58755f658627ce5460f29b75296713248cae7ad9e2984b90280efcbcb50248"
IMPL_ID = "aa" * 8 + "bb" * 8 + "cc" * 8 + "dd" * 8
BOOT_SEED = bytes(range(0xA0, 0xC0)).hex()
CHALLENGE_0011 = "00112233445566778899aabbccddeeff" * 4
CHALLENGE_ZERO = "00" * 64
SIGNER_SPE = "bfe6d86f8826f4ff97fb96c4e6fbc4993e4619fc565da26adf34c329489adc38"
SIGNER_NSPE = "b360caf5c98c6b942a4882fa9d4823efb166a9ef6a6e4aa37c1919ed1fccc049"
NSPE_16 = "087d13c68f32aaafb8c4fc0a2253445432009765e216fb85c398c9580522c1bf"

#: file -> what PROVENANCE-batch2.md says of it.
POSITIVE: dict[str, dict[str, Any]] = {
    "zephyr_psa-crypto_tfm-1.4.1_iat.cbor": {
        "profile": "PSA_IOT_PROFILE_1",
        "challenge": CHALLENGE_0011,
        "client_id": -1,
        "certification_reference": "060456527282910010",
        "sw": [
            ("SPE", "0.0.0", "6de10f82e0cffc845a24252beb70d72c6bfc92cdbe5b659ec7341e1cd2805da3"),
            ("NSPE", "0.0.0", "014cf2640d49f8236957fef373977e73c22c4fd29525d8be293214235da922ad"),
        ],
    },
    "zephyr_psa-level-1_iatresp.cbor": {
        "profile": "PSA_IOT_PROFILE_1",
        "challenge": CHALLENGE_0011,
        "client_id": -1,
        "certification_reference": "060456527282910010",
        "sw": [
            (
                "NSPE_SPE",
                "0.0.0",
                "871dac2024e21a8de90aa267a435972c70d47f502ae9153bb320786bfcde437e",
            )
        ],
        "epoch": 0,
        "kid": "078c18f110f432ff780cd8dae58069a2a0d82277cbc66450c8581dd47d96a22e",
    },
    "psatoken_tf-m_psa-iot-1_sign1.bin": {
        "profile": "PSA_IOT_PROFILE_1",
        "challenge": CHALLENGE_ZERO,
        "client_id": 3002,
        "certification_reference": "0604565272829-10010",
        "sw": [
            ("SPE", "1.6.0", "f79f1fe6aa0445d620a017d3d5c5215a20367fc135b6ad355beda66a21b693a9"),
            ("NSPE", "0.0.0", NSPE_16),
        ],
    },
    "psatoken_tf-m_psa-2_0_0_sign1.bin": {
        "profile": "http://arm.com/psa/2.0.0",
        "challenge": CHALLENGE_ZERO,
        "client_id": 3002,
        "certification_reference": "0604565272829-10010",
        "sw": [
            ("SPE", "1.6.0", "96a2ec56c65120a60ce3a53ef8d2082233772aacd5b17935a92be12ac577f685"),
            ("NSPE", "0.0.0", NSPE_16),
        ],
    },
}
PSA2 = "psatoken_tf-m_psa-2_0_0_sign1.bin"
ZEPHYR = "zephyr_psa-crypto_tfm-1.4.1_iat.cbor"

# Throwaway keys (fixed scalars): never any device's.
OTHER = ec.derive_private_key(0x5EED_0001, ec.SECP256R1())
FORGER = ec.derive_private_key(0x5EED_0002, ec.SECP256R1())
P384 = ec.derive_private_key(0x5EED_0003, ec.SECP384R1())


@pytest.fixture(scope="module")
def psa(vectors_dir: Path) -> Path:
    d = vectors_dir / "arm-psa"
    if not (d / IAK_PEM).is_file():
        pytest.skip(f"arm-psa vectors not found in {d}")
    return d


@pytest.fixture(scope="module")
def iak(psa: Path) -> ec.EllipticCurvePublicKey:
    return load_anchor_key((psa / IAK_PEM).read_bytes())


def _read(psa: Path, name: str) -> bytes:
    return (psa / name).read_bytes()


def _verify(raw: bytes, *keys: ec.EllipticCurvePublicKey) -> VerifiedClaims:
    platform = arm_psa.PLATFORM
    return platform.verify(platform.parse(raw), trust_keys=list(keys))


def _sign(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: Mapping[int, Any] | None = None,
    unprotected: Mapping[int, Any] | None = None,
) -> bytes:
    """A tag-18 COSE_Sign1 over ``payload``, as TF-M builds one."""
    prot = cbor2.dumps(dict(protected or {1: -7}))
    tbs = cbor2.dumps(["Signature1", prot, b"", payload])
    h = hashes.SHA256() if key.curve.key_size == 256 else hashes.SHA384()
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(h, deterministic_signing=True)))
    size = (key.curve.key_size + 7) // 8
    sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return cbor2.dumps(cbor2.CBORTag(18, [prot, dict(unprotected or {}), payload, sig]))


def _payload(raw: bytes) -> dict[Any, Any]:
    return dict(cbor2.loads(cbor2.loads(raw).value[2]))


def _forge(claims: Mapping[Any, Any], key: ec.EllipticCurvePrivateKey = FORGER) -> bytes:
    """Re-sign ``claims`` with ``key``, its instance id made that key's (or left as given)."""
    return _sign(cbor2.dumps(dict(claims)), key)


def _own_instance(claims: dict[Any, Any], key: ec.EllipticCurvePrivateKey) -> dict[Any, Any]:
    out = dict(claims)
    out[256 if 256 in out else -75009] = instance_id_for(key.public_key())
    return out


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_every_positive_token_verifies_with_the_tfm_iak_and_yields_its_claims(
    psa: Path, iak: ec.EllipticCurvePublicKey, name: str
) -> None:
    want = POSITIVE[name]
    claims = _verify(_read(psa, name), iak)
    x = claims.extra
    assert claims.platform == "arm-psa" and claims.signer == "psa-iak"
    assert claims.nonce == claims.report_data == bytes.fromhex(want["challenge"])
    assert claims.debug is False and x["lifecycle"] == {"value": 0x3000, "name": "secured"}
    assert x["profile"] == want["profile"]
    assert x["instance_id"].hex() == INSTANCE_ID == claims.chip_id.hex()  # type: ignore[union-attr]
    assert x["implementation_id"].hex() == IMPL_ID and x["boot_seed"].hex() == BOOT_SEED
    assert x["client_id"] == want["client_id"]
    assert x["certification_reference"] == want["certification_reference"]
    assert x["verification_service"] == "www.trustedfirmware.org"
    assert x["iak"].hex() == IAK_POINT and x["no_sw_measurements"] is False
    got = [(c["type"], c["version"], c["measurement"].hex()) for c in x["sw_components"]]
    assert got == want["sw"]
    for c in x["sw_components"]:
        assert c["measurement_desc"] == "SHA256"
        assert c["signer_id"].hex() in {SIGNER_SPE, SIGNER_NSPE}
        assert c.get("epoch") == want.get("epoch")
    pairs = [[t, bytes.fromhex(m)] for t, _, m in want["sw"]]
    pairs.sort(key=lambda p: cbor2.dumps(p, canonical=True))
    assert claims.measurement == hashlib.sha256(cbor2.dumps(pairs)).digest()
    token = arm_psa.PLATFORM.parse(_read(psa, name))
    assert (token.kid.hex() if token.kid else None) == want.get("kid")
    assert "kid" not in x  # unprotected, so unsigned: not a verified claim


def test_the_hex_text_copy_of_the_iatresp_token_is_the_same_token(psa: Path) -> None:
    code, doc = run_attest_verify(
        psa / "zephyr_psa-level-1_iatresp.cbor.txt",
        platform="arm-psa",
        key_files=[psa / IAK_PEM],
    )
    assert code == 0, doc
    ok, ref = run_attest_verify(
        psa / "zephyr_psa-level-1_iatresp.cbor", platform="arm-psa", key_files=[psa / IAK_PEM]
    )
    assert ok == 0 and doc == ref


def _diag_to_python(text: str) -> Any:
    """Upstream's claims listing (CBOR diagnostic notation of ints, text, h'' and arrays)."""
    return ast.literal_eval(re.sub(r"h'([0-9A-Fa-f]*)'", r"'h:\1'", text))


def _as_diag(v: Any) -> Any:
    if isinstance(v, bytes):
        return "h:" + v.hex().upper()
    if isinstance(v, Mapping):
        return {k: _as_diag(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_as_diag(x) for x in v]
    return v


def test_the_psa_2_0_0_token_carries_exactly_upstreams_claims_listing(
    psa: Path, iak: ec.EllipticCurvePublicKey
) -> None:
    want = _diag_to_python((psa / "psatoken_tf-m_psa-2_0_0_claims.diag").read_text())
    raw = _read(psa, PSA2)
    assert _as_diag(_payload(raw)) == want
    assert sorted(want) == sorted(PSA2_KEYS.values())  # every EAT key number, as upstream has them
    x = _verify(raw, iak).extra
    assert x["certification_reference"] == want[2398] and x["client_id"] == want[2394]


def test_the_upstream_malformed_token_is_refused_for_its_trailing_byte_and_empty_header(
    psa: Path,
) -> None:
    raw = _read(psa, "tf-m-tools_malformed_NEGATIVE.cbor")
    with pytest.raises(EvidenceParseError, match=r"1 byte\(s\) after the CBOR item"):
        arm_psa.PLATFORM.parse(raw)
    assert raw[-1:] == b"\x0a"
    with pytest.raises(EvidenceParseError, match="protected header has no algorithm"):
        arm_psa.PLATFORM.parse(raw[:-1])
    code, doc = run_attest_verify(
        psa / "tf-m-tools_malformed_NEGATIVE.cbor", platform="arm-psa", key_files=[psa / IAK_PEM]
    )
    assert code == 2 and "after the CBOR item" in doc["errors"][0]


def test_sniff_tells_psa_tokens_from_cca_and_nitro(vectors_dir: Path, psa: Path) -> None:
    for name in POSITIVE:
        assert arm_psa.PLATFORM.sniff(_read(psa, name))
    cca = vectors_dir / "arm-cca" / "islet_fvp-hes_platform_token.bin"  # tag 18, CCA claims
    nitro = vectors_dir / "aws-nitro" / "veracruz_eu-west-1_2022-11-09.cbor"
    for other in (cca, nitro):
        if other.is_file():
            assert not arm_psa.PLATFORM.sniff(other.read_bytes())
    for junk in (b"", b"\xd2", b"\xd2\x84", b"\xff" * 40):
        assert not arm_psa.PLATFORM.sniff(junk)


# --------------------------------------------------------------------------- keys


def test_no_trust_key_says_an_iak_is_needed(psa: Path) -> None:
    with pytest.raises(EvidenceVerificationError, match="no trusted IAK.*--key IAK.pem"):
        _verify(_read(psa, PSA2))


def test_a_wrong_key_is_refused_and_the_right_one_among_others_is_found(
    psa: Path, iak: ec.EllipticCurvePublicKey
) -> None:
    raw = _read(psa, PSA2)
    with pytest.raises(EvidenceVerificationError) as exc:
        _verify(raw, OTHER.public_key())
    assert exc.value.errors[1] == "trust key 1: ES256 signature does not verify"
    with pytest.raises(EvidenceVerificationError, match="does not match the key's curve"):
        _verify(raw, P384.public_key())
    assert _verify(raw, OTHER.public_key(), P384.public_key(), iak).extra["iak"].hex() == IAK_POINT


def test_trust_keys_as_pem_der_or_raw_point_through_the_pipeline(psa: Path) -> None:
    raw = _read(psa, PSA2)
    pem = _read(psa, IAK_PEM)
    key = load_anchor_key(pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for form in (pem, der, point_bytes(key)):
        claims = verify_evidence(Evidence("arm-psa", raw), trust_keys=[form])
        assert claims.extra["instance_id"].hex() == INSTANCE_ID


def test_an_instance_id_that_is_not_the_signing_keys_is_refused(psa: Path) -> None:
    claims = _payload(_read(psa, PSA2))
    forged = _forge(claims)  # a valid signature by FORGER, but TF-M's instance id
    with pytest.raises(EvidenceVerificationError, match="psa-instance-id: got 01fa5875") as exc:
        _verify(forged, FORGER.public_key())
    assert instance_id_for(FORGER.public_key()).hex() in exc.value.errors[0]
    # Control: the same claims with FORGER's own instance id verify, so the id was the reason.
    ok = _verify(_forge(_own_instance(claims, FORGER)), FORGER.public_key())
    assert ok.extra["instance_id"] == instance_id_for(FORGER.public_key())


# --------------------------------------------------------------------------- tampering


def _signed_positions(raw: bytes) -> dict[str, int]:
    """Offsets of bytes inside the signed regions (protected header, payload) whose flip
    keeps the CBOR well-formed: only the signature can catch them."""
    sign1 = arm_psa.PLATFORM.parse(raw).sign1
    c = _payload(raw)
    prot = raw.index(sign1.protected_raw)
    pos = {"protected alg": prot + 2}  # a1 01 26: -7 -> -8 (still an int)
    for label, key, at in (
        ("challenge", 10, 0),
        ("challenge end", 10, 63),
        ("instance id", 256, 5),
        ("implementation id", 2396, 0),
        ("implementation id end", 2396, 31),
        ("boot seed", 2397, 7),
        ("certification reference", 2398, 3),
        ("verification service", 2400, 4),
        ("boot seed end", 2397, 31),
    ):
        v = c[key]
        pos[label] = raw.index(v if isinstance(v, bytes) else v.encode()) + at
    for i, comp in enumerate(c[2399]):
        pos[f"sw[{i}] measurement"] = raw.index(comp[2]) + 17
        pos[f"sw[{i}] signer id"] = raw.index(comp[5]) + 1
        pos[f"sw[{i}] version"] = raw.index(comp[4].encode()) + 2
    pos["client id"] = raw.index(b"\x19\x09\x5a\x19\x0b\xba") + 5  # 2394: 3002
    pos["lifecycle"] = raw.index(b"\x19\x09\x5b\x19\x30\x00") + 5  # 2395: 0x3000
    return pos


def test_byte_flips_in_the_signed_regions_break_the_signature(
    psa: Path, iak: ec.EllipticCurvePublicKey
) -> None:
    raw = _read(psa, PSA2)
    positions = _signed_positions(raw)
    assert len(positions) >= 10
    for label, at in positions.items():
        bad = bytearray(raw)
        bad[at] ^= 0x01
        with pytest.raises(EvidenceVerificationError) as exc:
            _verify(bytes(bad), iak)
        assert "does not verify" in " ".join(exc.value.errors) or "ES256" in exc.value.errors[0], (
            label
        )


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_no_single_byte_flip_anywhere_is_accepted_or_crashes(
    psa: Path, iak: ec.EllipticCurvePublicKey, name: str
) -> None:
    raw = _read(psa, name)
    token = arm_psa.PLATFORM.parse(raw)
    kid_at = raw.index(token.kid) if token.kid else -1
    for i in range(len(raw)):
        if kid_at <= i < kid_at + 32:
            continue  # the unprotected kid is not signed (see below)
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises((EvidenceParseError, EvidenceVerificationError)):
            _verify(bytes(bad), iak)
    if token.kid:  # a changed kid still verifies, and changes no verified claim
        bad = bytearray(raw)
        bad[kid_at] ^= 0x01
        assert _verify(bytes(bad), iak) == _verify(raw, iak)


def test_a_wrong_algorithm_is_refused_even_with_a_valid_signature(psa: Path) -> None:
    raw = _read(psa, PSA2)
    sign1 = cbor2.loads(raw).value
    es384 = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -35}), {}, sign1[2], sign1[3]]))
    with pytest.raises(EvidenceVerificationError, match="ES384: want ES256"):
        _verify(es384, load_anchor_key(_read(psa, IAK_PEM)))
    claims = _own_instance(_payload(raw), P384)
    signed = _sign(cbor2.dumps(claims), P384, protected={1: -35})
    assert arm_psa.PLATFORM.parse(signed).sign1.verify(P384.public_key()) is None
    with pytest.raises(EvidenceVerificationError, match="ES384: want ES256"):
        _verify(signed, P384.public_key())


@pytest.mark.parametrize(
    ("cut", "why"),
    [
        (lambda r: r[:-1], "not well-formed CBOR"),
        (lambda r: r[:40], "not well-formed CBOR"),
        (lambda r: r[:1], "not well-formed CBOR"),
        (lambda r: b"", "not well-formed CBOR"),
        (lambda r: r + b"\x00", r"1 byte\(s\) after"),
        (lambda r: r + r, r"byte\(s\) after"),
        # The payload's byte-string header claims one byte more than the token holds.
        (lambda r: r.replace(b"\x59\x01\xca", b"\x59\x01\xd3", 1), "not well-formed CBOR"),
    ],
)
def test_truncated_or_over_long_cbor_is_unparseable(psa: Path, cut: Any, why: str) -> None:
    raw = _read(psa, PSA2)
    assert b"\x59\x01\xca" in raw  # payload: bstr of 458 bytes
    with pytest.raises(EvidenceParseError, match=why):
        arm_psa.PLATFORM.parse(cut(raw))


class _Raw(bytes):
    """Pre-encoded CBOR, spliced as is into a map built by :func:`_encode_map`."""


def _encode_map(items: list[tuple[Any, Any]], *, indefinite: bool = False) -> bytes:
    body = b"".join(
        cbor2.dumps(k) + (v if isinstance(v, _Raw) else cbor2.dumps(v)) for k, v in items
    )
    if indefinite:
        return b"\xbf" + body + b"\xff"
    n = len(items)
    head = bytes([0xA0 + n]) if n < 24 else bytes([0xB8, n])
    return head + body


def _rewrap(raw: bytes, payload: bytes) -> bytes:
    s = cbor2.loads(raw).value
    return cbor2.dumps(cbor2.CBORTag(18, [s[0], s[1], payload, s[3]]))


def test_indefinite_length_and_duplicate_keys_are_refused_before_any_signature_check(
    psa: Path, iak: ec.EllipticCurvePublicKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(self: CoseSign1, key: Any) -> str | None:
        raise AssertionError("the signature must not be checked")

    monkeypatch.setattr(CoseSign1, "verify", never)
    raw = _read(psa, PSA2)
    items = list(_payload(raw).items())
    cases = {
        "indefinite-length claims map": _rewrap(raw, _encode_map(items, indefinite=True)),
        "duplicate claim key": _rewrap(raw, _encode_map([*items, (2395, 0x5000)])),
        # The outer COSE array, indefinite: 9f ... ff instead of 84.
        "indefinite-length COSE array": b"\xd2\x9f" + raw[2:] + b"\xff",
        # A sw component map with key 2 twice (the second value a forged measurement).
        "duplicate sw component key": _rewrap(
            raw,
            _encode_map(
                [
                    (k, v)
                    if k != 2399
                    else (k, _Raw(b"\x81" + _encode_map([*v[0].items(), (2, b"\x00" * 32)])))
                    for k, v in items
                ]
            ),
        ),
    }
    for label, bad in cases.items():
        with pytest.raises(EvidenceParseError, match="not well-formed CBOR") as exc:
            verify_evidence(Evidence("arm-psa", bad), trust_keys=[point_bytes(iak)])
        assert re.search("indefinite|duplicate", str(exc.value), re.I), (label, exc.value)


# --------------------------------------------------------------------------- claim types


def _psa2_claims(psa: Path) -> dict[Any, Any]:
    return _own_instance(_payload(_read(psa, PSA2)), FORGER)


def _refused(claims: Mapping[Any, Any]) -> str:
    with pytest.raises(EvidenceParseError) as exc:
        arm_psa.PLATFORM.parse(_forge(claims))
    return str(exc.value)


def test_forged_claims_verify_when_well_typed(psa: Path) -> None:
    claims = _verify(_forge(_psa2_claims(psa)), FORGER.public_key())
    assert claims.extra["profile"] == "http://arm.com/psa/2.0.0"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({10: None}, r"psa-nonce \(10\): null is not a value"),
        ({10: b"\x00" * 31}, r"psa-nonce \(10\): want a byte string of 32 or 48 or 64 bytes"),
        ({2394: "3002"}, r"psa-client-id \(2394\): want an integer"),
        ({2394: 2**31}, r"psa-client-id \(2394\): want an integer in"),
        ({2395: 0x7000}, r"psa-security-lifecycle \(2395\): 0x7000 is in no PSA lifecycle"),
        ({2395: True}, r"psa-security-lifecycle \(2395\): want an integer.*got a boolean"),
        ({2396: b"\xaa" * 31}, r"psa-implementation-id \(2396\): want a byte string of 32"),
        ({2397: b"\x00" * 7}, r"psa-boot-seed \(2397\): want a byte string of 8\.\.32 bytes"),
        ({2398: "0604565272829-1001"}, r"psa-certification-reference \(2398\).*EAN-13"),
        ({265: "PSA_IOT_PROFILE_1"}, r"psa-profile \(265\): got 'PSA_IOT_PROFILE_1'"),
        ({256: b"\x02" + b"\x00" * 32}, r"psa-instance-id \(256\): UEID type 0x02"),
        ({2400: ""}, r"psa-verification-service-indicator \(2400\): want non-empty text"),
        ({2399: []}, r"psa-software-components \(2399\): want a non-empty array"),
        ({2399: [{1: "SPE", 5: b"\x00" * 32}]}, r"\[0\]\.measurement-value \(2\): mandatory"),
        ({2399: [{2: b"\x00" * 32}]}, r"\[0\]\.signer-id \(5\): mandatory"),
        ({2399: [{2: b"\x00" * 32, 5: b"\x00" * 32, 3: 0}]}, r"\[0\]: unknown keys \['3'\]"),
        ({2399: [{2: b"\x00" * 32, 5: b"\x00" * 32, 4: 1}]}, r"\[0\]\.version \(4\): want text"),
        ({-75008: b"\x00" * 32}, "claims of both PSA IoT profile 1"),
        ({99: 1}, r"unknown claims \[99\]"),
    ],
)
def test_every_claim_is_type_checked_and_named(psa: Path, change: dict[Any, Any], why: str) -> None:
    claims = _psa2_claims(psa)
    claims.update(change)
    assert re.search(why, _refused(claims)), (_refused(claims), why)


@pytest.mark.parametrize("key", [10, 256, 265, 2394, 2395, 2396, 2399])
def test_mandatory_psa_2_0_0_claims_are_required(psa: Path, key: int) -> None:
    claims = _psa2_claims(psa)
    del claims[key]
    assert f"({key}): mandatory claim missing" in _refused(claims)


def test_optional_psa_2_0_0_claims_may_be_absent(psa: Path) -> None:
    claims = _psa2_claims(psa)
    for key in (2397, 2398, 2400):
        del claims[key]
    x = _verify(_forge(claims), FORGER.public_key()).extra
    assert x["boot_seed"] is x["certification_reference"] is x["verification_service"] is None


def test_every_problem_of_a_token_is_reported_at_once(psa: Path) -> None:
    claims = _psa2_claims(psa)
    claims.update({2394: "x", 2396: b"", 10: 7})
    del claims[2395]
    why = _refused(claims)
    for name in ("psa-client-id", "psa-implementation-id", "psa-nonce", "psa-security-lifecycle"):
        assert name in why


def test_claim_keys_must_be_integers(psa: Path) -> None:
    claims: dict[Any, Any] = _psa2_claims(psa)
    claims["10"] = b"\x00" * 32
    assert "claim keys must be integers" in _refused(claims)


def test_iot_profile_1_no_sw_measurements_and_its_rules(psa: Path) -> None:
    base = _own_instance(_payload(_read(psa, ZEPHYR)), FORGER)
    no_sw = {k: v for k, v in base.items() if k != -75006} | {-75007: 1}
    claims = _verify(_forge(no_sw), FORGER.public_key())
    assert claims.extra["no_sw_measurements"] is True and claims.extra["sw_components"] == []
    assert claims.measurement == composite_measurement(())
    assert "only one may be present" in _refused(base | {-75007: 1})
    both_missing = {k: v for k, v in base.items() if k != -75006}
    assert "psa-software-components (-75006) or psa-no-sw-measurements" in _refused(both_missing)
    assert "psa-boot-seed (-75004): mandatory" in _refused(
        {k: v for k, v in base.items() if k != -75004}
    )
    # Profile 1 needs no profile claim (the earliest TF-M left it out) but a wrong one is refused.
    without = {k: v for k, v in base.items() if k != -75000}
    assert _verify(_forge(without), FORGER.public_key()).extra["profile"] == "PSA_IOT_PROFILE_1"
    assert "got 'http://arm.com/psa/2.0.0'" in _refused(base | {-75000: "http://arm.com/psa/2.0.0"})


def test_headers_other_than_alg_and_kid_are_refused(psa: Path) -> None:
    payload = cbor2.dumps(_psa2_claims(psa))
    ok = _sign(payload, FORGER, protected={1: -7, 4: b"k"}, unprotected={4: b"id"})
    assert _verify(ok, FORGER.public_key()).platform == "arm-psa"
    with pytest.raises(EvidenceParseError, match=r"unprotected header labels \['33'\]"):
        arm_psa.PLATFORM.parse(_sign(payload, FORGER, unprotected={33: b"x5chain"}))
    with pytest.raises(EvidenceParseError, match=r"protected header labels \['2'\]"):
        arm_psa.PLATFORM.parse(_sign(payload, FORGER, protected={1: -7, 2: [99]}))
    with pytest.raises(EvidenceParseError, match="kid is text"):
        arm_psa.PLATFORM.parse(_sign(payload, FORGER, unprotected={4: "kid"}))
    untagged = cbor2.dumps(cbor2.loads(ok).value)
    with pytest.raises(EvidenceParseError, match="tagged 18"):
        arm_psa.PLATFORM.parse(untagged)


@pytest.mark.parametrize(
    ("value", "name", "debug"),
    [
        (0x0000, "unknown", True),
        (0x1000, "assembly-and-test", True),
        (0x2000, "psa-rot-provisioning", True),
        (0x3000, "secured", False),
        (0x30FF, "secured", False),
        (0x3003, "secured", False),
        (0x4000, "non-psa-rot-debug", True),
        (0x5000, "recoverable-psa-rot-debug", True),
        (0x6000, "decommissioned", True),
    ],
)
def test_debug_is_any_lifecycle_outside_secured(
    psa: Path, value: int, name: str, debug: bool
) -> None:
    claims = _psa2_claims(psa) | {2395: value}
    verified = _verify(_forge(claims), FORGER.public_key())
    assert verified.debug is debug and verified.extra["lifecycle"] == {"value": value, "name": name}
    assert lifecycle_name(value) == name


# --------------------------------------------------------------------------- validate


def _verified(psa: Path, name: str = PSA2) -> VerifiedClaims:
    return _verify(_read(psa, name), load_anchor_key(_read(psa, IAK_PEM)))


def test_reference_values_that_match_give_no_problem(psa: Path) -> None:
    claims = _verified(psa)
    reference = {
        "sw_components": [
            {"type": "SPE", "measurement": POSITIVE[PSA2]["sw"][0][2], "signer_id": SIGNER_SPE},
            {"measurement": "0x" + NSPE_16.upper()},
        ],
        "implementation_ids": [IMPL_ID],
        "lifecycles": ["secured"],
        "profiles": ["http://arm.com/psa/2.0.0", "PSA_IOT_PROFILE_1"],
    }
    assert arm_psa.PLATFORM.validate(claims, reference) == []
    validate_claims(
        claims,
        accepted_platforms=["arm-psa"],
        reference={"measurements": [claims.measurement.hex()], **reference},
        allow_debug=False,
        expected_report_data=bytes(64),
    )


def test_every_mismatch_is_reported(psa: Path) -> None:
    claims = _verified(psa)
    reference = {
        "sw_components": [
            {"type": "SPE", "measurement": NSPE_16},  # right measurement, wrong component
            {"measurement": POSITIVE[PSA2]["sw"][0][2], "signer_id": SIGNER_NSPE},
            {"type": "NSPE", "measurement": NSPE_16},  # this one is there
        ],
        "implementation_ids": ["00" * 32],
        "lifecycles": ["non-psa-rot-debug"],
        "profiles": ["PSA_IOT_PROFILE_1"],
    }
    problems = arm_psa.PLATFORM.validate(claims, reference)
    assert [p.split(":")[0] for p in problems] == [
        "sw_components[0]",
        "sw_components[1]",
        "implementation_id",
        "lifecycle",
        "profile",
    ]
    assert "want a component {type=SPE, measurement=087d13c6" in problems[0]
    assert "got [{type=SPE, measurement=96a2ec56" in problems[0]
    assert problems[3] == "lifecycle: got secured (0x3000), want one of ['non-psa-rot-debug']"
    with pytest.raises(EvidenceValidationError) as exc:
        validate_claims(
            claims,
            accepted_platforms=["arm-psa"],
            reference={"measurements": ["00" * 32], **reference},
            allow_debug=False,
            expected_report_data=b"\x01" * 64,
        )
    assert len(exc.value.mismatches) == 2 + len(problems)  # measurement, report_data, then ours


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ({"sw_components": "SPE"}, "sw_components: reference value must be a list"),
        ({"sw_components": [{"type": "SPE"}]}, r"sw_components\[0\]: reference value needs"),
        ({"sw_components": [{"measurement": "zz"}]}, "is not hex"),
        ({"sw_components": [{"measurement": "00", "hash": 1}]}, "unknown reference keys"),
        ({"implementation_ids": IMPL_ID}, "must be a list of strings"),
        ({"implementation_ids": ["xyz"]}, "are not all hex"),
        ({"lifecycles": ["secure"]}, r"lifecycles: unknown names \['secure'\]"),
        ({"profiles": [1]}, "must be a list of strings"),
    ],
)
def test_malformed_reference_values_are_problems_not_crashes(
    psa: Path, reference: dict[str, Any], why: str
) -> None:
    problems = arm_psa.PLATFORM.validate(_verified(psa), reference)
    assert any(re.search(why, p) for p in problems), problems


def _policy(reference: dict[str, Any]) -> Any:
    """A real consortium policy accepting only arm-psa, with these reference values."""
    keys = {pid: PartyKeys.generate(pid) for pid in ("hospital-a", "hospital-b", RECIPIENT)}
    doc = policy_document(keys)
    doc["attestation"] = {"platforms": ["arm-psa"], "reference": {"arm-psa": reference}}
    return parse_policy(json.dumps(doc).encode(), "json")


def test_a_policy_trusts_the_iak_through_its_trust_keys(psa: Path) -> None:
    raw = _read(psa, PSA2)
    pem = _read(psa, IAK_PEM).decode()
    policy = _policy(
        {
            "trust_keys": [pem],
            "lifecycles": ["secured"],
            "sw_components": [{"type": "NSPE", "measurement": NSPE_16}],
            "implementation_ids": [IMPL_ID],
            "profiles": ["http://arm.com/psa/2.0.0"],
        }
    )
    claims = verify_for_policy(Evidence("arm-psa", raw), policy, expected_report_data=bytes(64))
    assert claims.extra["iak"].hex() == IAK_POINT
    other = _policy({"trust_keys": [point_bytes(OTHER.public_key()).hex()]})
    with pytest.raises(EvidenceVerificationError):
        verify_for_policy(Evidence("arm-psa", raw), other, expected_report_data=bytes(64))
    with pytest.raises(PolicyError, match="trust_key"):
        _policy({"trust_key": [pem]})  # a misspelt key is refused by the policy checker
    # A 32-byte challenge can never carry cctrain's 64-byte binding.
    short = _forge(_psa2_claims(psa) | {10: bytes(32)})
    forger = _policy({"trust_keys": [point_bytes(FORGER.public_key()).hex()]})
    with pytest.raises(EvidenceValidationError, match="report_data"):
        verify_for_policy(Evidence("arm-psa", short), forger, expected_report_data=bytes(64))


def test_certificates_are_not_a_psa_trust_anchor(psa: Path) -> None:
    token = arm_psa.PLATFORM.parse(_read(psa, PSA2))
    assert isinstance(token, PsaToken)
    with pytest.raises(EvidenceParseError, match="not to certificates"):
        arm_psa.PLATFORM.verify(token, certificates=[object()])  # type: ignore[list-item]


# --------------------------------------------------------------------------- CLI contract

CONTRACT = {"platform", "verified", "errors", "measurement", "nonce", "claims"}


def _cli(*args: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(main, ["attest", "verify", *args, "--format", "json"])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    doc = json.loads(lines[0])
    assert CONTRACT <= set(doc) and doc["verified"] is (r.exit_code == 0)
    assert (doc["errors"] == []) is (r.exit_code == 0)
    return r.exit_code, doc


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_cli_verifies_each_token_with_the_iak_pem(psa: Path, name: str) -> None:
    code, doc = _cli(str(psa / name), "--platform", "arm-psa", "--key", str(psa / IAK_PEM))
    assert code == 0, doc
    want = POSITIVE[name]
    assert doc["platform"] == "arm-psa" and doc["signer"] == "psa-iak"
    assert doc["nonce"] == doc["report_data"] == want["challenge"]
    assert re.fullmatch("[0-9a-f]{64}", doc["measurement"])
    got = [(c["type"], c["version"], c["measurement"]) for c in doc["claims"]["sw_components"]]
    assert got == want["sw"]
    assert doc["claims"]["lifecycle"] == {"value": 12288, "name": "secured"}
    assert doc["debug"] is False and doc["chip_id"] == INSTANCE_ID
    auto = _cli(str(psa / name), "--key", str(psa / IAK_PEM))
    assert auto == (0, doc)


def test_cli_takes_the_iak_as_a_raw_point_too(psa: Path, tmp_path: Path) -> None:
    point = tmp_path / "iak.bin"
    point.write_bytes(point_bytes(load_anchor_key(_read(psa, IAK_PEM))))
    assert point.read_bytes().hex() == IAK_POINT
    code, doc = _cli(str(psa / PSA2), "--platform", "arm-psa", "--key", str(point))
    assert code == 0 and doc["claims"]["iak"] == IAK_POINT


def test_cli_exit_1_for_a_wrong_or_missing_key(psa: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "other.pem"
    wrong.write_bytes(
        OTHER.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, doc = _cli(str(psa / PSA2), "--platform", "arm-psa", "--key", str(wrong))
    assert code == 1 and "no trusted IAK signed this token" in doc["errors"][0]
    assert doc["claims"] == {} and doc["measurement"] is None
    code, doc = _cli(str(psa / PSA2), "--platform", "arm-psa")
    assert code == 1 and "--key IAK.pem" in doc["errors"][0]


def test_cli_exit_2_for_garbage_or_an_unreadable_key(psa: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\xd2\x84garbage")
    code, doc = _cli(str(garbage), "--platform", "arm-psa", "--key", str(psa / IAK_PEM))
    assert code == 2 and "not well-formed CBOR" in doc["errors"][0]
    bad_key = tmp_path / "bad.pem"
    bad_key.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    code, doc = _cli(str(psa / PSA2), "--platform", "arm-psa", "--key", str(bad_key))
    assert code == 2 and "not an EC public key" in doc["errors"][0]
    code, doc = _cli(str(psa / PSA2), "--platform", "arm-psa", "--key", str(tmp_path / "none"))
    assert code == 2 and "cannot read --key" in doc["errors"][0]


def test_the_console_script_runs_the_same_contract(psa: Path) -> None:
    script = Path(sys.executable).parent / "cctrain"
    if not script.is_file():  # pragma: no cover - the venv always has it
        pytest.skip(f"console script {script} not installed")
    argv = [str(script), "attest", "verify", str(psa / ZEPHYR), "--platform", "arm-psa"]
    p = subprocess.run(
        [*argv, "--key", str(psa / IAK_PEM), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    doc = json.loads(p.stdout)
    assert doc["nonce"] == CHALLENGE_0011 and len(doc["claims"]["sw_components"]) == 2


# --------------------------------------------------------------------------- hostile input

_CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=70)
    | st.text(max_size=20)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-75010, 2400) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(derandomize=True, max_examples=300)
@given(
    change=st.dictionaries(
        st.sampled_from(sorted(PSA2_KEYS.values()) + [1, 2, -75006]), _CBOR_VALUES, max_size=3
    )
)
def test_any_claim_values_give_a_token_or_a_parse_error(
    vectors_dir: Path, change: dict[Any, Any]
) -> None:
    claims = _own_instance(_payload(_read(vectors_dir / "arm-psa", PSA2)), FORGER)
    claims.update(change)
    raw = _forge(claims)
    try:
        token = arm_psa.PLATFORM.parse(raw)
    except EvidenceParseError:
        return
    assert _verify(raw, FORGER.public_key()).platform == "arm-psa"  # what parses, verifies
    assert token.claims.lifecycle_name != "invalid"


@settings(derandomize=True, max_examples=300)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    assert arm_psa.PLATFORM.sniff(data) in (True, False)
    with pytest.raises(EvidenceParseError):
        arm_psa.PLATFORM.parse(data)
