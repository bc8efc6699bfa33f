"""Azure confidential VM evidence end to end: SNP report, runtime data, vTPM quote.

Vectors: ``../shared/attestation-vectors/other/azure-cvm-vtpm_*`` (trustee az-snp-vtpm
forms v0, v1, v2 and a Genoa v0), outcomes from PROVENANCE.md: all four verify.  Every
VCEK they carry is valid 2025-01-24..2032-01-24 at the latest start, so all verify at NOW.
Mutations are made in memory; nothing is written into the project.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cctrain.attestation import azure_vtpm
from cctrain.attestation.base import Evidence, VerifiedClaims, get_platform
from cctrain.attestation.pipeline import detect_platform, validate_claims, verify_evidence
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

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)

PLATFORM = "azure-snp-vtpm"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
V0 = "other/azure-cvm-vtpm_milan_evidence_v0.json"
V1 = "other/azure-cvm-vtpm_milan_evidence_v1.json"
V2 = "other/azure-cvm-vtpm_milan_evidence_v2.json"
GENOA = "other/azure-cvm-vtpm_genoa_evidence.json"
CHALLENGE = b"challenge".hex()
V2_NONCE = (
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
    "a398f647caa2338748cd0fd9f5f819ef"
)

# (file, form, product, nonce hex) from PROVENANCE.md ("nonce 'challenge'").
VECTORS = [
    (
        GENOA,
        "trustee-v0",
        "Genoa",
        "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938c"
        "a05475f8b46094de6b64270ea35d950f",
    ),
    (V0, "trustee-v0", "Milan", CHALLENGE),
    (V1, "trustee-v1", "Milan", CHALLENGE),
    (V2, "trustee-v2", "Milan", V2_NONCE),
]


@cache
def other_key() -> rsa.RSAPrivateKey:
    """An RSA-2048 key that is not HCLAkPub (generated once per test process)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def load(vectors_dir: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((vectors_dir / name).read_bytes())
    return doc


def dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def verify_raw(raw: bytes, now: dt.datetime = NOW) -> VerifiedClaims:
    return verify_evidence(Evidence(platform=PLATFORM, report=raw, certificates=()), now=now)


def refusal(raw: bytes) -> str:
    """The refusal of ``raw`` as one string; fails the test if it verifies or crashes."""
    with pytest.raises((EvidenceParseError, EvidenceVerificationError)) as info:
        verify_raw(raw)
    exc = info.value
    if isinstance(exc, EvidenceVerificationError):
        return " | ".join(exc.errors)
    return str(exc)


# v1 carries every byte field as hex/base64url text: the easiest form to edit.
def v1_parts(doc: dict[str, Any]) -> tuple[bytes, list[bytes], bytes, bytes]:
    """(quote message, PCR values, signature, HCL report) of a v1 document."""
    q = doc["tpm_quote"]
    hcl = base64.urlsafe_b64decode(doc["hcl_report"] + "=" * (-len(doc["hcl_report"]) % 4))
    return (
        bytes.fromhex(q["message"]),
        [bytes.fromhex(p) for p in q["pcrs"]],
        bytes.fromhex(q["signature"]),
        hcl,
    )


def v1_with(
    doc: dict[str, Any],
    *,
    message: bytes | None = None,
    pcrs: list[bytes] | None = None,
    signature: bytes | None = None,
    hcl: bytes | None = None,
) -> bytes:
    out = json.loads(json.dumps(doc))
    q = out["tpm_quote"]
    if message is not None:
        q["message"] = message.hex()
    if pcrs is not None:
        q["pcrs"] = [p.hex() for p in pcrs]
    if signature is not None:
        q["signature"] = signature.hex()
    if hcl is not None:
        out["hcl_report"] = base64.urlsafe_b64encode(hcl).decode().rstrip("=")
    return dump(out)


def sign(message: bytes, key: rsa.RSAPrivateKey | None = None) -> bytes:
    return (key or other_key()).sign(message, padding.PKCS1v15(), hashes.SHA256())


def marshal_signature(sig_alg: int, hash_alg: int, sig: bytes) -> bytes:
    return struct.pack(">HHH", sig_alg, hash_alg, len(sig)) + sig


def attest(
    *,
    magic: int = 0xFF544347,
    st: int = 0x8018,
    signer: bytes = b"\x00\x0b" + bytes(32),
    extra: bytes = b"nonce",
    clock: tuple[int, int, int, int] = (1, 2, 3, 1),
    firmware: int = 7,
    banks: tuple[tuple[int, bytes], ...] = ((0x000B, b"\xff\xff\xff"),),
    digest: bytes = bytes(32),
) -> bytes:
    """A TPMS_ATTEST of a quote, marshalled field by field (TPM 2.0 Part 2, 10.12.12)."""
    out = struct.pack(">IH", magic, st)
    out += struct.pack(">H", len(signer)) + signer
    out += struct.pack(">H", len(extra)) + extra
    out += struct.pack(">QIIB", *clock) + struct.pack(">Q", firmware)
    out += struct.pack(">I", len(banks))
    for alg, bitmap in banks:
        out += struct.pack(">HB", alg, len(bitmap)) + bitmap
    out += struct.pack(">H", len(digest)) + digest
    return out


# --------------------------------------------------------------------------- every vector


@pytest.mark.parametrize("name,form,product,nonce", VECTORS, ids=lambda v: str(v)[-24:])
def test_vector_verifies_end_to_end(
    vectors_dir: Path, name: str, form: str, product: str, nonce: str
) -> None:
    raw = (vectors_dir / name).read_bytes()
    assert detect_platform(raw) == PLATFORM  # before sev-snp, which also reads the HCL part
    claims = verify_raw(raw)
    assert claims.platform == PLATFORM and claims.signer == "vcek"
    assert claims.nonce is not None and claims.nonce.hex() == nonce
    assert claims.report_data == b""  # no nonce here is cctrain's 64-byte binding
    assert claims.debug is False
    extra = claims.extra
    assert extra["evidence_format"] == form
    assert extra["snp"]["product"] == product
    assert extra["snp"]["measurement"] == claims.measurement
    assert sorted(extra["pcrs"]) == list(range(24))
    assert all(len(bytes.fromhex(v)) == 32 for v in extra["pcrs"].values())
    assert extra["tpm"]["pcr_selection"] == [{"hash": "sha256", "pcrs": list(range(24))}]
    assert len(extra["runtime"]["ak_pub_sha256"]) == 64
    json.dumps(claims.to_json())
    # The VCEK's validity, from the certificates: before it, the chain is refused.
    assert "SNP:" in refusal_at(raw, dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc))


def refusal_at(raw: bytes, now: dt.datetime) -> str:
    with pytest.raises(EvidenceVerificationError) as info:
        verify_raw(raw, now)
    return " | ".join(info.value.errors)


def test_the_forms_agree_and_v2_binds_user_data(vectors_dir: Path) -> None:
    v0 = verify_raw((vectors_dir / V0).read_bytes())
    v1 = verify_raw((vectors_dir / V1).read_bytes())
    assert v0.measurement == v1.measurement and v0.extra["pcrs"] == v1.extra["pcrs"]
    # Two quotes of one VM (the clock differs): the same signer and selection.
    for field in ("qualified_signer", "pcr_selection", "firmware_version"):
        assert v0.extra["tpm"][field] == v1.extra["tpm"][field]
    v2 = verify_raw((vectors_dir / V2).read_bytes())
    # PROVENANCE: trustee expects pcr00 84275b2f4312cd4f...; user-data is the nonce.
    assert v2.extra["pcrs"][0].startswith("84275b2f4312cd4f")
    assert v2.extra["runtime"]["user_data"] == V2_NONCE + "00" * 16  # padded to 64 bytes


def test_sev_snp_still_reads_only_the_snp_part(vectors_dir: Path) -> None:
    raw = (vectors_dir / V0).read_bytes()
    snp = verify_evidence(Evidence(platform="sev-snp", report=raw, certificates=()), now=NOW)
    azure = verify_raw(raw)
    assert snp.measurement == azure.measurement
    # The SNP report_data is the runtime-data hash, never a verifier's nonce.
    assert snp.report_data[32:] == bytes(32) and azure.nonce == b"challenge"


# --------------------------------------------------------------------------- the quote


def test_every_signed_byte_of_the_quote_matters(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    message, _, _, _ = v1_parts(doc)
    rng = random.Random(12)
    offsets = sorted({0, 4, 6, 40, len(message) - 1} | set(rng.sample(range(len(message)), 12)))
    assert len(offsets) >= 10
    for off in offsets:
        bad = bytearray(message)
        bad[off] ^= 0x01
        why = refusal(v1_with(doc, message=bytes(bad)))
        assert "TPMS_ATTEST" in why or "signature does not verify" in why, (off, why)


def test_pcr_values_must_match_the_quoted_digest(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    _, pcrs, _, _ = v1_parts(doc)
    for index in (0, 7, 23):
        edited = list(pcrs)
        edited[index] = bytes([edited[index][0] ^ 0x80]) + edited[index][1:]
        assert "PCR values do not match the quote" in refusal(v1_with(doc, pcrs=edited))
    assert "selects 24 PCRs, the evidence carries 23" in refusal(v1_with(doc, pcrs=pcrs[:-1]))
    swapped = [pcrs[1], pcrs[0], *pcrs[2:]]
    if pcrs[0] != pcrs[1]:
        assert "do not match" in refusal(v1_with(doc, pcrs=swapped))
    assert "31 bytes, want 32" in refusal(v1_with(doc, pcrs=[pcrs[0][:31], *pcrs[1:]]))


def test_signature_bytes_and_keys(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    message, _, signature, hcl = v1_parts(doc)
    for off in (0, 100, 255):
        bad = bytearray(signature)
        bad[off] ^= 0x40
        assert "does not verify with HCLAkPub" in refusal(v1_with(doc, signature=bytes(bad)))
    # The host signs its own quote: HCLAkPub (bound by the SNP report) refuses it.
    assert "does not verify with HCLAkPub" in refusal(v1_with(doc, signature=sign(message)))


def test_swapping_in_the_hosts_attestation_key_breaks_the_snp_binding(vectors_dir: Path) -> None:
    """The host puts its own AK in the runtime data and signs the quote with it."""
    doc = load(vectors_dir, V1)
    message, _, _, hcl = v1_parts(doc)
    start, size = 0x4D4, struct.unpack_from("<I", hcl, 0x4D0)[0]
    runtime = json.loads(hcl[start : start + size])
    numbers = other_key().public_key().public_numbers()
    n = base64.urlsafe_b64encode(numbers.n.to_bytes(256, "big")).decode().rstrip("=")
    for k in runtime["keys"]:
        if k["kid"] == "HCLAkPub":
            k["n"] = n
    new_runtime = json.dumps(runtime).encode()
    forged = (
        hcl[:0x4C0]
        + struct.pack("<I", 20 + len(new_runtime))
        + hcl[0x4C4:0x4D0]
        + struct.pack("<I", len(new_runtime))
        + new_runtime
    )
    why = refusal(v1_with(doc, hcl=forged, signature=sign(message)))
    assert "SNP: HCL runtime data" in why
    assert "does not verify" not in why  # the quote is fine; the key is not the bound one


def test_runtime_data_and_snp_report_bytes(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    _, _, _, hcl = v1_parts(doc)
    runtime_at = 0x4D4 + 40  # inside the JSON text
    signature = "SNP: report signature does not verify"
    binding = "SNP: HCL runtime data: report_data is not sha256(runtime data)"
    for off, want in ((0x20 + 0x90, signature), (0x20 + 0x2A0, signature), (runtime_at, binding)):
        bad = bytearray(hcl)
        bad[off] ^= 0x01
        why = refusal(v1_with(doc, hcl=bytes(bad)))
        assert want in why, (off, why)


def test_marshalled_signatures_and_algorithms(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    _, _, signature, _ = v1_parts(doc)
    good = marshal_signature(0x0014, 0x000B, signature)
    assert verify_raw(v1_with(doc, signature=good)).nonce == b"challenge"
    assert "sigAlg is 0x0016 (RSAPSS)" in refusal(
        v1_with(doc, signature=marshal_signature(0x0016, 0x000B, signature))
    )
    assert "sigAlg is 0x0018 (ECDSA)" in refusal(
        v1_with(doc, signature=marshal_signature(0x0018, 0x000B, signature))
    )
    assert "hashAlg is 0x0004 (SHA1)" in refusal(
        v1_with(doc, signature=marshal_signature(0x0014, 0x0004, signature))
    )
    assert "trailing" in refusal(v1_with(doc, signature=good + b"\x00"))
    assert "truncated" in refusal(v1_with(doc, signature=good[:-1]))


# --------------------------------------------------------------------------- TPMS_ATTEST


def test_tpms_attest_parses_field_by_field() -> None:
    q = azure_vtpm.parse_quote_attest(attest(banks=((0x000B, b"\x01\x00\x80"),)))
    assert q.extra_data == b"nonce" and q.firmware_version == 7
    assert q.clock_info.clock == 1 and q.clock_info.safe is True
    assert q.selected() == [(0x000B, 0), (0x000B, 23)]


@pytest.mark.parametrize(
    "raw,why",
    [
        (attest(magic=0xFF544348), "not TPM_GENERATED_VALUE"),
        (attest(st=0x8017), "not TPM_ST_ATTEST_QUOTE"),
        (attest()[:-1], "truncated"),
        (attest()[:5], "truncated"),
        (b"", "truncated"),
        (attest() + b"\x00", "trailing"),
        (attest(extra=bytes(67)), "extraData is 67 bytes"),
        (attest(signer=bytes(67)), "qualifiedSigner is 67 bytes"),
        (attest(clock=(1, 2, 3, 2)), "clockInfo.safe is 2"),
        (attest(banks=((0x000B, b"\x01"),) * 2), "selected twice"),
        (attest(banks=((0x000B, bytes(33)),)), "sizeofSelect 33"),
        (attest(banks=tuple((a, b"\x01") for a in range(17))), "17 PCR selections"),
        (attest(digest=bytes(65)), "pcrDigest is 65 bytes"),
        (bytes(5000), "limit 4096"),
    ],
)
def test_tpms_attest_refusals(raw: bytes, why: str) -> None:
    with pytest.raises(EvidenceParseError, match=why):
        azure_vtpm.parse_quote_attest(raw)


def test_quote_of_another_bank_or_digest_size(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    _, pcrs, _, _ = v1_parts(doc)
    key = other_key()
    # Quotes the host builds and signs: refused for their structure before the key.
    sha1 = attest(
        banks=((0x0004, b"\xff\xff\xff"),), digest=hashlib.sha256(b"".join(pcrs)).digest()
    )
    assert "selects PCR banks 0x0004 (SHA1)" in refusal(
        v1_with(doc, message=sha1, signature=sign(sha1, key))
    )
    short = attest(digest=bytes(20))
    assert "pcrDigest is 20 bytes" in refusal(v1_with(doc, message=short, signature=sign(short)))


# --------------------------------------------------------------------------- the document


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda d: d.update(extra=1), "unknown fields ['extra']"),
        (lambda d: d.update(version=3), "version 3 is not 0, 1 or 2"),
        (lambda d: d.update(version=True), "version True"),
        (lambda d: d.pop("tpm_quote"), "exactly one of tpm_quote/quote"),
        (lambda d: d.update(quote=d["tpm_quote"]), "exactly one of tpm_quote/quote"),
        (lambda d: d.pop("hcl_report"), "exactly one of hcl_report/report"),
        (lambda d: d["tpm_quote"].update(extra="00"), "want exactly the fields"),
        (lambda d: d["tpm_quote"].pop("pcrs"), "want exactly the fields"),
        (lambda d: d.update(tpm_quote=[]), "quote: expected an object"),
        (lambda d: d["tpm_quote"].update(pcrs=["00" * 32] * 65), "at most 64"),
        (lambda d: d["tpm_quote"].update(pcrs="00"), "expected a list"),
        (lambda d: d["tpm_quote"].update(message="zz"), "TPMS_ATTEST is truncated"),
        (lambda d: d.update(vcek=5), "vcek"),
        (lambda d: d.update(vcek="AAAA"), "vcek"),
        (lambda d: d.update(hcl_report="AAAA"), "HCL"),
    ],
)
def test_document_refusals(vectors_dir: Path, edit: Any, why: str) -> None:
    doc = load(vectors_dir, V1)
    edit(doc)
    with pytest.raises(EvidenceParseError) as info:
        azure_vtpm.parse(dump(doc))
    assert why in str(info.value)


def test_runtime_data_without_a_usable_attestation_key(vectors_dir: Path) -> None:
    doc = load(vectors_dir, V1)
    _, _, _, hcl = v1_parts(doc)
    start, size = 0x4D4, struct.unpack_from("<I", hcl, 0x4D0)[0]
    runtime = json.loads(hcl[start : start + size])

    def with_runtime(rt: Any) -> bytes:
        text = json.dumps(rt).encode()
        forged = (
            hcl[:0x4C0]
            + struct.pack("<I", 20 + len(text))
            + hcl[0x4C4:0x4D0]
            + struct.pack("<I", len(text))
            + text
        )
        return v1_with(doc, hcl=forged)

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    n1024 = base64.urlsafe_b64encode(small.public_numbers().n.to_bytes(128, "big")).decode()
    ak = next(k for k in runtime["keys"] if k["kid"] == "HCLAkPub")
    cases = [
        ({**runtime, "keys": [k for k in runtime["keys"] if k is not ak]}, "exactly one HCLAkPub"),
        ({**runtime, "keys": [*runtime["keys"], ak]}, "exactly one HCLAkPub key, has 2"),
        ({**runtime, "keys": "x"}, "no 'keys' list"),
        ([1], "must be a JSON object"),
        ({**runtime, "keys": [{**ak, "kty": "EC"}]}, "kty is 'EC'"),
        ({**runtime, "keys": [{**ak, "n": n1024.rstrip("=")}]}, "1024-bit RSA key"),
        ({**runtime, "keys": [{**ak, "n": "!!"}]}, "base64url"),
    ]
    for rt, why in cases:
        with pytest.raises(EvidenceParseError) as info:
            azure_vtpm.parse(with_runtime(rt))
        assert why in str(info.value), (why, str(info.value))


def test_garbage_never_crashes(vectors_dir: Path) -> None:
    raw = (vectors_dir / V0).read_bytes()
    rng = random.Random(7)
    for n in range(40):
        cut = raw[: rng.randrange(len(raw))] if n % 2 else bytes(rng.randbytes(300))
        with pytest.raises((EvidenceParseError, EvidenceVerificationError)):
            verify_raw(cut)
    for junk in (b"", b"{}", b"[]", b"null", b'{"quote": 1, "report": 2}', b"{" * 10000):
        with pytest.raises(EvidenceParseError):
            azure_vtpm.parse(junk)
    assert not azure_vtpm.sniff(b"\xff" * 10) and not azure_vtpm.sniff(b'{"a": 1}')


# --------------------------------------------------------------------------- policy values


def good_reference(claims: VerifiedClaims) -> dict[str, Any]:
    return {
        "measurements": [claims.measurement.hex()],
        "pcrs": {"0": claims.extra["pcrs"][0], 7: [bytes(32).hex(), claims.extra["pcrs"][7]]},
        "vmpl": 0,
    }


def check(claims: VerifiedClaims, reference: dict[str, Any], expected: bytes | None = None) -> None:
    validate_claims(
        claims,
        accepted_platforms=[PLATFORM],
        reference=reference,
        allow_debug=False,
        expected_report_data=expected,
    )


def problems(
    claims: VerifiedClaims, reference: dict[str, Any], expected: bytes | None = None
) -> str:
    with pytest.raises(EvidenceValidationError) as info:
        check(claims, reference, expected)
    return " | ".join(info.value.mismatches)


def test_reference_values(vectors_dir: Path) -> None:
    claims = verify_raw((vectors_dir / V2).read_bytes())
    ref = good_reference(claims)
    check(claims, ref)
    pcr0 = claims.extra["pcrs"][0]
    assert f"pcrs.0: got {pcr0}, want {'00' * 32}" in problems(
        claims, {**ref, "pcrs": {"0": "00" * 32}}
    )
    assert "pcrs.24: got none" in problems(claims, {**ref, "pcrs": {"24": "00" * 32}})
    assert "not a PCR index" in problems(claims, {**ref, "pcrs": {"x": "00"}})
    assert "not hex" in problems(claims, {**ref, "pcrs": {"1": "zz"}})
    assert "must map PCR index" in problems(claims, {**ref, "pcrs": ["00"]})
    assert "measurement: got" in problems(claims, {**ref, "measurements": ["00" * 48]})
    # The SNP reference values apply to the SNP report inside.
    assert "vmpl" in problems(claims, {**ref, "vmpl": 1})
    # A 48-byte nonce is not cctrain's 64-byte binding: a cctrain client refuses it.
    assert "report_data: got" in problems(claims, ref, expected=bytes(64))


def test_the_policy_must_pin_the_pcrs() -> None:
    keys = {pid: PartyKeys.generate(pid) for pid in ("hospital-a", "hospital-b", RECIPIENT)}
    doc = policy_document(keys)
    ref: dict[str, Any] = {"measurements": ["00" * 48]}
    doc["attestation"].update(platforms=[PLATFORM], allow_simulated=False)
    doc["attestation"]["reference"] = {PLATFORM: ref}
    with pytest.raises(PolicyError, match=r"reference.azure-snp-vtpm.pcrs.*no PCR is pinned"):
        parse_policy(json.dumps(doc).encode(), "json")
    ref["pcrs"] = {"7": "00" * 32}
    parse_policy(json.dumps(doc).encode(), "json")


# --------------------------------------------------------------------------- CLI contract


def _cli(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(main, ["attest", "verify", str(path), *args, "--format", "json"])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    doc: dict[str, Any] = json.loads(lines[0])
    assert doc["verified"] is (r.exit_code == 0)
    return r.exit_code, doc


@pytest.mark.parametrize("name,form,product,nonce", VECTORS, ids=lambda v: str(v)[-24:])
def test_cli_verifies_each_vector(
    vectors_dir: Path, name: str, form: str, product: str, nonce: str
) -> None:
    code, doc = _cli(vectors_dir / name, "--at", "2026-01-01T00:00:00Z")
    assert code == 0, doc["errors"]
    assert doc["platform"] == PLATFORM and doc["errors"] == [] and doc["nonce"] == nonce
    assert doc["debug"] is False and len(bytes.fromhex(doc["measurement"])) == 48
    assert set(doc["claims"]["pcrs"]) == {str(i) for i in range(24)}
    assert get_platform(PLATFORM).name == PLATFORM


def test_cli_failures(vectors_dir: Path, tmp_path: Path) -> None:
    doc = load(vectors_dir, V1)
    _, pcrs, _, _ = v1_parts(doc)
    bad = tmp_path / "bad.json"
    bad.write_bytes(v1_with(doc, pcrs=[bytes(32), *pcrs[1:]]))
    code, out = _cli(bad, "--platform", PLATFORM, "--at", "2026-01-01T00:00:00Z")
    assert code == 1 and any("PCR values do not match" in e for e in out["errors"])
    code, out = _cli(vectors_dir / V1, "--platform", PLATFORM, "--at", "2024-01-01T00:00:00Z")
    assert code == 1 and out["errors"]
    junk = tmp_path / "junk.json"
    junk.write_bytes(b'{"quote": {}, "report": []}')
    code, out = _cli(junk, "--platform", PLATFORM)
    assert code == 2 and out["errors"]
