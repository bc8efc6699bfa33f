"""Intel DCAP (TDX quote v4/v5, SGX quote v3): every real vector gives the outcome
PROVENANCE.md states; mutations fail for the right reason.  Vectors are read from
../shared via the ``vectors_dir`` fixture, never copied into the repository."""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cctrain.attestation.base import Evidence, get_platform
from cctrain.attestation.dcap import SGX, TDX, load_collateral_path
from cctrain.attestation.dcap import tcb as tcbmod
from cctrain.attestation.dcap.collateral import (
    collateral_urls,
    load_pem_chain,
    parse_collateral,
    raw_json_member,
)
from cctrain.attestation.dcap.parse import Quote, TdReportBody, parse_quote, sniff_quote
from cctrain.attestation.dcap.pck import parse_pck_extensions
from cctrain.attestation.dcap.verify import intel_root, intel_tcb_signing, verify_quote
from cctrain.attestation.pipeline import (
    detect_platform,
    read_evidence_bytes,
    validate_claims,
    verify_evidence,
)
from cctrain.errors import EvidenceParseError, EvidenceValidationError, EvidenceVerificationError

sys.path.insert(0, str(Path(__file__).parent))
from dcap_forge import ForgePki, resign_collateral, resign_quote, serialize_quote  # noqa: E402

UTC = dt.timezone.utc


def t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


# PROVENANCE: dcap-qvl checks its samples at "collateral window end - 1 s".
PHALA_TDX_NOW = t("2025-07-19T10:00:34Z")
PHALA_SGX_NOW = t("2025-07-19T10:01:17Z")
SPR_E4_NOW = t("2023-07-01T01:00:00Z")  # go-tdx-guest's test time
V5_NOW = t("2026-02-03T01:00:00Z")  # go-tdx-guest's test time for the v5 sample
QUOTE6_NOW = t("2025-11-01T00:00:00Z")  # PROVENANCE: trustee tcbinfo/qe_identity at 2025-11-01
SPR_E4_TEST_TRAILER = b"\nextra bytes(only for testing purpose)\n"


def read(vectors_dir: Path, name: str) -> bytes:
    return read_evidence_bytes((vectors_dir / name).read_bytes())


def bundle(vectors_dir: Path, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((vectors_dir / name).read_text())
    return out


def verify(tee: str, raw: bytes, *, now: dt.datetime, collateral: Any = None, **kw: Any) -> Any:
    return verify_quote(parse_quote(raw, tee=tee), tee=tee, collateral=collateral, now=now, **kw)


def errors_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(EvidenceVerificationError) as info:
        fn()
    return "; ".join(info.value.errors)


# ---------------------------------------------------------------------------------------------
# Every vector, as PROVENANCE.md states.

# (file, now, debug, measurement prefix, report_data prefix)
NO_COLLATERAL_TDX = [
    (
        "tdx/go-tdx-guest_gce_cos113_v4_quote.dat",
        "2024-08-29T00:00:00Z",
        False,
        "dae67181d3d6",
        "00" * 16,
    ),
    (
        "tdx/go-tdx-guest_v5_quote.dat",
        "2026-02-03T01:00:00Z",
        False,
        "7348651a34b2",
        "945eaacf5abc",
    ),
    ("tdx/oak_v4_quote.dat", "2025-10-15T00:00:00Z", False, "", "00" * 16),
    ("tdx/phala_v4_quote.dat", "2025-07-19T10:00:34Z", False, "91eb2b44d141", "9a9d48e7f679"),
    (
        "tdx/phala_v5_outdated_quote.dat",
        "2026-03-01T00:00:00Z",
        False,
        "273828c46252",
        "d2142b643598",
    ),
    ("tdx/trustee_v4_quote.dat", "2024-07-03T00:00:00Z", True, "705ee9381b86", "7c71fe2c86ef"),
    ("tdx/trustee_v4_quote6.dat", "2025-11-01T00:00:00Z", False, "21e8dead92d6", "26cae1c77185"),
]
NO_COLLATERAL_SGX = [
    (
        "sgx/phala_v3_quote.dat",
        "2025-07-19T10:01:17Z",
        False,
        "33d8736db756",
        b"Hello, world!".hex(),
    ),
    (
        "sgx/trustee_occlum_v3_quote.dat",
        "2024-07-03T00:00:00Z",
        True,
        "8f173e4613ff",
        b"test".hex(),
    ),
]


@pytest.mark.parametrize(("name", "now", "debug", "meas", "rd"), NO_COLLATERAL_TDX)
def test_tdx_vectors_verify_without_collateral(
    vectors_dir: Path, name: str, now: str, debug: bool, meas: str, rd: str
) -> None:
    raw = read(vectors_dir, name)
    assert sniff_quote(raw) == "tdx" and detect_platform(raw) == "tdx"
    claims = verify_evidence(Evidence(platform="tdx", report=raw), now=t(now))
    assert claims.platform == "tdx" and claims.signer == "pck" and claims.chip_id is None
    assert claims.tcb_status is None and claims.advisories == ()
    assert claims.debug is debug
    assert claims.measurement == claims.extra["mrtd"]
    assert claims.measurement.hex().startswith(meas)
    assert claims.report_data.hex().startswith(rd) and len(claims.report_data) == 64
    assert len(claims.extra["rtmrs"]) == 4


@pytest.mark.parametrize(("name", "now", "debug", "meas", "rd"), NO_COLLATERAL_SGX)
def test_sgx_vectors_verify_without_collateral(
    vectors_dir: Path, name: str, now: str, debug: bool, meas: str, rd: str
) -> None:
    raw = read(vectors_dir, name)
    assert sniff_quote(raw) == "sgx" and detect_platform(raw) == "sgx"
    claims = verify_evidence(Evidence(platform="sgx", report=raw), now=t(now))
    assert claims.platform == "sgx" and claims.tcb_status is None
    assert claims.debug is debug
    assert claims.measurement == claims.extra["mrenclave"]
    assert claims.measurement.hex().startswith(meas)
    assert claims.report_data.hex().startswith(rd)


def test_tdx_vector_facts(vectors_dir: Path) -> None:
    claims = verify("tdx", read(vectors_dir, "tdx/trustee_v4_quote6.dat"), now=QUOTE6_NOW)
    x = claims.extra
    assert x["fmspc"].hex() == "00a06d080000" and x["quote_version"] == 4
    assert x["tee_tcb_svn"].hex() == "05030200000000000000000000000000"
    assert x["td_attributes"].hex() == "0000001000000000"
    assert x["mr_config_id"].hex() == (
        "889abf4718f037e38d74464c11e7c91a6e9890b5546409e1e7df9de7a51ca931"
        "52bf847bd2440328e90adb18b150ed67"
    )
    assert x["rtmrs"][0].hex().startswith("395aefe7bac15b24")
    v5 = verify("tdx", read(vectors_dir, "tdx/go-tdx-guest_v5_quote.dat"), now=V5_NOW)
    assert v5.extra["quote_version"] == 5 and v5.extra["body_type"] == 3
    assert v5.extra["fmspc"].hex() == "90c06f000000"
    assert v5.extra["tee_tcb_svn2"] is not None and len(v5.extra["mr_servicetd"]) == 48


def test_sgx_vector_facts(vectors_dir: Path) -> None:
    claims = verify("sgx", read(vectors_dir, "sgx/phala_v3_quote.dat"), now=PHALA_SGX_NOW)
    x = claims.extra
    assert x["mrsigner"].hex() == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    assert x["isv_prod_id"] == 0 and x["isv_svn"] == 0 and x["qe_isv_svn"] == 10
    assert x["attributes"].hex() == "0500000000000000e700000000000000"
    assert x["fmspc"].hex() == "00a067110000"


def test_phala_tdx_with_collateral_is_up_to_date(vectors_dir: Path) -> None:
    evidence = Evidence(
        platform="tdx",
        report=read(vectors_dir, "tdx/phala_v4_quote.dat"),
        collateral=load_collateral_path(vectors_dir / "tdx/phala_v4_quote_collateral.json"),
    )
    claims = verify_evidence(evidence, now=PHALA_TDX_NOW)
    assert claims.tcb_status == "UpToDate" and claims.advisories == ()
    assert claims.extra["qe_tcb_status"] == "UpToDate"


def test_phala_sgx_with_collateral_needs_configuration_and_hardening(vectors_dir: Path) -> None:
    evidence = Evidence(
        platform="sgx",
        report=read(vectors_dir, "sgx/phala_v3_quote.dat"),
        collateral=bundle(vectors_dir, "sgx/phala_v3_quote_collateral.json"),
    )
    claims = verify_evidence(evidence, now=PHALA_SGX_NOW)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert sorted(claims.advisories) == ["INTEL-SA-00289", "INTEL-SA-00615"]


def test_phala_v5_outdated_has_no_matching_tcb_level(vectors_dir: Path) -> None:
    raw = read(vectors_dir, "tdx/phala_v5_outdated_quote.dat")
    coll = bundle(vectors_dir, "tdx/phala_v5_outdated_quote_collateral.json")
    text = errors_of(lambda: verify("tdx", raw, now=t("2026-03-01T00:00:00Z"), collateral=coll))
    assert "no matching TCB level" in text and "TCB level not supported" in text


def test_spr_e4_upstream_trailer_is_refused_but_quote_verifies(vectors_dir: Path) -> None:
    """go-tdx-guest appended a non-zero test trailer; we refuse non-padding trailing bytes."""
    raw = read(vectors_dir, "tdx/go-tdx-guest_v4_spr_e4_quote.dat")
    assert raw.endswith(SPR_E4_TEST_TRAILER)
    with pytest.raises(EvidenceParseError, match="trailing bytes"):
        TDX.parse(raw)
    quote = raw[: -len(SPR_E4_TEST_TRAILER)]
    claims = verify("tdx", quote, now=SPR_E4_NOW)
    assert claims.measurement.hex().startswith("6363b8043668a3ad")
    assert claims.extra["fmspc"].hex() == "50806f000000"
    # With its collateral (a directory of PCS files) no TCB level matches.
    coll = load_collateral_path(vectors_dir / "tdx/go-tdx-guest_collateral")
    text = errors_of(lambda: verify("tdx", quote, now=SPR_E4_NOW, collateral=coll))
    assert "TCB level not supported" in text
    assert text.count(";") == 0  # that is the only problem: signatures, CRLs, dates all pass


def _tcb_facts(vectors_dir: Path, quote_name: str) -> tuple[Quote, Any]:
    quote = parse_quote(read(vectors_dir, quote_name), tee="tdx")
    leaf = load_pem_chain(quote.certification.pck_chain_pem)[0]
    return quote, parse_pck_extensions(leaf)


def test_v5_quote_tcb_is_up_to_date_against_its_tcb_info(vectors_dir: Path) -> None:
    """PROVENANCE: platform UpToDate and module TDX_01 UpToDate (no 2026 QE identity/CRLs)."""
    quote, pck = _tcb_facts(vectors_dir, "tdx/go-tdx-guest_v5_quote.dat")
    coll = load_collateral_path(
        vectors_dir / "tdx/go-tdx-guest_collateral/tcbinfo_tdx_fmspc_90c06f000000.json"
    )
    # The TCB info signature verifies (shipped chain) at V5_NOW: the only problems are the
    # parts this vector set lacks.
    text = errors_of(lambda: verify_quote(quote, tee="tdx", collateral=coll, now=V5_NOW))
    assert "lacks the Intel SGX Root CA CRL" in text and "lacks the TD_QE identity" in text
    assert "signature" not in text and "expired" not in text
    body = parse_collateral(coll).tcb_infos[0].body
    assert isinstance(quote.body, TdReportBody)
    assert tcbmod.match_platform_tcb(body, pck, quote.body.tee_tcb_svn).status == "UpToDate"
    module = tcbmod.match_tdx_module(
        body,
        tee_tcb_svn=quote.body.tee_tcb_svn,
        mr_signer_seam=quote.body.mr_signer_seam,
        seam_attributes=quote.body.seam_attributes,
    )
    assert module is not None and module.status == "UpToDate"


def test_quote6_is_out_of_date_against_trustee_collateral(vectors_dir: Path) -> None:
    """PROVENANCE: platform OutOfDate (PCESVN 11 < 13), TDX_03 UpToDate, QE UpToDate."""
    quote, pck = _tcb_facts(vectors_dir, "tdx/trustee_v4_quote6.dat")
    assert pck.pce_svn == 11
    coll = {
        **load_collateral_path(vectors_dir / "tdx/trustee_tcbinfo_tdx_fmspc_00a06d080000.json"),
        **load_collateral_path(vectors_dir / "tdx/trustee_qe_identity_td_qe.json"),
    }
    # No issuer chain shipped: the pinned TCB Signing cert verifies both signatures; only the
    # CRLs (not in the vector set for 2025-11) are missing.
    text = errors_of(lambda: verify_quote(quote, tee="tdx", collateral=coll, now=QUOTE6_NOW))
    assert "lacks the Intel SGX Root CA CRL" in text and "lacks the CRL of" in text
    assert "signature" not in text and "expired" not in text and "TCB level" not in text
    parsed = parse_collateral(coll)
    body = parsed.tcb_infos[0].body
    td = quote.body
    assert isinstance(td, TdReportBody)
    platform = tcbmod.match_platform_tcb(body, pck, td.tee_tcb_svn)
    module = tcbmod.match_tdx_module(
        body,
        tee_tcb_svn=td.tee_tcb_svn,
        mr_signer_seam=td.mr_signer_seam,
        seam_attributes=td.seam_attributes,
    )
    qe_report = quote.certification.qe_report
    qe = tcbmod.match_qe_identity(
        parsed.qe_identities[0].body,
        mr_signer=qe_report.mr_signer,
        isv_prod_id=qe_report.isv_prod_id,
        misc_select=qe_report.misc_select,
        attributes=qe_report.attributes,
        isv_svn=qe_report.isv_svn,
    )
    assert (platform.status, module and module.status, qe.status) == (
        "OutOfDate",
        "UpToDate",
        "UpToDate",
    )
    assert tcbmod.combine_statuses([platform.status, "UpToDate", qe.status]) == "OutOfDate"


def test_trustee_debug_quotes_fail_a_production_policy(vectors_dir: Path) -> None:
    for tee, name, now in [
        ("tdx", "tdx/trustee_v4_quote.dat", "2024-07-03T00:00:00Z"),
        ("sgx", "sgx/trustee_occlum_v3_quote.dat", "2024-07-03T00:00:00Z"),
    ]:
        claims = verify(tee, read(vectors_dir, name), now=t(now))
        with pytest.raises(EvidenceValidationError, match="debug") as info:
            validate_claims(
                claims,
                accepted_platforms=[tee],
                reference={},
                allow_debug=False,
                expected_report_data=None,
            )
        assert len(info.value.mismatches) == 1


def test_intel_root_is_pinned(vectors_dir: Path) -> None:
    vector_root = x509.load_pem_x509_certificate(
        (vectors_dir / "tdx/intel_sgx_root_ca.pem").read_bytes()
    )
    assert intel_root().public_bytes(serialization.Encoding.DER) == vector_root.public_bytes(
        serialization.Encoding.DER
    )
    (signing,) = intel_tcb_signing()
    signing.verify_directly_issued_by(intel_root())


# ---------------------------------------------------------------------------------------------
# Collateral loading and fetching.


def test_load_collateral_directory_and_bundles(vectors_dir: Path) -> None:
    coll = load_collateral_path(vectors_dir / "tdx/go-tdx-guest_collateral")
    assert len(coll["tcb_infos"]) == 2 and len(coll["qe_identities"]) == 1
    assert coll["root_ca_crl"] and len(coll["pck_crls"]) == 1
    first = coll["tcb_infos"][0]["tcb_info"]
    assert first.startswith('{"id":"TDX"')  # exact value text, not re-serialised
    assert json.loads(bundle(vectors_dir, "tdx/phala_v4_quote_collateral.json")["tcb_info"])
    assert load_collateral_path(vectors_dir / "tdx/phala_v4_quote_collateral.json")


def test_load_collateral_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "junk.bin"
    bad.write_bytes(b"\x01\x02not collateral")
    with pytest.raises(EvidenceParseError, match="junk.bin"):
        load_collateral_path(bad)
    js = tmp_path / "d" / "other.json"
    js.parent.mkdir()
    js.write_text('{"hello": 1}')
    with pytest.raises(EvidenceParseError, match="other.json"):
        load_collateral_path(js.parent)
    broken = tmp_path / "b" / "tcb.json"
    broken.parent.mkdir()
    broken.write_text('{"tcbInfo": {"id": "TDX"}, "signature": "zz"}')
    with pytest.raises(EvidenceParseError, match="tcb.json"):
        load_collateral_path(broken)


def test_raw_json_member_keeps_exact_text() -> None:
    doc = '{"a" : [1, 2],\n "tcbInfo":{"x": 1.50,  "y":"\\u0041"} , "signature":"00"}'
    assert raw_json_member(doc, "tcbInfo") == '{"x": 1.50,  "y":"\\u0041"}'
    with pytest.raises(EvidenceParseError):
        raw_json_member('{"tcbInfo": ', "tcbInfo")


def test_getter_fetches_collateral_with_pinned_tcb_signing(vectors_dir: Path) -> None:
    """An in-memory getter serving PCS bodies (no headers, so no issuer chains)."""
    coll = bundle(vectors_dir, "tdx/phala_v4_quote_collateral.json")
    raw = read(vectors_dir, "tdx/phala_v4_quote.dat")
    urls = collateral_urls(tee="tdx", fmspc=bytes.fromhex("b0c06f000000"), pck_ca="platform")
    served: dict[str, bytes] = {
        urls["tcb_info"]: (
            '{"tcbInfo":' + coll["tcb_info"] + ',"signature":"' + coll["tcb_info_signature"] + '"}'
        ).encode(),
        urls["qe_identity"]: (
            '{"enclaveIdentity":'
            + coll["qe_identity"]
            + ',"signature":"'
            + coll["qe_identity_signature"]
            + '"}'
        ).encode(),
        urls["pck_crl"]: bytes.fromhex(coll["pck_crl"]),
        urls["root_ca_crl"]: bytes.fromhex(coll["root_ca_crl"]),
    }
    asked: list[str] = []

    def getter(url: str) -> bytes:
        asked.append(url)
        return served[url]

    claims = verify_evidence(Evidence(platform="tdx", report=raw), now=PHALA_TDX_NOW, getter=getter)
    assert claims.tcb_status == "UpToDate" and sorted(asked) == sorted(served)

    def failing(url: str) -> bytes:
        raise OSError("network unreachable")

    text = errors_of(lambda: verify("tdx", raw, now=PHALA_TDX_NOW, getter=failing))
    assert "cannot be fetched" in text


# ---------------------------------------------------------------------------------------------
# Mutations.  Base cases: the phala quotes with their full collateral at their test times.


class Case:
    def __init__(self, vectors_dir: Path, tee: str) -> None:
        self.tee = tee
        if tee == "tdx":
            self.raw = read(vectors_dir, "tdx/phala_v4_quote.dat")
            self.coll = bundle(vectors_dir, "tdx/phala_v4_quote_collateral.json")
            self.now = PHALA_TDX_NOW
            self.next_update = t("2025-07-19T10:16:03Z")
        else:
            self.raw = read(vectors_dir, "sgx/phala_v3_quote.dat")
            self.coll = bundle(vectors_dir, "sgx/phala_v3_quote_collateral.json")
            self.now = PHALA_SGX_NOW
            self.next_update = t("2025-07-19T11:00:00Z")
        self.quote = parse_quote(self.raw, tee=tee)
        self.platform = TDX if tee == "tdx" else SGX

    def verify(self, raw: bytes | None = None, **kw: Any) -> Any:
        kw.setdefault("collateral", self.coll)
        kw.setdefault("now", self.now)
        return verify(self.tee, self.raw if raw is None else raw, **kw)

    def errors(self, raw: bytes | None = None, **kw: Any) -> str:
        return errors_of(lambda: self.verify(raw, **kw))

    def flip(self, offset: int) -> bytes:
        b = bytearray(self.raw)
        b[offset] ^= 0x01
        return bytes(b)

    @property
    def sig_offset(self) -> int:
        return len(self.quote.signed_bytes) + 4

    @property
    def qe_report_offset(self) -> int:
        # v3: sig || key || QE report; v4: sig || key || type u16 || size u32 || QE report
        return self.sig_offset + 128 + (0 if self.tee == "sgx" else 6)


TEES = ["tdx", "sgx"]


@pytest.fixture(params=TEES)
def case(request: pytest.FixtureRequest, vectors_dir: Path) -> Case:
    return Case(vectors_dir, request.param)


def test_base_cases_verify(case: Case) -> None:
    assert case.verify().tcb_status is not None


def test_truncated_quote(case: Case) -> None:
    for cut in (10, 47, 400, len(case.quote.signed_bytes) + 2, len(case.quote.signed_bytes) + 600):
        with pytest.raises(EvidenceParseError, match="truncated"):
            case.platform.parse(case.raw[:cut])


def test_trailing_bytes(case: Case) -> None:
    with pytest.raises(EvidenceParseError, match="trailing bytes"):
        case.platform.parse(case.raw + b"\x00\x00junk")
    # Zero padding of a fixed-size buffer is not data: accepted.
    assert case.platform.parse(case.raw + bytes(100)).body == case.quote.body


def test_wrong_version_and_tee_type(case: Case) -> None:
    other = 3 if case.tee == "tdx" else 4
    raw = struct.pack("<H", other) + case.raw[2:]
    with pytest.raises(EvidenceParseError, match=f"unsupported {case.tee.upper()} quote version"):
        case.platform.parse(raw)
    raw = case.raw[:4] + struct.pack("<I", 0 if case.tee == "tdx" else 0x81) + case.raw[8:]
    with pytest.raises(EvidenceParseError, match="wrong TEE type"):
        case.platform.parse(raw)
    raw = case.raw[:2] + struct.pack("<H", 3) + case.raw[4:]
    with pytest.raises(EvidenceParseError, match="attestation key type 3"):
        case.platform.parse(raw)


def test_unknown_certification_data_type(case: Case) -> None:
    if case.tee == "tdx":
        raw = serialize_quote(case.quote, outer_cert_type=7)
        with pytest.raises(EvidenceParseError, match="certification data type 7"):
            case.platform.parse(raw)
    raw = serialize_quote(case.quote, inner_cert_type=3)
    with pytest.raises(EvidenceParseError, match="certification data type 3"):
        case.platform.parse(raw)
    # The serializer itself reproduces the quote: these failures are the type alone.
    assert case.platform.parse(serialize_quote(case.quote)).signed_bytes == case.quote.signed_bytes


def test_flipped_body_byte(case: Case) -> None:
    # 48 + 136 = MRTD (TDX); 48 + 64 = MRENCLAVE (SGX)
    offset = 48 + (136 if case.tee == "tdx" else 64)
    assert "quote signature does not verify with the attestation key" in case.errors(
        case.flip(offset)
    )
    assert "quote signature does not verify" in case.errors(case.flip(20))  # header


def test_flipped_signature_byte(case: Case) -> None:
    text = case.errors(case.flip(case.sig_offset + 5))
    assert text == "quote signature does not verify with the attestation key"


def test_flipped_attestation_key(case: Case) -> None:
    text = case.errors(case.flip(case.sig_offset + 64 + 10))
    assert "does not bind the attestation key" in text


def test_flipped_qe_report(case: Case) -> None:
    text = case.errors(case.flip(case.qe_report_offset + 300))
    assert text == "QE report signature does not verify with the PCK certificate key"


def test_flipped_qe_auth_data(case: Case) -> None:
    auth = case.quote.certification.qe_auth_data
    assert auth
    raw = serialize_quote(case.quote, qe_auth_data=bytes([auth[0] ^ 1]) + auth[1:])
    assert "does not bind the attestation key" in case.errors(raw)


def _replace_leaf(quote: Quote, mutate: Callable[[bytearray], None]) -> bytes:
    chain = load_pem_chain(quote.certification.pck_chain_pem)
    der = bytearray(chain[0].public_bytes(serialization.Encoding.DER))
    mutate(der)
    leaf_pem = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE-----\n"
    )
    rest = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])
    return serialize_quote(quote, pck_chain_pem=leaf_pem + rest)


def test_flipped_pck_certificate(case: Case) -> None:
    chain = load_pem_chain(case.quote.certification.pck_chain_pem)
    ppid = parse_pck_extensions(chain[0]).ppid

    def flip_ppid(der: bytearray) -> None:
        at = bytes(der).index(ppid)
        der[at] ^= 0x01

    text = case.errors(_replace_leaf(case.quote, flip_ppid))
    assert "certificate 'Intel SGX PCK Certificate' is not signed by 'Intel SGX PCK" in text


def test_chain_from_another_vendor(case: Case, vectors_dir: Path) -> None:
    amd = (vectors_dir / "sev-snp/amd_milan_ask_ark.pem").read_bytes()
    text = case.errors(serialize_quote(case.quote, pck_chain_pem=amd))
    assert "is not the pinned 'Intel SGX Root CA'" in text
    assert "QE report signature does not verify" in text


def test_self_made_root_with_intel_names_is_refused(case: Case) -> None:
    """A chain whose names copy Intel's but whose root key is not the pinned one."""
    pki = ForgePki.create()
    forged = resign_quote(
        case.quote, load_pem_chain(case.quote.certification.pck_chain_pem)[0], pki
    )
    text = case.errors(forged.raw)
    assert "chain root 'Intel SGX Root CA' is not the pinned 'Intel SGX Root CA'" in text


def test_expired_certificate_at_later_now(case: Case) -> None:
    text = case.errors(collateral=None, now=t("2050-01-01T00:00:00Z"))
    assert "expired at" in text and "pinned root 'Intel SGX Root CA' expired" in text
    text = case.errors(collateral=None, now=t("2010-01-01T00:00:00Z"))
    assert "is not valid before" in text


def test_expired_collateral_at_later_now(case: Case) -> None:
    text = case.errors(now=case.next_update + dt.timedelta(days=1))
    assert "TCB info expired" in text
    assert "QE identity expired" in text
    assert "PCK CRL expired" in text
    # Without collateral the same quote still verifies at that time.
    assert case.verify(collateral=None, now=case.next_update + dt.timedelta(days=1))


def test_tampered_collateral_signatures(case: Case) -> None:
    tcb_info = case.coll["tcb_info"].replace(
        '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":99'
    )
    assert tcb_info != case.coll["tcb_info"]
    text = case.errors(collateral={**case.coll, "tcb_info": tcb_info})
    assert text == "TCB info signature does not verify with the Intel TCB Signing certificate"
    qe = case.coll["qe_identity"].replace('"isvprodid":', '"isvprodid": ')
    text = case.errors(collateral={**case.coll, "qe_identity": qe})
    assert text == "QE identity signature does not verify with the Intel TCB Signing certificate"


def test_crl_from_wrong_issuer_and_missing_parts(case: Case) -> None:
    coll = {**case.coll, "pck_crl": case.coll["root_ca_crl"]}
    assert "lacks the CRL of 'Intel SGX PCK" in case.errors(collateral=coll)
    coll = {k: v for k, v in case.coll.items() if not k.startswith("qe_identity")}
    want = "TD_QE" if case.tee == "tdx" else "QE"
    assert case.errors(collateral=coll) == f"collateral lacks the {want} identity"


def test_fmspc_mismatch_real_collateral(vectors_dir: Path) -> None:
    """TDX quote (fmspc b0c06f000000) offered another platform's real, signed TCB info."""
    case = Case(vectors_dir, "tdx")
    other = bundle(vectors_dir, "tdx/phala_v5_outdated_quote_collateral.json")
    coll = {
        **case.coll,
        "tcb_info": other["tcb_info"],
        "tcb_info_signature": other["tcb_info_signature"],
    }
    text = case.errors(collateral=coll)
    assert "FMSPC mismatch: PCK certificate FMSPC b0c06f000000" in text and "90c06f000000" in text


def test_sgx_quote_refuses_tdx_tcb_info(vectors_dir: Path) -> None:
    case = Case(vectors_dir, "sgx")
    other = bundle(vectors_dir, "tdx/phala_v4_quote_collateral.json")
    coll = {
        **case.coll,
        "tcb_info": other["tcb_info"],
        "tcb_info_signature": other["tcb_info_signature"],
    }
    assert "FMSPC mismatch" in case.errors(collateral=coll)


# -- under a TEST PKI (Intel's keys cannot sign CRLs or edited TCB info for us) ---------------


def forged_case(case: Case, **crl: tuple[int, ...]) -> tuple[ForgePki, bytes, dict[str, Any]]:
    pki = ForgePki.create(
        "Intel SGX PCK Platform CA" if case.tee == "tdx" else "Intel SGX PCK Processor CA"
    )
    forged = resign_quote(
        case.quote, load_pem_chain(case.quote.certification.pck_chain_pem)[0], pki
    )
    this, nxt = case.now - dt.timedelta(days=1), case.now + dt.timedelta(days=1)
    coll = resign_collateral(case.coll, pki)
    coll["root_ca_crl"] = pki.crl(issuer="root", revoked=crl.get("root", ()), this=this, nxt=nxt)
    coll["pck_crl"] = pki.crl(issuer="pck", revoked=crl.get("pck", ()), this=this, nxt=nxt)
    return pki, forged.raw, coll


def test_forged_pki_baseline_verifies(case: Case) -> None:
    """The test PKI path is sound: unrevoked, it verifies with the test anchors only."""
    pki, raw, coll = forged_case(case)
    claims = case.verify(raw, collateral=coll, anchors=pki.anchors)
    assert claims.tcb_status == case.verify().tcb_status
    assert "is not the pinned" in case.errors(raw, collateral=coll)


def test_revoked_pck_certificate(case: Case) -> None:
    pki, raw, coll = forged_case(case, pck=(77,))
    text = case.errors(raw, collateral=coll, anchors=pki.anchors)
    assert text.startswith("PCK certificate 'Intel SGX PCK Certificate' (serial 4d) is revoked")


def test_revoked_pck_ca(case: Case) -> None:
    pki, raw, coll = forged_case(case, root=(2,))
    text = case.errors(raw, collateral=coll, anchors=pki.anchors)
    assert "PCK CA certificate" in text and "is revoked by the CRL of 'Intel SGX Root CA'" in text


def test_revoked_tcb_signing_certificate(case: Case) -> None:
    pki, raw, coll = forged_case(case, root=(3,))
    text = case.errors(raw, collateral=coll, anchors=pki.anchors)
    assert "TCB Signing certificate 'Intel SGX TCB Signing' (serial 3) is revoked" in text


def test_fmspc_mismatch_with_validly_signed_tcb_info(case: Case) -> None:
    pki, raw, coll = forged_case(case)
    fmspc = json.loads(case.coll["tcb_info"])["fmspc"]
    edited = case.coll["tcb_info"].replace(fmspc, "112233445566")
    coll = resign_collateral({**case.coll, **coll}, pki, tcb_info=edited)
    text = case.errors(raw, collateral=coll, anchors=pki.anchors)
    assert text.startswith("FMSPC mismatch: PCK certificate FMSPC " + fmspc.lower())


def test_revoked_tcb_level_is_reported_as_status(case: Case) -> None:
    pki, raw, coll = forged_case(case)
    info = json.loads(case.coll["tcb_info"])
    for level in info["tcbLevels"]:
        level["tcbStatus"] = "Revoked"
    coll = resign_collateral({**case.coll, **coll}, pki, tcb_info=json.dumps(info))
    assert case.verify(raw, collateral=coll, anchors=pki.anchors).tcb_status == "Revoked"


def test_qe_identity_mismatch(case: Case) -> None:
    pki, raw, coll = forged_case(case)
    ident = json.loads(case.coll["qe_identity"])
    ident["mrsigner"] = "00" * 32
    ident["isvprodid"] = 99
    coll = resign_collateral({**case.coll, **coll}, pki, qe_identity=json.dumps(ident))
    text = case.errors(raw, collateral=coll, anchors=pki.anchors)
    assert "QE MRSIGNER" in text and "QE ISVPRODID" in text


# ---------------------------------------------------------------------------------------------
# Validation against reference values; registry and pipeline.


def test_tdx_validate_reports_every_mismatch(vectors_dir: Path) -> None:
    claims = verify("tdx", read(vectors_dir, "tdx/trustee_v4_quote6.dat"), now=QUOTE6_NOW)
    mrtd = claims.extra["mrtd"].hex()
    good = {
        "mrtd": [mrtd, "ab" * 48],
        "rtmr0": claims.extra["rtmrs"][0].hex().upper(),
        "rtmr3": "00" * 48,
        "mr_config_id": claims.extra["mr_config_id"].hex(),
        "mr_owner": "00" * 48,
        "min_tee_tcb_svn": "05030200000000000000000000000000",
    }
    assert TDX.validate(claims, good) == []
    bad = {**good, "rtmr1": "11" * 48, "mr_owner": "22" * 48, "min_tee_tcb_svn": "06" + "00" * 15}
    problems = TDX.validate(claims, bad)
    assert len(problems) == 3
    assert any(
        p.startswith("rtmr1: got fc4b0f84") and p.endswith("want " + "11" * 48) for p in problems
    )
    assert any(p.startswith("mr_owner: got 0000") for p in problems)
    assert any(p.startswith("tee_tcb_svn: got 0503") for p in problems)
    assert TDX.validate(claims, {"min_tee_tcb_svn": 3})[0].startswith("min_tee_tcb_svn")
    with pytest.raises(EvidenceValidationError) as info:
        validate_claims(
            claims,
            accepted_platforms=["tdx"],
            reference={**bad, "measurements": ["cd" * 48]},
            allow_debug=False,
            expected_report_data=None,
        )
    assert len(info.value.mismatches) == 4


def test_sgx_validate_reports_every_mismatch(vectors_dir: Path) -> None:
    claims = verify("sgx", read(vectors_dir, "sgx/phala_v3_quote.dat"), now=PHALA_SGX_NOW)
    good = {
        "mrenclave": claims.extra["mrenclave"].hex(),
        "mrsigner": ["aa" * 32, claims.extra["mrsigner"].hex()],
        "isv_prod_id": 0,
        "min_isv_svn": 0,
    }
    assert SGX.validate(claims, good) == []
    problems = SGX.validate(
        claims,
        {"mrenclave": "bb" * 32, "mrsigner": "cc" * 32, "isv_prod_id": [1, 2], "min_isv_svn": 1},
    )
    assert [p.split(":")[0] for p in problems] == [
        "mrenclave",
        "mrsigner",
        "isv_prod_id",
        "isv_svn",
    ]
    assert problems[3] == "isv_svn: got 0, want >= 1"


def test_registry_and_reference_keys() -> None:
    tdx, sgx = get_platform("tdx"), get_platform("sgx")
    assert tdx.reference_keys == frozenset(
        {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "min_tee_tcb_svn"}
    )
    assert sgx.reference_keys == frozenset({"mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"})
    assert not tdx.sniff(b"") and not sgx.sniff(b"\x03\x00")


def test_cross_platform_parse_is_refused(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceParseError, match="unsupported SGX quote version 4"):
        SGX.parse(read(vectors_dir, "tdx/phala_v4_quote.dat"))
    with pytest.raises(EvidenceParseError, match="unsupported TDX quote version 3"):
        TDX.parse(read(vectors_dir, "sgx/phala_v3_quote.dat"))


def test_v5_body_type_and_size_are_checked(vectors_dir: Path) -> None:
    raw = read(vectors_dir, "tdx/go-tdx-guest_v5_quote.dat")
    with pytest.raises(EvidenceParseError, match="body type 9"):
        TDX.parse(raw[:48] + struct.pack("<H", 9) + raw[50:])
    with pytest.raises(EvidenceParseError, match="must be 648 bytes"):
        TDX.parse(raw[:50] + struct.pack("<I", 584) + raw[54:])
    # v5 signs header || type || size || body: flipping the type to 2 breaks the parse,
    # flipping a body byte breaks the signature.
    b = bytearray(raw)
    b[54 + 200] ^= 1
    assert "quote signature does not verify" in errors_of(
        lambda: verify("tdx", bytes(b), now=V5_NOW)
    )


def test_garbage_never_raises_anything_but_parse_errors() -> None:
    for blob in (
        b"",
        b"\x04\x00\x02\x00\x81\x00\x00\x00",
        b"\x03\x00\x02\x00" + bytes(500),
        bytes(5000),
    ):
        for platform in (TDX, SGX):
            with pytest.raises(EvidenceParseError):
                platform.parse(blob)


def test_pck_extension_facts(vectors_dir: Path) -> None:
    quote = parse_quote(read(vectors_dir, "sgx/phala_v3_quote.dat"), tee="sgx")
    pck = parse_pck_extensions(load_pem_chain(quote.certification.pck_chain_pem)[0])
    assert pck.fmspc.hex() == "00a067110000" and pck.pce_id.hex() == "0000"
    assert len(pck.tcb_components) == 16 and len(pck.cpu_svn) == 16
    with pytest.raises(EvidenceParseError, match="no Intel SGX extension"):
        parse_pck_extensions(intel_root())


def test_combine_statuses() -> None:
    c = tcbmod.combine_statuses
    assert c(["UpToDate", "UpToDate"]) == "UpToDate"
    assert c(["SWHardeningNeeded", "OutOfDate"]) == "OutOfDate"
    assert c(["ConfigurationNeeded", "OutOfDate"]) == "OutOfDateConfigurationNeeded"
    assert c(["ConfigurationNeeded", "SWHardeningNeeded"]) == "ConfigurationAndSWHardeningNeeded"
    assert c(["UpToDate", "Revoked", "OutOfDate"]) == "Revoked"
