"""AWS Nitro: every real document verifies at its own timestamp (or fails) as
PROVENANCE-batch2.md says; tampering, malformed CBOR and foreign chains fail for the right
reason; the ``cctrain attest verify`` contract holds. Vectors are read from ../shared via
the ``vectors_dir`` fixture; documents forged with a throwaway CA are built in the test."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cctrain.attestation import aws_nitro
from cctrain.attestation.base import Evidence, VerifiedClaims, get_platform
from cctrain.attestation.pipeline import read_evidence_bytes, validate_claims, verify_evidence
from cctrain.cli.main import main
from cctrain.errors import (
    AttestationError,
    EvidenceParseError,
    EvidenceValidationError,
    EvidenceVerificationError,
)

UTC = dt.timezone.utc
ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
REPO = Path(__file__).resolve().parents[2]
#: The verify module (the package re-exports its ``verify`` function under that name).
nitro_verify = importlib.import_module("cctrain.attestation.aws_nitro.verify")


def at_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True)
class Vector:
    file: str
    module_id: str
    timestamp: int
    debug: bool
    pcrs: dict[int, str]  # the values PROVENANCE-batch2.md gives in full
    user_data: str | None  # hex
    nonce: str | None  # hex, or its first bytes where PROVENANCE abbreviates
    nonce_len: int | None
    public_key: str | None  # hex


ZERO = "00" * 48
VECTORS = [
    Vector(
        "veracruz_eu-west-1_2022-11-09.cbor",
        "i-04fd167167daacf3b-enc01845e97d0b3eb4e",
        1668034320696,
        False,
        {
            0: "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01",
            1: "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
            2: "00943ea859140fed74e1025fe41aedb38780eae5656b3f9ef9b4b0e6111350315544db3efcda05725108f72b2ab141f7",
        },
        "7c37108079b3e8a36d8a7970de1d6d4ff1461e0e35d9557c4d789df5e0576620",
        "c678c86135de539d183acff58886d98dfb9823041af9f934bf909ac0f8d96245",
        32,
        None,
    ),
    Vector(
        "evervault_us-east-1_2022-10-12_debug.cbor",
        "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1",
        1665582606081,
        True,
        {0: ZERO, 1: ZERO, 2: ZERO},
        b"hello, world!".hex(),
        None,
        None,
        b"my super secret key".hex(),
    ),
    Vector(
        "evervault_us-east-1_2022-10-13.cbor",
        "i-020b6af9246d90e92-enc0183d09086c24190",
        1665651482136,
        False,
        {
            0: "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
            2: "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a",
            8: "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb",
        },
        None,
        "cb3dc2eb",
        256,
        None,
    ),
    Vector(
        "evervault_us-east-1_2023-01-18_cert-with-doc.der",
        "i-0ec0e572c8263d8ff-enc0185c4fd382eeb25",
        1674047239280,
        False,
        {
            0: "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af",
            2: "e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a858e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24",
            8: "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb90107c439bc4a1443ca",
        },
        "",  # the carrying certificate's SPKI: checked in its own test
        "",
        None,
        None,
    ),
    Vector(
        "evervault_us-east-1_2023-09-18_debug.b64",
        "i-0918f6c55e3b61d89-enc018aa8b8e2285d13",
        1695049410860,
        True,
        {0: ZERO, 1: ZERO, 2: ZERO},
        "",  # tls-cert.der's SPKI: checked in its own test
        "",
        256,
        None,
    ),
]
GOOD = VECTORS[0].file
NEGATIVE = "veracruz_eu-west-1_2022-11-09_bad-sig_NEGATIVE.cbor"
GOOD_AT = at_ms(VECTORS[0].timestamp)


@pytest.fixture(scope="module")
def nitro_dir(vectors_dir: Path) -> Path:
    d = vectors_dir / "aws-nitro"
    if not (d / GOOD).is_file():
        pytest.skip(f"aws-nitro vectors not found in {d}")
    return d


def raw_of(nitro_dir: Path, name: str) -> bytes:
    return read_evidence_bytes((nitro_dir / name).read_bytes())


def verify_raw(raw: bytes, now: dt.datetime = GOOD_AT) -> VerifiedClaims:
    return verify_evidence(Evidence(platform="aws-nitro", report=raw), now=now)


# --------------------------------------------------------------------------- real vectors


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v.file)
def test_vector_verifies_at_its_own_timestamp(nitro_dir: Path, vec: Vector) -> None:
    claims = verify_raw(raw_of(nitro_dir, vec.file), at_ms(vec.timestamp))
    assert claims.platform == "aws-nitro" and claims.signer == "aws-nitro"
    assert claims.debug is vec.debug
    assert claims.measurement.hex() == vec.pcrs[0]
    assert claims.chip_id is None and claims.tcb_status is None
    ex = claims.extra
    assert ex["module_id"] == vec.module_id
    assert ex["timestamp"] == vec.timestamp and ex["digest"] == "SHA384"
    assert sorted(ex["pcrs"]) == list(range(16))
    for index, value in vec.pcrs.items():
        assert ex["pcrs"][index] == value
    assert ex["public_key"] == vec.public_key
    if vec.user_data != "":
        assert ex["user_data"] == vec.user_data
    if vec.nonce is None:
        assert claims.nonce is None and ex["nonce"] is None
        assert claims.to_json()["nonce"] is None
    else:
        assert claims.nonce is not None and ex["nonce"].startswith(vec.nonce)
        assert claims.to_json()["nonce"] == claims.nonce.hex() == ex["nonce"]
        if vec.nonce_len is not None:
            assert len(claims.nonce) == vec.nonce_len
    # No vector's user_data is 64 bytes, so none is bound to a cctrain report_data.
    assert claims.report_data == b""


def test_pcr1_is_the_same_kernel_in_every_non_debug_vector(nitro_dir: Path) -> None:
    # PROVENANCE gives PCR1 bcdf05fe... for the three non-debug documents (the AWS kernel).
    for vec in VECTORS:
        if not vec.debug:
            claims = verify_raw(raw_of(nitro_dir, vec.file), at_ms(vec.timestamp))
            assert claims.extra["pcrs"][1].startswith("bcdf05fe")


def test_window_edges(nitro_dir: Path) -> None:
    # PROVENANCE: window 2022-11-09T22:51:57Z..2022-11-10T01:52:00Z (the leaf's validity).
    raw = raw_of(nitro_dir, GOOD)
    verify_raw(raw, dt.datetime(2022, 11, 9, 22, 51, 57, tzinfo=UTC))
    verify_raw(raw, dt.datetime(2022, 11, 10, 1, 52, 0, tzinfo=UTC))
    with pytest.raises(EvidenceVerificationError, match="not yet valid"):
        verify_raw(raw, dt.datetime(2022, 11, 9, 22, 51, 56, tzinfo=UTC))


def test_negative_vector_fails_for_its_signature_only(nitro_dir: Path) -> None:
    raw = raw_of(nitro_dir, NEGATIVE)
    good = raw_of(nitro_dir, GOOD)
    assert len(raw) == len(good) and raw[:-1] == good[:-1] and raw[-1] != good[-1]
    aws_nitro.parse(raw)  # well-formed
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(raw)
    assert list(info.value.errors) == [
        "document signature: ES384 signature does not verify with the leaf certificate key"
    ]


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v.file)
def test_every_vector_fails_a_day_later(nitro_dir: Path, vec: Vector) -> None:
    # The leaf lives about 3 h: a day after its timestamp it has expired.
    raw = raw_of(nitro_dir, vec.file)
    doc = aws_nitro.parse(raw)
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(raw, at_ms(vec.timestamp) + dt.timedelta(days=1))
    leaf_cn = doc.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert any(f"{leaf_cn!r} expired" in e for e in info.value.errors), info.value.errors
    assert not any("signature" in e for e in info.value.errors)


def test_root_vector_is_the_published_root_g1(nitro_dir: Path) -> None:
    der = (nitro_dir / "aws_nitro_root_g1.der").read_bytes()
    assert hashlib.sha256(der).hexdigest() == ROOT_G1_SHA256
    root = aws_nitro.pinned_root()
    assert root.public_bytes(serialization.Encoding.DER) == der
    assert (
        x509.load_pem_x509_certificate((nitro_dir / "aws_nitro_root_g1.pem").read_bytes()) == root
    )
    # Every document's cabundle[0] is byte-identical to it.
    for vec in VECTORS:
        assert aws_nitro.parse(raw_of(nitro_dir, vec.file)).cabundle_der[0] == der


def test_cert_with_doc_matches_upstream_expectations(nitro_dir: Path) -> None:
    raw = raw_of(nitro_dir, VECTORS[3].file)
    carrier = x509.load_der_x509_certificate(raw)
    claims = verify_raw(raw, at_ms(VECTORS[3].timestamp))
    spki = carrier.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert claims.extra["user_data"] == spki.hex()
    assert claims.extra["user_data_is_carrier_spki"] is True
    assert claims.extra["carrier_spki_sha256"] == hashlib.sha256(spki).hexdigest()
    pcrs = {str(i): VECTORS[3].pcrs[i] for i in (0, 2, 8)}
    pcrs["1"] = claims.extra["pcrs"][1]
    assert get_platform("aws-nitro").validate(claims, {"pcrs": pcrs}) == []
    assert get_platform("aws-nitro").validate(claims, {"pcrs": {"8": VECTORS[3].pcrs[8]}}) == []
    zeros = get_platform("aws-nitro").validate(claims, {"pcrs": {str(i): ZERO for i in range(3)}})
    assert len(zeros) == 3 and all("want " + ZERO in p for p in zeros)


def test_b64_document_binds_the_tls_certificate(nitro_dir: Path) -> None:
    vec = VECTORS[4]
    text = (nitro_dir / vec.file).read_bytes()
    claims = verify_raw(read_evidence_bytes(text), at_ms(vec.timestamp))
    # The same document as raw CBOR verifies the same.
    assert verify_raw(base64.b64decode(text), at_ms(vec.timestamp)) == claims
    tls = x509.load_der_x509_certificate(
        (nitro_dir / "evervault_us-east-1_2023-09-18_tls-cert.der").read_bytes()
    )
    spki = tls.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(spki) == 91 and claims.extra["user_data"] == spki.hex()
    # Zero PCRs match, as upstream's valid_attestation_doc_ga.json expects.
    assert get_platform("aws-nitro").validate(claims, {"pcrs": {"0": ZERO, "1": ZERO}}) == []


def test_tls_certificate_alone_is_not_evidence(nitro_dir: Path) -> None:
    raw = (nitro_dir / "evervault_us-east-1_2023-09-18_tls-cert.der").read_bytes()
    with pytest.raises(EvidenceParseError, match="carrying certificate"):
        aws_nitro.parse(raw)


def test_sniff(nitro_dir: Path) -> None:
    p = get_platform("aws-nitro")
    for vec in VECTORS:
        assert p.sniff((nitro_dir / vec.file).read_bytes()) or p.sniff(raw_of(nitro_dir, vec.file))
    assert not p.sniff(b"\x00" * 100)
    assert not p.sniff((nitro_dir / "evervault_us-east-1_2023-09-18_tls-cert.der").read_bytes())


# --------------------------------------------------------------------------- validation


def test_validate_pcrs_reports_every_mismatch(nitro_dir: Path) -> None:
    claims = verify_raw(raw_of(nitro_dir, GOOD))
    vec = VECTORS[0]
    platform = get_platform("aws-nitro")
    assert "pcrs" in platform.reference_keys
    good = {str(i): v for i, v in vec.pcrs.items()}
    assert platform.validate(claims, {"pcrs": good}) == []
    assert platform.validate(claims, {"pcrs": {0: vec.pcrs[0].upper()}}) == []
    assert platform.validate(claims, {"pcrs": {"2": [ZERO, vec.pcrs[2]]}}) == []
    problems = platform.validate(
        claims, {"pcrs": {"0": ZERO, "1": vec.pcrs[1], "2": ZERO, "20": ZERO, "x": ZERO, "3": 5}}
    )
    assert problems == [
        f"pcrs[0]: got {vec.pcrs[0]}, want {ZERO}",
        f"pcrs[2]: got {vec.pcrs[2]}, want {ZERO}",
        f"pcrs[20]: got no such PCR, want {ZERO}",
        "pcrs[3]: reference must be a hex string or a list of them, got 5",
        "pcrs: key 'x' is not a PCR index 0..31",
    ]
    assert platform.validate(claims, {"pcrs": "00"})[0].startswith("pcrs: reference must be")


def test_validate_claims_common_checks(nitro_dir: Path) -> None:
    claims = verify_raw(raw_of(nitro_dir, GOOD))
    pcr0 = VECTORS[0].pcrs[0]
    validate_claims(
        claims,
        accepted_platforms=["aws-nitro"],
        reference={"measurements": [pcr0], "pcrs": {"1": VECTORS[0].pcrs[1]}},
        allow_debug=False,
        expected_report_data=None,
    )
    with pytest.raises(EvidenceValidationError) as info:
        validate_claims(
            claims,
            accepted_platforms=["aws-nitro"],
            reference={"measurements": [ZERO], "pcrs": {"8": "11" * 48}},
            allow_debug=False,
            expected_report_data=bytes(64),
        )
    errors = info.value.mismatches
    assert len(errors) == 3
    assert errors[0].startswith(f"measurement: got {pcr0}")
    assert errors[1].startswith("report_data: got ,")  # 32-byte user_data binds nothing
    assert errors[2] == f"pcrs[8]: got {ZERO}, want {'11' * 48}"  # an unsigned EIF


def test_debug_document_is_refused_by_a_production_policy(nitro_dir: Path) -> None:
    vec = VECTORS[1]
    claims = verify_raw(raw_of(nitro_dir, vec.file), at_ms(vec.timestamp))
    with pytest.raises(EvidenceValidationError, match="debug: got True"):
        validate_claims(
            claims,
            accepted_platforms=["aws-nitro"],
            reference={},
            allow_debug=False,
            expected_report_data=None,
        )


def test_policy_accepts_pcrs_reference_key() -> None:
    from cctrain.policy import COMMON_REFERENCE_KEYS

    assert "pcrs" not in COMMON_REFERENCE_KEYS and "pcrs" in aws_nitro.REFERENCE_KEYS


# --------------------------------------------------------------------------- tampering


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0x01
    return bytes(b)


def _flip_points(raw: bytes, nitro_dir: Path) -> dict[str, int]:
    doc = aws_nitro.parse(raw)
    ud = doc.user_data
    nonce = doc.nonce
    assert ud is not None and nonce is not None
    ts = b"\x1b" + doc.timestamp.to_bytes(8, "big")
    leaf = doc.certificate.public_bytes(serialization.Encoding.DER)
    return {
        "protected header alg": raw.index(bytes.fromhex("a1013822")) + 3,
        "protected header map": raw.index(bytes.fromhex("a1013822")),
        "module_id": raw.index(doc.module_id.encode()) + 5,
        "timestamp": raw.index(ts) + 8,
        "pcr0": raw.index(doc.pcrs[0]) + 10,
        "pcr4": raw.index(doc.pcrs[4]),
        "user_data": raw.index(ud) + 31,
        "nonce": raw.index(nonce),
        "leaf certificate signature": raw.index(leaf) + len(leaf) - 1,
        "signature first byte": len(raw) - 96,
        "signature r last byte": len(raw) - 49,
        "signature s first byte": len(raw) - 48,
        "signature middle": len(raw) - 30,
    }


def test_byte_flips_in_signed_regions_are_refused(nitro_dir: Path) -> None:
    raw = raw_of(nitro_dir, GOOD)
    points = _flip_points(raw, nitro_dir)
    assert len(points) >= 10
    for what, at in points.items():
        bad = _flip(raw, at)
        if what.startswith("protected header"):
            # {1: -35} becomes {1: -36} or a 0-entry map: the header itself is refused.
            with pytest.raises(EvidenceParseError, match="protected header|after the CBOR"):
                verify_raw(bad)
            continue
        with pytest.raises(EvidenceVerificationError) as info:
            verify_raw(bad)
        errors = info.value.errors
        assert any(e.startswith("document signature:") for e in errors), (what, errors)
        if what == "leaf certificate signature":
            assert any("signature by" in e and "is invalid" in e for e in errors), errors


def test_every_byte_flip_is_refused_without_traceback(nitro_dir: Path) -> None:
    # A deterministic sweep over the whole document: every flipped byte is refused with a
    # cctrain error (never another exception), and a flip in signed bytes never verifies.
    raw = raw_of(nitro_dir, GOOD)
    sign1 = aws_nitro.parse(raw).sign1
    start = raw.index(sign1.payload)
    rng = random.Random(1234)
    positions = sorted({0, 1, len(raw) - 1, *rng.sample(range(len(raw)), 150)})
    for at in positions:
        for mask in (0x01, 0x80):
            bad = bytearray(raw)
            bad[at] ^= mask
            try:
                verify_raw(bytes(bad))
            except AttestationError:
                continue
            # Only the unprotected header (one empty map byte) is outside the signature.
            raise AssertionError(f"flip at {at} (payload starts {start}) verified")


def _cose(protected: bytes, payload: bytes, signature: bytes, unprotected: Any = None) -> bytes:
    return bytes(cbor2.dumps([protected, unprotected or {}, payload, signature]))


def _payload_items(raw: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    item = cbor2.loads(raw)
    return item[0], item[3], dict(cbor2.loads(item[2]))


def test_es256_header_is_refused(nitro_dir: Path) -> None:
    raw = raw_of(nitro_dir, GOOD)
    _, sig, payload = _payload_items(raw)
    bad = _cose(cbor2.dumps({1: -7}), cbor2.dumps(payload), sig)
    with pytest.raises(EvidenceParseError, match=r"alg is ES256.*want exactly \{1: -35\}"):
        verify_raw(bad)
    with pytest.raises(EvidenceParseError, match="alg"):
        verify_raw(_cose(cbor2.dumps({1: -35, 4: b"kid"}), cbor2.dumps(payload), sig))
    with pytest.raises(EvidenceParseError, match="algorithm must be in the protected"):
        verify_raw(_cose(cbor2.dumps({1: -35}), cbor2.dumps(payload), sig, {1: -7}))


@pytest.mark.parametrize("cut", [1, 2, 97, 500, 4000])
def test_truncated_cbor_is_refused(nitro_dir: Path, cut: int) -> None:
    raw = raw_of(nitro_dir, GOOD)
    with pytest.raises(EvidenceParseError, match="not well-formed CBOR"):
        verify_raw(raw[:-cut])


def test_trailing_byte_is_refused(nitro_dir: Path) -> None:
    raw = raw_of(nitro_dir, GOOD)
    with pytest.raises(EvidenceParseError, match=r"1 byte\(s\) after the CBOR item"):
        verify_raw(raw + b"\x00")


def _indefinite_map(payload: dict[str, Any]) -> bytes:
    return b"\xbf" + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in payload.items()) + b"\xff"


def test_indefinite_length_map_is_refused(nitro_dir: Path) -> None:
    prot, sig, payload = _payload_items(raw_of(nitro_dir, GOOD))
    with pytest.raises(EvidenceParseError, match="payload: not well-formed CBOR"):
        verify_raw(_cose(prot, _indefinite_map(payload), sig))
    with pytest.raises(EvidenceParseError, match="protected header: not well-formed"):
        verify_raw(_cose(b"\xbf\x01\x38\x22\xff", cbor2.dumps(payload), sig))


def test_duplicate_keys_are_refused_before_the_signature(nitro_dir: Path) -> None:
    prot, sig, payload = _payload_items(raw_of(nitro_dir, GOOD))
    n = len(payload)
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in payload.items())
    dup = bytes([0xA0 + n + 1]) + body + cbor2.dumps("nonce") + cbor2.dumps(bytes(32))
    assert n + 1 <= 23
    with pytest.raises(EvidenceParseError, match="payload: not well-formed CBOR"):
        aws_nitro.parse(_cose(prot, dup, sig))
    with pytest.raises(EvidenceParseError, match="protected header: not well-formed"):
        aws_nitro.parse(_cose(bytes.fromhex("a2013822013822"), cbor2.dumps(payload), sig))
    pcrs = b"".join(cbor2.dumps(i) + cbor2.dumps(v) for i, v in payload["pcrs"].items())
    pcrs_dup = bytes([0xB0 + 1]) + pcrs + cbor2.dumps(0) + cbor2.dumps(bytes(48))
    assert len(payload["pcrs"]) == 16
    items = dict(payload)
    items.pop("pcrs")
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in items.items())
    inner = bytes([0xA0 + n]) + body + cbor2.dumps("pcrs") + b"\xb8\x11" + pcrs_dup[1:]
    with pytest.raises(EvidenceParseError, match="payload: not well-formed CBOR"):
        aws_nitro.parse(_cose(prot, inner, sig))


def test_tagged_document_is_refused(nitro_dir: Path) -> None:
    raw = raw_of(nitro_dir, GOOD)
    with pytest.raises(EvidenceParseError, match="tagged COSE_Sign1"):
        aws_nitro.parse(b"\xd2" + raw)


Edit = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Edit:
    return lambda p: p.__setitem__(key, value)


def _del(key: str) -> Edit:
    return lambda p: p.__delitem__(key)


PAYLOAD_EDITS: list[tuple[str, Edit, str]] = [
    ("unknown field", _set("extra", 1), "unknown field 'extra'"),
    ("missing module_id", _del("module_id"), "field 'module_id' is missing"),
    ("missing cabundle", _del("cabundle"), "field 'cabundle' is missing"),
    ("module_id bytes", _set("module_id", b"i-0"), "module_id"),
    ("empty module_id", _set("module_id", ""), "module_id"),
    ("digest SHA256", _set("digest", "SHA256"), "digest is 'SHA256'"),
    ("timestamp text", _set("timestamp", "1668034320696"), "timestamp"),
    ("timestamp negative", _set("timestamp", -1), "timestamp"),
    ("timestamp bool", _set("timestamp", True), "timestamp"),
    ("pcrs list", _set("pcrs", [bytes(48)]), "pcrs is list"),
    ("pcrs empty", _set("pcrs", {}), "pcrs"),
    ("pcr index 32", lambda p: p["pcrs"].__setitem__(32, bytes(48)), "pcrs index 32"),
    ("pcr index text", lambda p: p["pcrs"].__setitem__("0", bytes(48)), "pcrs index '0'"),
    ("pcr 32 bytes", lambda p: p["pcrs"].__setitem__(3, bytes(32)), r"pcrs\[3\] is 32 bytes"),
    ("pcr text", lambda p: p["pcrs"].__setitem__(3, "00"), r"pcrs\[3\] is str"),
    ("pcr0 missing", lambda p: p["pcrs"].__delitem__(0), r"lacks PCR \[0\]"),
    ("certificate text", _set("certificate", "MII"), "certificate is str"),
    ("certificate too long", _set("certificate", bytes(1025)), "certificate is 1025 bytes"),
    ("certificate garbage", _set("certificate", b"\x30\x03abc"), "certificate: not a DER"),
    ("cabundle empty", _set("cabundle", []), "cabundle"),
    ("cabundle text", _set("cabundle", ["x"]), r"cabundle\[0\]"),
    ("cabundle garbage", _set("cabundle", [b"\x01\x02"]), r"cabundle\[0\]: not a DER"),
    ("user_data too long", _set("user_data", bytes(513)), "user_data is 513 bytes"),
    ("nonce too long", _set("nonce", bytes(513)), "nonce is 513 bytes"),
    ("nonce text", _set("nonce", "abc"), "nonce is str"),
    ("public_key too long", _set("public_key", bytes(1025)), "public_key is 1025 bytes"),
    ("public_key empty", _set("public_key", b""), "public_key is 0 bytes"),
    ("key not text", lambda p: p.__setitem__(1, b"x"), "payload key 1 is not text"),
]


@pytest.mark.parametrize(
    ("what", "edit", "reason"), PAYLOAD_EDITS, ids=[e[0] for e in PAYLOAD_EDITS]
)
def test_payload_fields_are_checked(nitro_dir: Path, what: str, edit: Edit, reason: str) -> None:
    prot, sig, payload = _payload_items(raw_of(nitro_dir, GOOD))
    payload["pcrs"] = dict(payload["pcrs"])
    edit(payload)
    with pytest.raises(EvidenceParseError, match=reason):
        aws_nitro.parse(_cose(prot, cbor2.dumps(payload), sig))


def test_absent_optional_fields_are_null(nitro_dir: Path) -> None:
    prot, sig, payload = _payload_items(raw_of(nitro_dir, GOOD))
    for key in ("public_key", "user_data", "nonce"):
        payload.pop(key)
    doc = aws_nitro.parse(_cose(prot, cbor2.dumps(payload), sig))
    assert doc.public_key is None and doc.user_data is None and doc.nonce is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"hello world",
        b"\x84",
        b"\x30\x00",
        b"\x80",
        b"\xff" * 64,
        b"aGVsbG8=",
        "é".encode(),
    ],
)
def test_garbage_is_a_parse_error(garbage: bytes) -> None:
    with pytest.raises(EvidenceParseError):
        verify_raw(garbage)


def test_wrong_signature_length(nitro_dir: Path) -> None:
    prot, sig, payload = _payload_items(raw_of(nitro_dir, GOOD))
    with pytest.raises(EvidenceParseError, match="signature is 64 bytes"):
        aws_nitro.parse(_cose(prot, cbor2.dumps(payload), sig[:64]))


def test_certificates_argument_is_refused(nitro_dir: Path) -> None:
    doc = aws_nitro.parse(raw_of(nitro_dir, GOOD))
    with pytest.raises(EvidenceVerificationError, match="--cert is not used"):
        nitro_verify.verify(doc, certificates=[doc.certificate], now=GOOD_AT)


# --------------------------------------------------------------------------- forged chains


@dataclass
class Pki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey


T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _key(seed: int) -> ec.EllipticCurvePrivateKey:
    # Deterministic keys: a fixed scalar per role.
    return ec.derive_private_key(
        int.from_bytes(hashlib.sha384(bytes([seed])).digest(), "big") % (2**383), ec.SECP384R1()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None,
    hours: int,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big"))
        .not_valid_before(T0 - dt.timedelta(hours=1))
        .not_valid_after(T0 + dt.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return b.sign(issuer_key, hashes.SHA384())


@pytest.fixture(scope="module")
def pki() -> Pki:
    rk, ik, lk = _key(1), _key(2), _key(3)
    root = _cert("throwaway root", rk, None, rk, ca=True, path_length=None, hours=1000)
    inter = _cert("throwaway intermediate", ik, root, rk, ca=True, path_length=0, hours=100)
    leaf = _cert("throwaway enclave", lk, inter, ik, ca=False, path_length=None, hours=3)
    return Pki(root, rk, inter, ik, leaf, lk)


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def forge(pki: Pki, *, user_data: bytes | None = bytes(range(64)), **changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": int(T0.timestamp() * 1000),
        "pcrs": {i: hashlib.sha384(bytes([i])).digest() for i in range(16)},
        "certificate": _der(pki.leaf),
        "cabundle": [_der(pki.root), _der(pki.inter)],
        "public_key": None,
        "user_data": user_data,
        "nonce": b"\x11" * 32,
    }
    payload.update(changes)
    prot = cbor2.dumps({1: -35})
    body = cbor2.dumps(payload)
    tbs = cbor2.dumps(["Signature1", prot, b"", body])
    r, s = decode_dss_signature(pki.leaf_key.sign(tbs, ec.ECDSA(hashes.SHA384())))
    return _cose(prot, body, r.to_bytes(48, "big") + s.to_bytes(48, "big"))


def test_chain_from_another_root_is_refused(pki: Pki) -> None:
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(forge(pki), T0)
    errors = info.value.errors
    assert any("cabundle[0] ('throwaway root'" in e and "not the pinned" in e for e in errors)
    assert any(
        "'throwaway intermediate' is not issued by 'aws.nitro-enclaves'" in e for e in errors
    ), errors
    # The document's own signature is fine: only the chain is wrong.
    assert not any(e.startswith("document signature") for e in errors)


@pytest.fixture
def trusted(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Pki:
    """Pretend the throwaway root is the pinned one, to reach the checks behind the pin."""
    monkeypatch.setattr(nitro_verify, "pinned_root", lambda: pki.root)
    return pki


def test_forged_document_verifies_under_its_own_root(trusted: Pki) -> None:
    claims = verify_raw(forge(trusted), T0)
    assert claims.report_data == bytes(range(64))  # 64-byte user_data is report_data
    assert claims.nonce == b"\x11" * 32 and claims.debug is False
    assert claims.measurement == hashlib.sha384(b"\x00").digest()
    validate_claims(
        claims,
        accepted_platforms=["aws-nitro"],
        reference={"measurements": [claims.measurement.hex()]},
        allow_debug=False,
        expected_report_data=bytes(range(64)),
    )


@pytest.mark.parametrize("size", [0, 32, 63, 65, 512])
def test_user_data_not_64_bytes_binds_nothing(trusted: Pki, size: int) -> None:
    claims = verify_raw(forge(trusted, user_data=bytes(size)), T0)
    assert claims.report_data == b""
    assert verify_raw(forge(trusted, user_data=None), T0).report_data == b""


def test_debug_is_pcr0_1_2_all_zero(trusted: Pki) -> None:
    pcrs = {i: hashlib.sha384(bytes([i])).digest() for i in range(16)}
    for i in (0, 1, 2):
        pcrs[i] = bytes(48)
    assert verify_raw(forge(trusted, pcrs=pcrs), T0).debug is True
    pcrs[2] = b"\x01" * 48
    assert verify_raw(forge(trusted, pcrs=pcrs), T0).debug is False


def test_expired_leaf_at_the_given_time(trusted: Pki) -> None:
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(forge(trusted), T0 + dt.timedelta(days=1))
    assert list(info.value.errors) == [
        f"certificate 'throwaway enclave' expired at {(T0 + dt.timedelta(hours=3)).isoformat()} "
        f"(now {(T0 + dt.timedelta(days=1)).isoformat()})"
    ]


def test_cabundle_first_entry_not_the_root(trusted: Pki) -> None:
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(forge(trusted, cabundle=[_der(trusted.inter), _der(trusted.inter)]), T0)
    assert any("cabundle[0] ('throwaway intermediate'" in e for e in info.value.errors)
    # Without the root first, nothing else is wrong with this chain.
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(forge(trusted, cabundle=[_der(trusted.inter)]), T0)
    assert any("cabundle[0]" in e for e in info.value.errors)


def test_leaf_must_not_be_a_ca_and_issuers_must_be(trusted: Pki) -> None:
    # A leaf signed directly by the intermediate's key but missing from the bundle order.
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(
            forge(trusted, cabundle=[_der(trusted.root), _der(trusted.leaf)]),
            T0,
        )
    errors = info.value.errors
    assert any("'throwaway enclave' signs certificates but is not a CA" in e for e in errors)


def test_signature_by_another_key(trusted: Pki) -> None:
    raw = forge(trusted)
    other = Pki(
        trusted.root, trusted.root_key, trusted.inter, trusted.inter_key, trusted.leaf, _key(9)
    )
    bad = forge(other)
    assert bad != raw
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(bad, T0)
    assert list(info.value.errors) == [
        "document signature: ES384 signature does not verify with the leaf certificate key"
    ]


# --------------------------------------------------------------------------- CLI contract


def _cli(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(
        main, ["attest", "verify", str(path), "--platform", "aws-nitro", *args, "--format", "json"]
    )
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    doc = json.loads(lines[0])
    assert isinstance(doc["verified"], bool) and doc["verified"] is (r.exit_code == 0)
    return r.exit_code, doc


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v.file)
def test_cli_verifies_each_vector(nitro_dir: Path, vec: Vector) -> None:
    code, doc = _cli(nitro_dir / vec.file, "--at", at_ms(vec.timestamp).isoformat())
    assert code == 0, doc["errors"]
    assert doc["platform"] == "aws-nitro" and doc["errors"] == []
    assert doc["measurement"] == vec.pcrs[0] and doc["debug"] is vec.debug
    assert doc["signer"] == "aws-nitro"
    if vec.nonce is None:
        assert doc["nonce"] is None
    else:
        assert isinstance(doc["nonce"], str) and doc["nonce"].startswith(vec.nonce)
    assert set(doc["claims"]["pcrs"]) == {str(i) for i in range(16)}
    for i, value in vec.pcrs.items():
        assert doc["claims"]["pcrs"][str(i)] == value


def test_cli_negative_and_garbage(nitro_dir: Path, tmp_path: Path) -> None:
    code, doc = _cli(nitro_dir / NEGATIVE, "--at", GOOD_AT.isoformat())
    assert code == 1 and doc["errors"] and "signature" in doc["errors"][0]
    code, doc = _cli(nitro_dir / GOOD, "--at", "2022-11-11T00:00:00Z")
    assert code == 1 and any("expired" in e for e in doc["errors"])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 3)
    code, doc = _cli(garbage, "--at", GOOD_AT.isoformat())
    assert code == 2 and doc["errors"]
    hexed = tmp_path / "doc.hex"
    hexed.write_text(raw_of(nitro_dir, GOOD).hex())
    assert _cli(hexed, "--at", GOOD_AT.isoformat())[0] == 0


def test_cli_subprocess(nitro_dir: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "enclave")]))
    argv = [sys.executable, "-m", "cctrain.cli", "attest", "verify"]
    tail = ["--platform", "aws-nitro", "--at", "2022-11-09T22:52:00.696Z", "--format", "json"]
    for name, want in ((GOOD, 0), (NEGATIVE, 1)):
        p = subprocess.run(
            [*argv, str(nitro_dir / name), *tail],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
        assert "Traceback" not in p.stderr, p.stderr
        assert p.returncode == want, (p.stdout, p.stderr)
        doc = json.loads(p.stdout)
        assert doc["platform"] == "aws-nitro" and doc["verified"] is (want == 0)
        if want == 0:
            assert doc["measurement"] == VECTORS[0].pcrs[0]
            assert doc["nonce"] == VECTORS[0].nonce and doc["debug"] is False
