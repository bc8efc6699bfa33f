"""NVIDIA GPU (SPDM) evidence: every vector in ../shared/attestation-vectors/nvidia-gpu/.

Expected outcomes and facts come from PROVENANCE.md; mutations flip real bytes and must
fail for the stated reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cctrain.attestation.base import Evidence, VerifiedClaims, get_platform
from cctrain.attestation.nvidia_gpu import (
    PLATFORM,
    gpu_nonce,
    parse_evidence_list,
    reference_from_rim,
    verify_composite,
)
from cctrain.attestation.nvidia_gpu.parse import parse_report, sniff
from cctrain.attestation.nvidia_gpu.verify import (
    NVIDIA_DEVICE_ROOT_SPKI_SHA256,
    pinned_root,
    spki_sha256,
)
from cctrain.attestation.pipeline import (
    load_certificates,
    read_evidence_bytes,
    validate_claims,
    verify_evidence,
)
from cctrain.errors import EvidenceParseError, EvidenceValidationError, EvidenceVerificationError

pytestmark = pytest.mark.vectors

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc)

# report, chain, architecture, nonce, driver, vbios, project, chip SKU (PROVENANCE.md facts)
GOOD = [
    ("nvtrust_hopper_report.hex", "nvtrust_hopper_cert_chain.pem", "hopper",
     "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
     "550.90.07", "96.00.9F.00.01", "1010", "882"),
    ("nvat-sdk_hopper_report.hex", "nvat-sdk_hopper_cert_chain.pem", "hopper",
     "5bb22e377702d4e1e8215a903ba094826b9ac7f731dee1fe8102958bf2840aca",
     "580.159.03", "96.00.74.00.20", "1010", "862"),
    ("nvat-sdk_sample_blackwell_report.hex", "nvat-sdk_sample_blackwell_cert_chain.pem",
     "blackwell", "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
     "575.32", "97.00.88.00.0F", "G525", "886"),
    ("nvat-sdk_sample_hopper_report.hex", "nvat-sdk_sample_hopper_cert_chain.pem", "hopper",
     "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66",
     "535.86.09", "96.00.5E.00.01", "1010", "882"),
    # 'expired' in the SDK means RIM/OCSP status online; the X.509 chain is valid to 9999.
    ("nvat-sdk_sample_hopper_report_expired.hex", "nvat-sdk_sample_hopper_cert_chain_expired.pem",
     "hopper", "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
     "570.124.03", "96.00.5E.00.04", "1010", "862"),
    # One trailing 0x00 after the signature.
    ("trustee_hopper_coco_report1.hex", "trustee_hopper_coco_cert_chain1.pem", "hopper",
     "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec",
     "580.95.05", "96.00.74.00.1A", "1010", "882"),
]  # fmt: skip
CHAINS = sorted({g[1] for g in GOOD})
RIM = "nvtrust_vbios_rim_1010_0200_882_96005E0001_PROD.swidtag"


def _gpu_dir(vectors_dir: Path) -> Path:
    return vectors_dir / "nvidia-gpu"


def _raw(vectors_dir: Path, name: str) -> bytes:
    return read_evidence_bytes((_gpu_dir(vectors_dir) / name).read_bytes())


def _chain(vectors_dir: Path, name: str) -> list[x509.Certificate]:
    return load_certificates([(_gpu_dir(vectors_dir) / name).read_bytes()])


def _verify(raw: bytes, chain: list[x509.Certificate], now: dt.datetime = NOW) -> VerifiedClaims:
    return PLATFORM.verify(
        PLATFORM.parse(raw), certificates=chain, collateral=None, now=now, getter=None
    )


def _flip(raw: bytes, offset: int, xor: int = 0x01) -> bytes:
    b = bytearray(raw)
    b[offset] ^= xor
    return bytes(b)


def _set(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


# Offsets into request || response (request is 37 bytes; response fields follow).
RESP = 37
REC_LEN = RESP + 5
RECORD = RESP + 8


def _layout(raw: bytes) -> dict[str, int]:
    rec_len = int.from_bytes(raw[REC_LEN : REC_LEN + 3], "little")
    nonce = RECORD + rec_len
    opaque_len_at = nonce + 32
    opaque_len = int.from_bytes(raw[opaque_len_at : opaque_len_at + 2], "little")
    sig = opaque_len_at + 2 + opaque_len
    return {"nonce": nonce, "opaque_len": opaque_len_at, "opaque": opaque_len_at + 2, "sig": sig}


# --- every vector, its PROVENANCE outcome ------------------------------------------------


def test_every_vector_file_is_covered(vectors_dir: Path) -> None:
    covered = (
        {g[0] for g in GOOD}
        | set(CHAINS)
        | {
            RIM,
            "nvat-sdk_sample_hopper_report_invalid_signature.hex",
            "nvat-sdk_evidence_hopper_590_12.json",
            "nvidia_device_identity_ca.pem",
        }
    )
    present = {p.name for p in _gpu_dir(vectors_dir).iterdir()}
    assert present == covered


@pytest.mark.parametrize(
    ("report", "chain", "arch", "nonce", "driver", "vbios", "project", "chip_sku"), GOOD
)
def test_good_vectors_verify_with_provenance_facts(
    vectors_dir: Path,
    report: str,
    chain: str,
    arch: str,
    nonce: str,
    driver: str,
    vbios: str,
    project: str,
    chip_sku: str,
) -> None:
    raw = _raw(vectors_dir, report)
    assert sniff(raw)
    claims = _verify(raw, _chain(vectors_dir, chain))
    assert claims.platform == "nvidia-gpu"
    assert claims.signer == "device"
    assert claims.debug is False
    assert claims.report_data == bytes.fromhex(nonce) + bytes(32)
    assert claims.extra["nonce"] == nonce
    assert claims.extra["architecture"] == arch
    assert claims.extra["driver_version"] == driver
    assert claims.extra["vbios_version"] == vbios
    assert claims.extra["project"] == project
    assert claims.extra["chip_sku"] == chip_sku
    assert len(claims.extra["measurements"]) == 64
    report_obj = PLATFORM.parse(raw)
    assert claims.measurement == hashlib.sha384(report_obj.measurement_record).digest()
    # chip_id: the serial in the leaf's DMTF device-info name (NVIDIA:GxNNN:<serial>).
    leaf = _chain(vectors_dir, chain)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    serial = san.get_values_for_type(x509.OtherName)[0].value[2:].decode().split(":")[2]
    assert claims.chip_id == bytes.fromhex(serial)


def test_trustee_vector_has_one_trailing_zero_byte(vectors_dir: Path) -> None:
    report = PLATFORM.parse(_raw(vectors_dir, "trustee_hopper_coco_report1.hex"))
    assert report.trailing_padding == 1


def test_same_gpu_two_firmwares_same_chip_id(vectors_dir: Path) -> None:
    a = _verify(_raw(vectors_dir, GOOD[1][0]), _chain(vectors_dir, GOOD[1][1]))
    b = _verify(_raw(vectors_dir, GOOD[4][0]), _chain(vectors_dir, GOOD[4][1]))
    assert a.chip_id == b.chip_id and a.extra["leaf_key_sha256"] != b.extra["leaf_key_sha256"]


@pytest.mark.parametrize("chain", CHAINS)
def test_invalid_signature_vector_fails_with_every_chain(vectors_dir: Path, chain: str) -> None:
    raw = _raw(vectors_dir, "nvat-sdk_sample_hopper_report_invalid_signature.hex")
    with pytest.raises(EvidenceVerificationError, match="report signature does not verify"):
        _verify(raw, _chain(vectors_dir, chain))


def test_json_evidence_verifies_with_embedded_chain(vectors_dir: Path) -> None:
    raw = (_gpu_dir(vectors_dir) / "nvat-sdk_evidence_hopper_590_12.json").read_bytes()
    assert sniff(raw)
    claims = _verify(raw, [])
    assert claims.extra["nonce"] == (
        "e97b23a1718095a0e9e35edca810768c70a6a5a389b705e753b197912bc11576"
    )
    assert claims.extra["driver_version"] == "590.12"
    assert claims.extra["vbios_version"] == "96.00.A5.00.01"
    assert (claims.extra["project"], claims.extra["project_sku"], claims.extra["chip_sku"]) == (
        "G520",
        "0200",
        "885",
    )


def test_pinned_root_is_the_vector_root(vectors_dir: Path) -> None:
    root = _chain(vectors_dir, "nvidia_device_identity_ca.pem")[0]
    assert spki_sha256(root) == NVIDIA_DEVICE_ROOT_SPKI_SHA256 == spki_sha256(pinned_root())


# --- time ----------------------------------------------------------------------------------


def test_chain_expired_after_not_after(vectors_dir: Path) -> None:
    report, chain = GOOD[4][0], GOOD[4][1]
    end = dt.datetime.max.replace(tzinfo=dt.timezone.utc)  # after 9999-12-31T23:59:59Z
    with pytest.raises(EvidenceVerificationError, match="expired at 9999-12-31") as exc:
        _verify(_raw(vectors_dir, report), _chain(vectors_dir, chain), now=end)
    # Every certificate, the pinned root included, is reported.
    assert sum("expired" in e for e in exc.value.errors) == 5


def test_chain_not_yet_valid(vectors_dir: Path) -> None:
    early = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(EvidenceVerificationError, match="not yet valid"):
        _verify(_raw(vectors_dir, GOOD[0][0]), _chain(vectors_dir, GOOD[0][1]), now=early)


def test_naive_now_refused(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError, match="timezone-aware"):
        _verify(
            _raw(vectors_dir, GOOD[0][0]),
            _chain(vectors_dir, GOOD[0][1]),
            now=NOW.replace(tzinfo=None),
        )


# --- mutations of real bytes -------------------------------------------------------------


def _mutations(raw: bytes) -> list[tuple[str, bytes, type[Exception], str]]:
    lay = _layout(raw)
    return [
        ("truncated", raw[:-10], EvidenceParseError, "truncated: signature"),
        ("request only", raw[:37], EvidenceParseError, "truncated"),
        ("request SPDM 1.2", _set(raw, 0, b"\x12"), EvidenceParseError, "SPDM version 0x12"),
        ("response SPDM 1.0", _set(raw, RESP, b"\x10"), EvidenceParseError,
         "response SPDM version 0x10"),
        ("wrong request code", _set(raw, 1, b"\xe1"), EvidenceParseError, "not GET_MEASUREMENTS"),
        ("wrong response code", _set(raw, RESP + 1, b"\x61"), EvidenceParseError,
         "not MEASUREMENTS"),
        ("no signature requested", _set(raw, 2, b"\x00"), EvidenceParseError,
         "did not ask for a signature"),
        ("slot mismatch", _set(raw, RESP + 3, b"\x01"), EvidenceParseError, "slot id"),
        ("record length overruns", _set(raw, REC_LEN, b"\xff\xff\x00"), EvidenceParseError,
         "truncated"),
        ("one block fewer declared", _set(raw, RESP + 4, b"\x3f"), EvidenceParseError,
         "after its 63 declared blocks"),
        ("duplicate block index", _set(raw, RECORD + 55, b"\x01"), EvidenceParseError,
         "index 1 appears twice"),
        ("non-DMTF block", _set(raw, RECORD + 1, b"\x02"), EvidenceParseError, "not DMTF"),
        ("opaque length overruns", _set(raw, lay["opaque_len"], b"\xff\xff"), EvidenceParseError,
         "truncated"),
        ("trailing junk", raw + b"\x01", EvidenceParseError, "after the signature"),
        ("too much padding", raw + bytes(64), EvidenceParseError, "after the signature"),
        ("measurement flipped", _flip(raw, RECORD + 20), EvidenceVerificationError,
         "report signature does not verify"),
        ("requester nonce flipped", _flip(raw, 10), EvidenceVerificationError,
         "report signature does not verify"),
        ("responder nonce flipped", _flip(raw, lay["nonce"]), EvidenceVerificationError,
         "report signature does not verify"),
        ("opaque byte flipped", _flip(raw, lay["opaque"] + 6), EvidenceVerificationError,
         "report signature does not verify"),
        ("signature r flipped", _flip(raw, lay["sig"] + 5), EvidenceVerificationError,
         "report signature does not verify"),
        ("signature s flipped", _flip(raw, lay["sig"] + 90), EvidenceVerificationError,
         "report signature does not verify"),
    ]  # fmt: skip


def _mutation_ids() -> list[str]:
    return [m[0] for m in _mutations(bytes(200))]


@pytest.mark.parametrize("case", range(len(_mutation_ids())), ids=_mutation_ids())
def test_mutation_rejected_for_the_right_reason(vectors_dir: Path, case: int) -> None:
    raw = _raw(vectors_dir, GOOD[0][0])
    chain = _chain(vectors_dir, GOOD[0][1])
    _verify(raw, chain)  # the unmutated report verifies
    _, mutated, exc_type, text = _mutations(raw)[case]
    assert mutated != raw
    with pytest.raises(exc_type, match=text):
        _verify(mutated, chain)


def test_opaque_fwid_flip_is_caught_twice(vectors_dir: Path) -> None:
    raw = _raw(vectors_dir, GOOD[0][0])
    report = PLATFORM.parse(raw)
    assert report.fwid is not None
    at = raw.index(report.fwid)
    with pytest.raises(EvidenceVerificationError) as exc:
        _verify(_flip(raw, at), _chain(vectors_dir, GOOD[0][1]))
    text = str(exc.value)
    assert "report signature does not verify" in text and "FWID in the report" in text


def test_other_devices_chain_rejected(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError, match="report signature does not verify"):
        _verify(_raw(vectors_dir, GOOD[0][0]), _chain(vectors_dir, GOOD[2][1]))


def test_chain_missing_intermediate(vectors_dir: Path) -> None:
    chain = _chain(vectors_dir, GOOD[0][1])
    del chain[2]
    with pytest.raises(EvidenceVerificationError, match="is not issued by"):
        _verify(_raw(vectors_dir, GOOD[0][0]), chain)


def test_chain_in_wrong_order(vectors_dir: Path) -> None:
    chain = _chain(vectors_dir, GOOD[0][1])[::-1]
    with pytest.raises(EvidenceVerificationError) as exc:
        _verify(_raw(vectors_dir, GOOD[0][0]), chain)
    assert any("not issued by" in e or "signature by" in e for e in exc.value.errors)


def test_chain_without_root_still_reaches_the_pinned_root(vectors_dir: Path) -> None:
    chain = _chain(vectors_dir, GOOD[0][1])[:-1]
    assert _verify(_raw(vectors_dir, GOOD[0][0]), chain).extra["architecture"] == "hopper"


def test_no_chain_refused(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError, match="no device certificate chain"):
        _verify(_raw(vectors_dir, GOOD[0][0]), [])


# --- a look-alike chain: real crypto, every name copied, not NVIDIA's key ----------------


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = b"\x81" + bytes([n])
    else:
        length = b"\x82" + n.to_bytes(2, "big")
    return bytes([tag]) + length + content


def _fake_chain(
    real: list[x509.Certificate], fwid: bytes
) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey]:
    root_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc)
    root = (
        x509.CertificateBuilder()
        .subject_name(real[-1].subject)
        .issuer_name(real[-1].subject)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA384())
    )
    spki = leaf_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sha384_oid = _der(0x06, bytes.fromhex("608648016503040202"))
    composite = _der(0x30, _der(0x02, b"\x01") + spki + _der(0x30, sha384_oid + _der(0x04, fwid)))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(real[0].subject)
        .issuer_name(real[-1].subject)
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.OtherName(
                        x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1"),
                        _der(0x0C, b"NVIDIA:GH100:0011223344556677"),
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), composite),
            critical=False,
        )
        .sign(root_key, hashes.SHA384())
    )
    return [leaf, root], leaf_key


def _resign(raw: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    report = parse_report(raw)
    r, s = decode_dss_signature(key.sign(report.signed_bytes, ec.ECDSA(hashes.SHA384())))
    return report.signed_bytes + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_look_alike_root_is_not_trusted(vectors_dir: Path) -> None:
    raw = _raw(vectors_dir, GOOD[0][0])
    fwid = parse_report(raw).fwid
    assert fwid is not None
    chain, key = _fake_chain(_chain(vectors_dir, GOOD[0][1]), fwid)
    forged = _resign(raw, key)
    with pytest.raises(EvidenceVerificationError) as exc:
        _verify(forged, chain)
    # The forged signature itself is fine; only the pinned root catches it.
    assert len(exc.value.errors) == 1
    assert "does not end at NVIDIA's pinned Device Identity CA" in exc.value.errors[0]


def test_every_failure_is_collected(vectors_dir: Path) -> None:
    raw = _raw(vectors_dir, GOOD[0][0])
    chain, key = _fake_chain(_chain(vectors_dir, GOOD[0][1]), bytes(48))
    forged = _resign(raw, key)
    late = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(EvidenceVerificationError) as exc:
        _verify(forged, chain, now=late)
    text = " | ".join(exc.value.errors)
    assert "pinned Device Identity CA" in text
    assert "FWID in the report" in text
    assert "expired at 2099-01-01" in text


# --- parse-only structure ------------------------------------------------------------------


def _rebuild_with_opaque(raw: bytes, opaque: bytes) -> bytes:
    lay = _layout(raw)
    return raw[: lay["opaque_len"]] + struct.pack("<H", len(opaque)) + opaque + raw[lay["sig"] :]


def test_nvdaod_opaque_format_parses(vectors_dir: Path) -> None:
    raw = _raw(vectors_dir, GOOD[0][0])
    legacy = parse_report(raw)
    body = b"".join(
        struct.pack("<HHH", f.type, 0x87, len(f.value)) + f.value for f in legacy.opaque.fields
    )
    header = b"NVDAOD" + struct.pack("<HBB", 0, 1, 0) + b"\x00\x00"
    report = parse_report(_rebuild_with_opaque(raw, header + body))
    assert report.opaque.format == "nvdaod" and report.opaque.header_version == (1, 0)
    assert report.driver_version == legacy.driver_version == "550.90.07"
    assert report.vbios_version == legacy.vbios_version
    bad_profile = b"NVDAOD" + struct.pack("<HBB", 7, 1, 0) + b"\x00\x00"
    with pytest.raises(EvidenceParseError, match="profile 7"):
        parse_report(_rebuild_with_opaque(raw, bad_profile + body))


def test_duplicate_opaque_field_rejected(vectors_dir: Path) -> None:
    raw = _raw(vectors_dir, GOOD[0][0])
    field = struct.pack("<HH", 3, 6) + b"1.2.3\x00"
    with pytest.raises(EvidenceParseError, match="field type 3 appears twice"):
        parse_report(_rebuild_with_opaque(raw, field + field))


def test_json_envelope_checks(vectors_dir: Path) -> None:
    path = _gpu_dir(vectors_dir) / "nvat-sdk_evidence_hopper_590_12.json"
    doc = json.loads(path.read_bytes())
    two = json.dumps(doc * 2).encode()
    assert len(parse_evidence_list(two)) == 2
    with pytest.raises(EvidenceParseError, match="holds 2 GPUs"):
        PLATFORM.parse(two)
    wrong_nonce = [dict(doc[0], nonce="00" * 32)]
    with pytest.raises(EvidenceParseError, match="does not match the report's nonce"):
        PLATFORM.parse(json.dumps(wrong_nonce).encode())
    blackwell = [dict(doc[0], arch="BLACKWELL")]
    with pytest.raises(EvidenceVerificationError, match="evidence says architecture 'blackwell'"):
        _verify(json.dumps(blackwell).encode(), [])
    with pytest.raises(EvidenceParseError, match="bad encoding"):
        PLATFORM.parse(json.dumps([dict(doc[0], evidence="!!")]).encode())


def test_sniff_rejects_other_bytes(vectors_dir: Path) -> None:
    assert not sniff(bytes(1184))
    assert not sniff(b"")
    raw = _raw(vectors_dir, GOOD[0][0])
    assert not sniff(_set(raw, RESP + 1, b"\x61"))
    encoded = base64.b64encode(raw)
    assert not sniff(encoded)


# --- validate ----------------------------------------------------------------------------


def test_rim_golden_values_match_sample_hopper(vectors_dir: Path) -> None:
    reference = reference_from_rim((_gpu_dir(vectors_dir) / RIM).read_bytes())
    assert sorted(reference["measurement_indices"]) == [*range(1, 8), *range(9, 14)]
    assert reference["vbios_versions"] == ["96.00.5E.00.01"]
    claims = _verify(_raw(vectors_dir, GOOD[3][0]), _chain(vectors_dir, GOOD[3][1]))
    assert PLATFORM.validate(claims, reference) == []


def test_rim_golden_values_reject_other_vbios(vectors_dir: Path) -> None:
    reference = reference_from_rim((_gpu_dir(vectors_dir) / RIM).read_bytes())
    claims = _verify(_raw(vectors_dir, GOOD[0][0]), _chain(vectors_dir, GOOD[0][1]))
    problems = PLATFORM.validate(claims, reference)
    assert any(p.startswith("vbios_version: got '96.00.9F.00.01'") for p in problems)
    assert any(p.startswith("measurement[") for p in problems)


def test_validate_reports_every_mismatch(vectors_dir: Path) -> None:
    claims = _verify(_raw(vectors_dir, GOOD[0][0]), _chain(vectors_dir, GOOD[0][1]))
    good_value = claims.extra["measurements"][2]
    ok = {
        "driver_versions": ["550.90.07"],
        "vbios_versions": ["96.00.9f.00.01"],
        "measurement_indices": {"2": [good_value]},
    }
    assert PLATFORM.validate(claims, ok) == []
    bad = {
        "driver_versions": ["580.95.05"],
        "vbios_versions": ["96.00.74.00.1A"],
        "measurement_indices": {2: ["00" * 48], 99: ["00" * 48], "x": ["00"]},
    }
    problems = PLATFORM.validate(claims, bad)
    assert len(problems) == 5
    assert "driver_version: got '550.90.07', want one of ['580.95.05']" in problems
    assert any(p.startswith("measurement[2]: got " + good_value) for p in problems)
    assert any(p.startswith("measurement[99]: got no such block") for p in problems)
    assert any("key 'x' is not a block index" in p for p in problems)
    assert PLATFORM.validate(claims, {"driver_versions": "550.90.07"}) == [
        "driver_versions: reference must be a list of strings, got '550.90.07'"
    ]
    assert PLATFORM.reference_keys == {"driver_versions", "vbios_versions", "measurement_indices"}


def test_pipeline_end_to_end(vectors_dir: Path) -> None:
    assert get_platform("nvidia-gpu") is PLATFORM
    raw = _raw(vectors_dir, GOOD[2][0])
    pem = (_gpu_dir(vectors_dir) / GOOD[2][1]).read_bytes()
    claims = verify_evidence(
        Evidence(platform="nvidia-gpu", report=raw, certificates=(pem,)), now=NOW
    )
    assert claims.extra["architecture"] == "blackwell"
    validate_claims(
        claims,
        accepted_platforms=["nvidia-gpu"],
        reference={"measurements": [claims.measurement.hex()], "driver_versions": ["575.32"]},
        allow_debug=False,
        expected_report_data=claims.report_data,
    )
    with pytest.raises(EvidenceValidationError, match="driver_version: got '575.32'"):
        validate_claims(
            claims,
            accepted_platforms=["nvidia-gpu"],
            reference={"driver_versions": ["1.0"]},
            allow_debug=False,
            expected_report_data=None,
        )
    json.dumps(claims.to_json())  # claims serialise


# --- composite CPU + GPU -------------------------------------------------------------------


def _cpu(report_data: bytes) -> VerifiedClaims:
    return VerifiedClaims(
        platform="sev-snp",
        measurement=bytes(48),
        report_data=report_data,
        debug=False,
        signer="vcek",
    )


def _gpu(nonce: bytes, chip: bytes | None = b"\x01") -> VerifiedClaims:
    return VerifiedClaims(
        platform="nvidia-gpu",
        measurement=bytes(48),
        report_data=nonce + bytes(32),
        debug=False,
        signer="device",
        chip_id=chip,
    )


def test_gpu_nonce_definition() -> None:
    rd = bytes(range(64))
    assert gpu_nonce(rd) == hashlib.sha256(b"cctrain-gpu-nonce-v1" + rd).digest()
    assert len(gpu_nonce(rd)) == 32 and gpu_nonce(rd) != gpu_nonce(rd[::-1])


def test_composite_binding_passes_and_fails() -> None:
    rd = hashlib.sha512(b"cpu evidence").digest()
    cpu = _cpu(rd)
    assert verify_composite(cpu, [_gpu(gpu_nonce(rd), b"\x01"), _gpu(gpu_nonce(rd), b"\x02")]) == []
    other = verify_composite(cpu, [_gpu(gpu_nonce(_flip(rd, 0)))])
    assert len(other) == 1 and "not bound to this CPU evidence" in other[0]
    assert verify_composite(cpu, [])[0].startswith("gpus: got none")
    dup = verify_composite(cpu, [_gpu(gpu_nonce(rd)), _gpu(gpu_nonce(rd))])
    assert dup == ["gpus[1]: same device (01) as gpus[0]"]
    assert (
        "want a CPU TEE's claims" in verify_composite(_gpu(gpu_nonce(rd)), [_gpu(gpu_nonce(rd))])[0]
    )
    padded = VerifiedClaims(
        platform="nvidia-gpu", measurement=b"", report_data=gpu_nonce(rd) + b"\x01" * 32,
        debug=False, signer="device",
    )  # fmt: skip
    assert "not a 32-byte nonce padded with zeros" in verify_composite(cpu, [padded])[0]


def test_composite_reads_the_verified_vector_nonce(vectors_dir: Path) -> None:
    claims = _verify(_raw(vectors_dir, GOOD[0][0]), _chain(vectors_dir, GOOD[0][1]))
    rd = bytes(64)
    problems = verify_composite(_cpu(rd), [claims])
    assert problems == [
        f"gpus[0].nonce: got {GOOD[0][3]}, want {gpu_nonce(rd).hex()} "
        "(GPU evidence is not bound to this CPU evidence)"
    ]
