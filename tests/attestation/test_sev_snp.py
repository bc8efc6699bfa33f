"""SEV-SNP: every real vector verifies (or fails) as PROVENANCE.md says; mutations fail for
the right reason.  Vectors are read from ../shared via the ``vectors_dir`` fixture."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from cctrain.attestation import sev_snp
from cctrain.attestation.base import Evidence, VerifiedClaims, get_platform
from cctrain.attestation.pipeline import read_evidence_bytes, validate_claims, verify_evidence
from cctrain.attestation.sev_snp.abi import TcbVersion
from cctrain.attestation.sev_snp.certs import (
    endorsement_key_extensions,
    load_amd_roots,
    load_certificate,
    pinned_roots,
    signed_by,
)
from cctrain.errors import EvidenceParseError, EvidenceValidationError, EvidenceVerificationError

# AMD issues VCEKs with serial number 0; cryptography warns when the shared
# pipeline (load_certificates) loads them.  That warning is expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)

UTC = dt.timezone.utc


def t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Vector:
    report: str
    certs: tuple[str, ...]
    now: dt.datetime
    version: int
    product: str
    policy: int
    debug: bool
    tcb: dict[str, int]
    measurement: str
    report_data: str
    chip_id: str
    fmt: str = "report"


# Facts copied from PROVENANCE.md (sev-snp section).
VECTORS = [
    Vector(
        "sev-snp/go-sev-guest_milan_attestation.bin",
        ("sev-snp/go-sev-guest_milan_vcek.der",),
        t("2022-09-24T01:00:00"),
        2,
        "Milan",
        0xB0000,
        True,
        {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68},
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
        "0102030405" + "00" * 59,
        "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
    ),
    Vector(
        "sev-snp/oak_genoa_report.bin",
        ("sev-snp/oak_genoa_vcek.der",),
        t("2025-08-08T12:00:00"),
        5,
        "Genoa",
        0x30000,
        False,
        {"bootloader": 10, "tee": 0, "snp": 25, "microcode": 84},
        "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc",
        "8100555af0ad8e7525be6dffeed0af83e30bbacbf03b76e175e6894d1ed057ce" + "00" * 32,
        "d2421d976f95ce0ba849b7cc5c789122f1e59c77a037272c137ae4d188bb102adbc7c53d0302bff82a432c94a305dec7a7a270ceb19a10f04a83316c6486968d",
    ),
    Vector(
        "sev-snp/oak_milan_report.bin",
        ("sev-snp/oak_milan_vcek.der",),
        t("2025-07-28T12:00:00"),
        3,
        "Milan",
        0x30000,
        False,
        {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
        "195b01b74976a1faba13bd85eaf787958f0a46e6dddd45c5bdbf8673522777842b8057ae5d866b75416efb62012deaa3",
        "a7ca989b0359ea4e5efc47bdbcad84b2df3f26fd09ee7bda5bb27953abf68992" + "00" * 32,
        "a3fdc2c64dc299ab90d4238973864b586378e2e5ef9c9d4dc608f3bdaa89a969a03f1b5752cad55a0c1547ade800dbd7404e9cb3f9738da3b280d1df69cf82e4",
    ),
    Vector(
        "sev-snp/trustee_e2e_genoa_evidence.json",
        (),
        t("2025-06-01T00:00:00"),
        3,
        "Genoa",
        0x30000,
        False,
        {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 25},
        "6a6519d757e68c2e939c9dbbbc1828498e8de35d2766dd05f1a2cca5059d0cf4ae62a36d75c837974dd50b315506e73e",
        "7e7320889600c7ac133aea7b896c51f41026002982292a7369559796999c1bf929eef3ff23c46e858f0b1982f9a92b17c51b578d958cde6b0c92978f150cf9b0",
        "371c55d6d15cb50f16dc31d39a24e300caaabff4431e841111429b73ec45ad67ea6e687ffae7bf84b54a5d0e6d79b3ef6ff0bd8b4cff94c2163af5c5de8718e8",
        "trustee-snp-json",
    ),
    Vector(
        "sev-snp/trustee_milan_vcek_report.bin",
        ("sev-snp/trustee_milan_vcek.der",),
        t("2024-01-01T00:00:00"),
        2,
        "Milan",
        0x3001F,
        False,
        {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
        "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2" + "00" * 32,
        "c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e",
    ),
    Vector(
        "sev-snp/virtee-sev_milan_report.hex",
        ("sev-snp/virtee-sev_milan_vcek.der",),
        t("2023-05-01T00:00:00"),
        2,
        "Milan",
        0x30000,
        False,
        {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd",
        "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6",
    ),
    Vector(
        "sev-snp/azure-cvm_milan_hcl_report.bin",
        ("sev-snp/azure-cvm_milan_vcek_chain.pem",),
        t("2024-01-01T00:00:00"),
        2,
        "Milan",
        0x3001F,
        False,
        {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315",
        "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac" + "00" * 32,
        "19752a447db501a32ade46428a46e92639bd3515dbb45e2e67bbcb0934ffcf1f3e3c004ccb4a99c9fa7e4ffb09da6b324ac58acedaf679f24ba7db5f838c6cca",
        "azure-hcl",
    ),
]

# other/: Azure vTPM bundles carrying an HCL report and the VCEK (SNP part only).
AZURE_BUNDLES = [
    ("other/azure-cvm-vtpm_genoa_evidence.json", "Genoa", 3),
    ("other/azure-cvm-vtpm_milan_evidence_v0.json", "Milan", 3),
    ("other/azure-cvm-vtpm_milan_evidence_v1.json", "Milan", 3),
    ("other/azure-cvm-vtpm_milan_evidence_v2.json", "Milan", 3),
]

GO_SEV = "sev-snp/go-sev-guest_milan_attestation.bin"
GO_SEV_VCEK = "sev-snp/go-sev-guest_milan_vcek.der"
GO_SEV_NOW = t("2022-09-24T01:00:00")


def read(vectors_dir: Path, name: str) -> bytes:
    return read_evidence_bytes((vectors_dir / name).read_bytes())


def run(
    vectors_dir: Path,
    report: bytes,
    cert_names: tuple[str, ...] = (GO_SEV_VCEK,),
    *,
    now: dt.datetime = GO_SEV_NOW,
    extra_certs: tuple[bytes, ...] = (),
) -> VerifiedClaims:
    """End to end through the shared pipeline, as the CLI does it."""
    certs = tuple((vectors_dir / c).read_bytes() for c in cert_names) + extra_certs
    return verify_evidence(Evidence(platform="sev-snp", report=report, certificates=certs), now=now)


def errors_of(exc_info: pytest.ExceptionInfo[EvidenceVerificationError]) -> str:
    return " | ".join(exc_info.value.errors)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# --- every vector -----------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: Path(v.report).name)
def test_vector_verifies_with_provenance_facts(vectors_dir: Path, vec: Vector) -> None:
    claims = run(vectors_dir, read(vectors_dir, vec.report), vec.certs, now=vec.now)
    assert claims.platform == "sev-snp"
    assert claims.signer == "vcek"
    assert claims.measurement.hex() == vec.measurement
    assert claims.report_data.hex() == vec.report_data
    assert claims.chip_id is not None and claims.chip_id.hex() == vec.chip_id
    assert claims.debug is vec.debug
    assert claims.tcb_status is None and claims.advisories == ()
    extra = claims.extra
    assert extra["version"] == vec.version
    assert extra["product"] == vec.product
    assert extra["guest_policy"] == vec.policy
    assert extra["vmpl"] == 0
    assert extra["reported_tcb"] == vec.tcb
    assert extra["evidence_format"] == vec.fmt
    assert len(extra["host_data"]) == 32 and len(extra["family_id"]) == 16
    json.dumps(claims.to_json())  # everything serialises
    # PROVENANCE: every certificate is also valid "today" (2026).
    later = run(vectors_dir, read(vectors_dir, vec.report), vec.certs, now=t("2026-06-01T00:00:00"))
    assert later == claims


def test_trustee_json_rebuilds_the_derived_report(vectors_dir: Path) -> None:
    ev = sev_snp.parse(read(vectors_dir, "sev-snp/trustee_e2e_genoa_evidence.json"))
    assert ev.report.raw == read(vectors_dir, "sev-snp/trustee_e2e_genoa_report.bin")
    assert len(ev.certificates) == 1


def test_trustee_raw_report_verifies_with_the_embedded_vcek(vectors_dir: Path) -> None:
    ev = sev_snp.parse(read(vectors_dir, "sev-snp/trustee_e2e_genoa_evidence.json"))
    report = read(vectors_dir, "sev-snp/trustee_e2e_genoa_report.bin")
    claims = verify_evidence(
        Evidence(platform="sev-snp", report=report, certificates=ev.certificates),
        now=t("2025-06-01T00:00:00"),
    )
    assert claims.extra["product"] == "Genoa"
    assert claims.extra["current_tcb"] == {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 25}


def test_trustee_report_without_any_vcek_fails_clearly(vectors_dir: Path) -> None:
    report = read(vectors_dir, "sev-snp/trustee_e2e_genoa_report.bin")
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, report, (), now=t("2025-06-01T00:00:00"))
    assert "no VCEK certificate supplied" in errors_of(ei)


@pytest.mark.parametrize("name,product,version", AZURE_BUNDLES)
def test_azure_vtpm_bundles_snp_part_verifies(
    vectors_dir: Path, name: str, product: str, version: int
) -> None:
    raw = read(vectors_dir, name)
    assert get_platform("sev-snp").sniff(raw)
    claims = run(vectors_dir, raw, (), now=t("2026-01-01T00:00:00"))
    assert claims.extra["product"] == product
    assert claims.extra["version"] == version
    assert claims.extra["evidence_format"] == "azure-vtpm-json"
    assert b"HCLAkPub" in claims.extra["runtime_data"]


def test_trustee_milan_current_tcb_differs_from_reported(vectors_dir: Path) -> None:
    vec = VECTORS[4]
    claims = run(vectors_dir, read(vectors_dir, vec.report), vec.certs, now=vec.now)
    assert claims.extra["current_tcb"]["microcode"] == 206
    assert claims.extra["committed_tcb"]["microcode"] == 115


def test_report_fields_parse(vectors_dir: Path) -> None:
    rep = sev_snp.parse_report(read(vectors_dir, "sev-snp/oak_genoa_report.bin"))
    assert (rep.cpuid_fam_id, rep.cpuid_mod_id, rep.cpuid_step) == (0x19, 0x11, 1)
    assert str(rep.current_version) == "1.55.43"
    assert rep.launch_mit_vector == 1 and rep.current_mit_vector == 1
    v2 = sev_snp.parse_report(read(vectors_dir, GO_SEV))
    assert v2.cpuid_fam_id is None and v2.product is None and v2.launch_mit_vector is None
    assert str(v2.current_version) == "1.49.3"
    assert v2.reported_tcb.raw == 0x4405000000000002


# --- invalid VCEKs, upstream negative tests ---------------------------------


@pytest.mark.parametrize(
    "vcek",
    ["sev-snp/trustee_milan_vcek_invalid_legacy.der", "sev-snp/trustee_milan_vcek_invalid_new.der"],
)
def test_invalid_vceks_fail(vectors_dir: Path, vcek: str) -> None:
    # Both parse (legacy raw hwID and DER OCTET STRING hwID) ...
    exts = endorsement_key_extensions(load_certificate((vectors_dir / vcek).read_bytes()))
    assert exts.hwid == bytes(range(64))
    # ... but neither is signed by the Milan ASK nor matches the report.
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            read(vectors_dir, "sev-snp/trustee_milan_vcek_report.bin"),
            (vcek,),
            now=t("2024-01-01T00:00:00"),
        )
    text = errors_of(ei)
    assert "SEV-VCEK signature does not verify with SEV-Milan" in text
    assert "report signature does not verify" in text
    assert "chip_id mismatch" in text


def test_trustee_byte_42_changes_signature(vectors_dir: Path) -> None:
    raw = bytearray(read(vectors_dir, "sev-snp/trustee_milan_vcek_report.bin"))
    raw[42] = (raw[42] + 1) & 0xFF
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            bytes(raw),
            ("sev-snp/trustee_milan_vcek.der",),
            now=t("2024-01-01T00:00:00"),
        )
    assert errors_of(ei) == "report signature does not verify with the endorsement key"


def test_trustee_byte_384_changes_reported_tcb(vectors_dir: Path) -> None:
    raw = bytearray(read(vectors_dir, "sev-snp/trustee_milan_vcek_report.bin"))
    raw[384] = (raw[384] + 1) & 0xFF
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            bytes(raw),
            ("sev-snp/trustee_milan_vcek.der",),
            now=t("2024-01-01T00:00:00"),
        )
    text = errors_of(ei)
    assert "TCB mismatch: reported_tcb.bootloader is 4, SEV-VCEK certifies 3" in text
    assert "report signature does not verify" in text


def test_virtee_byte_21_flip_is_refused(vectors_dir: Path) -> None:
    # virtee/sev's milan_report_invalid: bit 0x80 of byte 21 (0x15 lies in FAMILY_ID,
    # which the signature covers).
    raw = flip(read(vectors_dir, "sev-snp/virtee-sev_milan_report.hex"), 21, 0x80)
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, raw, ("sev-snp/virtee-sev_milan_vcek.der",), now=t("2023-05-01T00:00:00"))
    assert errors_of(ei) == "report signature does not verify with the endorsement key"


def test_policy_reserved_high_bit_is_refused(vectors_dir: Path) -> None:
    raw = flip(read(vectors_dir, "sev-snp/virtee-sev_milan_report.hex"), 0x08 + 5, 0x80)
    with pytest.raises(EvidenceParseError, match="reserved bits 26..63 must be zero"):
        sev_snp.parse(raw)


# --- parse mutations ----------------------------------------------------------


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r[:-1], "length is 1183 bytes, want exactly 1184"),
        (lambda r: r + b"\x00", "length is 1185 bytes, want exactly 1184"),
        (lambda r: b"", "length is 0 bytes"),
        (lambda r: (1).to_bytes(4, "little") + r[4:], "version 1 is not supported"),
        (lambda r: (4).to_bytes(4, "little") + r[4:], "version 4 is not supported"),
        (
            lambda r: r[:0x34] + (2).to_bytes(4, "little") + r[0x38:],
            "signature algorithm 2 is unknown",
        ),
        (lambda r: flip(r, 0x48, 0x0C), "SIGNING_KEY 3 is reserved"),
        (lambda r: flip(r, 0x4B, 0x80), "KEY_INFO 0x80000000: reserved bits"),
        (lambda r: flip(r, 0x4D), "reserved field after KEY_INFO [0x4c:0x50]"),
        (lambda r: flip(r, 0x190), "reserved field after REPORTED_TCB"),
        (lambda r: flip(r, 0x1EB), "reserved field after CURRENT version"),
        (lambda r: flip(r, 0x250), "reserved field after LAUNCH_TCB"),
        (lambda r: flip(r, 0x400), "reserved field after the ECDSA signature"),
        (lambda r: flip(r, 0x0A, 0x02), "reserved bit 17 must be 1"),
    ],
)
def test_parse_rejects_malformed_reports(vectors_dir: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    raw = mutate(read(vectors_dir, GO_SEV))
    with pytest.raises(EvidenceParseError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sev_snp.parse(raw)


def test_v3_reserved_after_cpuid_must_be_zero(vectors_dir: Path) -> None:
    raw = flip(read(vectors_dir, "sev-snp/oak_milan_report.bin"), 0x18B)
    with pytest.raises(EvidenceParseError, match="reserved field after CPUID"):
        sev_snp.parse(raw)


def test_parse_errors_on_bad_containers() -> None:
    bad = [
        b"HCLA" + b"\x00" * 10,
        b"{not json",
        b'{"attestation_report": {"version": 2}}',
        b'{"hcl_report": "!!!", "vcek": "x"}',
        b"[1, 2]",
        b'{"attestation_report": 5}',
    ]
    for raw in bad:
        with pytest.raises(EvidenceParseError):
            sev_snp.parse(raw)


def test_sniff(vectors_dir: Path) -> None:
    snp = get_platform("sev-snp")
    for vec in VECTORS:
        assert snp.sniff(read(vectors_dir, vec.report)), vec.report
    assert not snp.sniff(read(vectors_dir, "tdx/phala_v4_quote.dat"))
    assert not snp.sniff(read(vectors_dir, GO_SEV)[:-1])
    assert not snp.sniff(b"")
    assert not snp.sniff(b'{"foo": 1}')


# --- verify mutations ---------------------------------------------------------


def test_flipped_byte_in_signed_body_fails(vectors_dir: Path) -> None:
    raw = flip(read(vectors_dir, GO_SEV), 0x90)  # first measurement byte
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, raw)
    assert errors_of(ei) == "report signature does not verify with the endorsement key"


def test_flipped_byte_in_signature_fails(vectors_dir: Path) -> None:
    raw = flip(read(vectors_dir, GO_SEV), 0x2A0 + 5)  # inside r
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, raw)
    assert "report signature does not verify" in errors_of(ei)
    raw = flip(read(vectors_dir, GO_SEV), 0x2A0 + 72 + 5)  # inside s
    with pytest.raises(EvidenceVerificationError, match="report signature does not verify"):
        run(vectors_dir, raw)


def test_flipped_byte_in_vcek_signature_fails(vectors_dir: Path) -> None:
    der = flip((vectors_dir / GO_SEV_VCEK).read_bytes(), -1)  # last byte of AMD's signature
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, read(vectors_dir, GO_SEV), (), extra_certs=(der,))
    assert errors_of(ei) == "SEV-VCEK signature does not verify with SEV-Milan"


def test_genoa_vcek_for_milan_report_fails(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            read(vectors_dir, "sev-snp/oak_milan_report.bin"),
            ("sev-snp/oak_genoa_vcek.der",),
            now=t("2025-08-08T12:00:00"),
        )
    text = errors_of(ei)
    assert (
        "product line: report CPUID (family 0x19 model 0x1) is Milan, "
        "but the certificate chain is Genoa" in text
    )
    assert "report signature does not verify" in text
    assert "chip_id mismatch" in text
    assert "TCB mismatch" in text


def test_milan_vcek_for_v2_milan_report_of_other_chip_fails(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            read(vectors_dir, GO_SEV),
            ("sev-snp/virtee-sev_milan_vcek.der",),
            now=t("2024-01-01T00:00:00"),
        )
    text = errors_of(ei)
    assert "chip_id mismatch: report chip_id 3ac3fe21" in text
    assert "TCB mismatch: reported_tcb.bootloader is 2, SEV-VCEK certifies 3" in text


def test_turin_vcek_for_genoa_report_fails(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            read(vectors_dir, "sev-snp/oak_genoa_report.bin"),
            ("sev-snp/virtee-sev_turin_vcek.der",),
            now=t("2025-08-08T12:00:00"),
        )
    text = errors_of(ei)
    assert "is Genoa, but the certificate chain is Turin" in text


def test_expired_vcek_at_later_now(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, read(vectors_dir, GO_SEV), now=t("2030-01-01T00:00:00"))
    assert errors_of(ei).startswith("VCEK certificate has expired at 2030-01-01")


def test_expired_ark_at_much_later_now(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, read(vectors_dir, GO_SEV), now=t("2046-01-01T00:00:00"))
    text = errors_of(ei)
    assert "ARK-Milan certificate has expired" in text
    assert "SEV-Milan certificate has expired" in text


def test_not_yet_valid_vcek(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, read(vectors_dir, GO_SEV), now=t("2022-09-24T00:00:00"))
    assert errors_of(ei).startswith("VCEK certificate is not yet valid")


def test_vlek_signing_key_without_vlek_fails(vectors_dir: Path) -> None:
    raw = flip(read(vectors_dir, GO_SEV), 0x48, 0x04)  # SIGNING_KEY = VLEK
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, raw)
    assert "report is signed by the VLEK but only a SEV-VCEK certificate was supplied" in errors_of(
        ei
    )


def test_unsigned_report_fails(vectors_dir: Path) -> None:
    raw = flip(read(vectors_dir, GO_SEV), 0x48, 0x1C)  # SIGNING_KEY = 7 (none)
    with pytest.raises(EvidenceVerificationError, match="not signed"):
        run(vectors_dir, raw)


def test_no_vcek_no_getter(vectors_dir: Path) -> None:
    with pytest.raises(EvidenceVerificationError) as ei:
        run(vectors_dir, read(vectors_dir, GO_SEV), ())
    assert "no VCEK certificate supplied" in errors_of(ei)


def test_getter_fetches_vcek_by_kds_url(vectors_dir: Path) -> None:
    asked: list[str] = []
    vcek = (vectors_dir / "sev-snp/oak_genoa_vcek.der").read_bytes()

    def getter(url: str) -> bytes:
        asked.append(url)
        return vcek

    report = read(vectors_dir, "sev-snp/oak_genoa_report.bin")
    claims = verify_evidence(
        Evidence(platform="sev-snp", report=report), now=t("2025-08-08T12:00:00"), getter=getter
    )
    assert claims.extra["product"] == "Genoa"
    assert asked == [
        "https://kdsintf.amd.com/vcek/v1/Genoa/"
        "d2421d976f95ce0ba849b7cc5c789122f1e59c77a037272c137ae4d188bb102a"
        "dbc7c53d0302bff82a432c94a305dec7a7a270ceb19a10f04a83316c6486968d"
        "?blSPL=10&teeSPL=0&snpSPL=25&ucodeSPL=84"
    ]


def test_getter_failure_and_v2_without_product(vectors_dir: Path) -> None:
    def broken(url: str) -> bytes:
        raise OSError("network down")

    report = read(vectors_dir, "sev-snp/oak_genoa_report.bin")
    with pytest.raises(EvidenceVerificationError, match="fetching the VCEK .* failed: OSError"):
        verify_evidence(Evidence(platform="sev-snp", report=report), now=GO_SEV_NOW, getter=broken)
    with pytest.raises(EvidenceVerificationError, match="KDS URL cannot be built"):
        verify_evidence(
            Evidence(platform="sev-snp", report=read(vectors_dir, GO_SEV)),
            now=GO_SEV_NOW,
            getter=broken,
        )


def test_hcl_runtime_data_tamper_fails(vectors_dir: Path) -> None:
    raw = read(vectors_dir, "sev-snp/azure-cvm_milan_hcl_report.bin")
    tampered = flip(raw, 0x4D4 + 10)  # inside the runtime JSON, outside the signed report
    with pytest.raises(EvidenceVerificationError) as ei:
        run(
            vectors_dir,
            tampered,
            ("sev-snp/azure-cvm_milan_vcek_chain.pem",),
            now=t("2024-01-01T00:00:00"),
        )
    assert errors_of(ei).startswith("HCL runtime data: report_data is not sha256(runtime data)")


def test_supplied_ark_is_not_trusted_beyond_the_pinned_one(vectors_dir: Path) -> None:
    # The Genoa ASK+ARK supplied next to a Milan VCEK change nothing: the chain
    # is found by the VCEK's issuer among pinned / ARK-signed intermediates.
    claims = run(
        vectors_dir,
        read(vectors_dir, GO_SEV),
        (GO_SEV_VCEK, "sev-snp/amd_genoa_ask_ark.pem"),
    )
    assert claims.extra["product"] == "Milan"


# --- pinned roots -------------------------------------------------------------


def test_pinned_roots_cover_three_products() -> None:
    roots = pinned_roots()
    assert sorted({(c.product, c.kind) for c in roots.chains}) == [
        (p, k) for p in ("Genoa", "Milan", "Turin") for k in ("ask", "asvk")
    ]


def test_swapped_root_file_is_noticed(tmp_path: Path) -> None:
    src = Path(sev_snp.__file__).resolve().parents[1] / "roots"
    for f in src.glob("amd_*.pem"):
        shutil.copy(f, tmp_path / f.name)
    load_amd_roots(tmp_path)  # an intact copy loads
    shutil.copy(src / "amd_genoa_ask_ark.pem", tmp_path / "amd_milan_ask_ark.pem")
    with pytest.raises(
        EvidenceVerificationError, match="amd_milan_ask_ark.pem: ARK key fingerprint"
    ):
        load_amd_roots(tmp_path)


def test_turin_vcek_chains_to_pinned_turin_ask(vectors_dir: Path) -> None:
    vcek = load_certificate((vectors_dir / "sev-snp/virtee-sev_turin_vcek.der").read_bytes())
    turin = [c for c in pinned_roots().chains if c.product == "Turin" and c.kind == "ask"][0]
    milan = [c for c in pinned_roots().chains if c.product == "Milan" and c.kind == "ask"][0]
    assert signed_by(vcek, turin.intermediate) is None
    assert signed_by(vcek, milan.intermediate) is not None
    exts = endorsement_key_extensions(vcek)
    assert exts.product_line == "Turin"
    assert exts.tcb == {
        "fmc": 0,
        "bootloader": 0,
        "tee": 0,
        "snp": 0,
        "spl5": 0,
        "spl6": 0,
        "spl7": 0,
        "microcode": 9,
    }
    assert exts.hwid is not None and len(exts.hwid) == 8
    tcb = exts.tcb_version(turin=True)
    assert tcb.raw == 9 << 56
    url = sev_snp.vcek_url("Turin", exts.hwid + bytes(56), tcb)
    assert url == (
        f"https://kdsintf.amd.com/vcek/v1/Turin/{exts.hwid.hex()}"
        "?fmcSPL=0&blSPL=0&teeSPL=0&snpSPL=0&ucodeSPL=9"
    )


def test_turin_tcb_layout() -> None:
    raw = 0x11_00_00_00_04_03_02_01  # ucode 0x11, snp 4, tee 3, bl 2, fmc 1
    turin = TcbVersion(raw=raw, turin=True)
    assert turin.named() == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 0x11}
    classic = TcbVersion(raw=raw, turin=False)
    assert classic.named() == {"bootloader": 1, "tee": 2, "snp": 0, "microcode": 0x11}
    assert TcbVersion.compose(turin.all_components(), turin=True) == turin


# --- validate -------------------------------------------------------------------


@pytest.fixture
def go_claims(vectors_dir: Path) -> VerifiedClaims:
    return run(vectors_dir, read(vectors_dir, GO_SEV))


def test_debug_report_rejected_by_strict_policy(go_claims: VerifiedClaims) -> None:
    with pytest.raises(EvidenceValidationError) as ei:
        validate_claims(
            go_claims,
            accepted_platforms=["sev-snp"],
            reference={},
            allow_debug=False,
            expected_report_data=None,
        )
    assert ei.value.mismatches == (
        "debug: got True, want False (the policy forbids debug enclaves)",
    )


def test_validate_passes_matching_reference(go_claims: VerifiedClaims) -> None:
    reference = {
        "measurements": [go_claims.measurement.hex()],
        "min_tcb": {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68},
        "vmpl": 0,
        "min_guest_svn": 0,
        "host_data": "00" * 32,
        "family_id": "00" * 16,
        "image_id": "00" * 16,
        "products": ["Milan", "Genoa"],
    }
    assert set(reference) - {"measurements"} <= get_platform("sev-snp").reference_keys
    validate_claims(
        go_claims,
        accepted_platforms=["sev-snp"],
        reference=reference,
        allow_debug=True,
        expected_report_data=go_claims.report_data,
    )


def test_validate_reports_every_mismatch(go_claims: VerifiedClaims) -> None:
    problems = sev_snp.validate(
        go_claims,
        {
            "min_tcb": {"snp": 9, "fmc": 1},
            "vmpl": 1,
            "min_guest_svn": 3,
            "host_data": "11" * 32,
            "family_id": "zz",
            "products": ["Genoa"],
        },
    )
    assert "reported_tcb.snp: got 5, want >= 9" in problems
    assert "committed_tcb.snp: got 5, want >= 9" in problems
    assert any(p.startswith("reported_tcb.fmc: got no such component on Milan") for p in problems)
    assert "vmpl: got 0, want 1" in problems
    assert "guest_svn: got 0, want >= 3" in problems
    assert f"host_data: got {'00' * 32}, want {'11' * 32}" in problems
    assert "family_id: reference value 'zz' is not hex" in problems
    assert "product: got Milan, want one of ['Genoa']" in problems
    assert "current_tcb.snp: got 5, want >= 9" in problems
    assert len(problems) == 9


def test_tcb_below_minimum_fails_end_to_end(go_claims: VerifiedClaims) -> None:
    with pytest.raises(EvidenceValidationError) as ei:
        validate_claims(
            go_claims,
            accepted_platforms=["sev-snp"],
            reference={"min_tcb": {"microcode": 200}},
            allow_debug=True,
            expected_report_data=None,
        )
    assert "reported_tcb.microcode: got 68, want >= 200" in ei.value.mismatches


def test_verify_takes_certificates_objects_directly(vectors_dir: Path) -> None:
    ev = sev_snp.parse(read(vectors_dir, GO_SEV))
    vcek = load_certificate((vectors_dir / GO_SEV_VCEK).read_bytes())
    assert isinstance(vcek, x509.Certificate)
    claims = sev_snp.verify(ev.report, certificates=[vcek], now=GO_SEV_NOW.replace(tzinfo=None))
    assert claims.extra["product"] == "Milan"
