"""The strict CBOR and COSE_Sign1 layer the token platforms share (Nitro, CCA, PSA).

Messages are signed here with real ECDSA keys made in the test, so each check can be shown
to accept what is right before it refuses what is not.
"""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cctrain.attestation.cose import (
    ec_key_from_cose,
    load_anchor_key,
    loads_strict,
    parse_sign1,
    point_bytes,
)
from cctrain.errors import EvidenceParseError

CURVES = {-7: (ec.SECP256R1, 32), -35: (ec.SECP384R1, 48), -36: (ec.SECP521R1, 66)}


def _sign1(alg: int, key: ec.EllipticCurvePrivateKey, payload: bytes, *, tag: bool = True) -> bytes:
    from cryptography.hazmat.primitives import hashes

    protected = cbor2.dumps({1: alg})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    h = {-7: hashes.SHA256, -35: hashes.SHA384, -36: hashes.SHA512}[alg]()
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(h)))
    size = CURVES[alg][1]
    msg = [protected, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")]
    return cbor2.dumps(cbor2.CBORTag(18, msg) if tag else msg)


@pytest.mark.parametrize("alg", sorted(CURVES))
def test_a_signed_message_verifies_and_any_flipped_byte_does_not(alg: int) -> None:
    key = ec.generate_private_key(CURVES[alg][0]())
    raw = _sign1(alg, key, cbor2.dumps({10: b"\x01" * 32}))
    assert parse_sign1(raw, "token").verify(key.public_key()) is None
    failures = 0
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        try:
            failures += parse_sign1(bytes(bad), "token").verify(key.public_key()) is not None
        except EvidenceParseError:
            failures += 1
    assert failures == len(raw)  # no byte of a signed message is free


def test_the_algorithm_must_match_the_key() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    raw = _sign1(-35, p384, b"x")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert "does not match the key's curve" in (parse_sign1(raw, "t").verify(other) or "")
    protected = cbor2.dumps({1: -37})  # PS256: not an algorithm these tokens use
    msg = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, b"x", b"\x00" * 96]))
    assert "want ES256, ES384 or ES512" in (parse_sign1(msg, "t").verify(p384.public_key()) or "")
    unprotected_alg = cbor2.dumps(cbor2.CBORTag(18, [b"", {1: -35}, b"x", b"\x00" * 96]))
    with pytest.raises(EvidenceParseError, match="must be in the protected header"):
        parse_sign1(unprotected_alg, "t")


@pytest.mark.parametrize(
    "data, match",
    [
        (bytes([0xA2, 1, 1, 1, 2]), "Duplicate map key"),
        (bytes([0x9F, 1, 2, 0xFF]), "indefinite"),
        (bytes([0x5F, 0x41, 0x00, 0xFF]), "indefinite"),
        (bytes([0x01, 0x02]), "1 byte\\(s\\) after the CBOR item"),
        (bytes([0x58, 0x10, 0x00]), "not well-formed CBOR"),  # a byte string cut short
        (bytes([0x81] * 40 + [0x00]), "not well-formed CBOR"),  # deeper than any token
        (b"", "not well-formed CBOR"),
        # Tags the tokens do not use, above all those cbor2 would interpret: a shared
        # reference lets a few hundred bytes describe gigabytes (found by review).
        (bytes([0xD8, 0x1C, 0x81, 0xD8, 0x1D, 0x00]), "semantic tag 2[89]"),
        (bytes([0xD8, 0x1C, 0x80]), "semantic tag 28"),
        (bytes([0xC1, 0x01]), "semantic tag 1"),
        (bytes([0xC2, 0x41, 0x05]), "semantic tag 2"),
        (bytes([0xD9, 0x01, 0x02, 0x80]), "semantic tag 258"),
        (bytes([0xDA, 0x00, 0x01, 0x00, 0x00, 0x01]), "CBOR tag 65536"),
    ],
)
def test_strict_decoding(data: bytes, match: str) -> None:
    with pytest.raises(EvidenceParseError, match=match):
        loads_strict(data, "token")


def test_tag_and_shape_rules() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    untagged = _sign1(-7, key, b"x", tag=False)
    assert not parse_sign1(untagged, "t", tag="forbidden").tagged
    with pytest.raises(EvidenceParseError, match="want a COSE_Sign1 tagged 18"):
        parse_sign1(untagged, "t", tag="required")
    with pytest.raises(EvidenceParseError, match="want an untagged one"):
        parse_sign1(_sign1(-7, key, b"x"), "t", tag="forbidden")
    with pytest.raises(EvidenceParseError, match="semantic tag 17: a CBOR tag these tokens do not"):
        parse_sign1(cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])), "t")
    with pytest.raises(EvidenceParseError, match="array of 4"):
        parse_sign1(cbor2.dumps([b"", {}, b""]), "t")
    with pytest.raises(EvidenceParseError, match="detached payloads"):
        parse_sign1(cbor2.dumps([b"", {}, None, b""]), "t")


def test_trust_keys_in_every_form_load_to_the_same_key() -> None:
    pub = ec.generate_private_key(ec.SECP384R1()).public_key()
    forms = [
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        point_bytes(pub),
    ]
    assert {point_bytes(load_anchor_key(f)) for f in forms} == {point_bytes(pub)}
    nums = pub.public_numbers()
    cose = {1: 2, -1: 2, -2: nums.x.to_bytes(48, "big"), -3: nums.y.to_bytes(48, "big")}
    assert point_bytes(ec_key_from_cose(cose, "rak")) == point_bytes(pub)
    for bad in (b"\x04" + b"\x00" * 96, b"not a key", b""):
        with pytest.raises(EvidenceParseError, match="not an EC public key"):
            load_anchor_key(bad)
    with pytest.raises(EvidenceParseError, match="crv"):
        ec_key_from_cose({**cose, -1: 9}, "rak")
