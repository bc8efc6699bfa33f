"""The ``cctrain attest verify`` contract, exactly as other tools call it.

``cctrain attest verify EVIDENCE [--platform auto|sev-snp|tdx|sgx|nvidia-gpu] [--cert FILE]...
[--collateral FILE_OR_DIR] [--at ISO-8601] [--format json]`` prints ONE JSON object and exits
0 (verified), 1 (parses, does not verify) or 2 (unparseable evidence, bad arguments).

A representative set runs the installed console script as a subprocess; the rest goes through
``click.testing.CliRunner`` (same code path, no interpreter start-up).  Expected values are the
facts in ``../shared/attestation-vectors/PROVENANCE.md``; times are the ones the upstream tests
(and our per-platform tests) use.  Files derived from vectors (PEM of a DER, hex dumps, split
collateral, mutations) are written to ``tmp_path`` only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cctrain.attestation.verify_cli import run_attest_verify
from cctrain.cli.main import main

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)

#: The console script installed next to the interpreter running the tests.
CCTRAIN = Path(sys.executable).parent / "cctrain"

KEYS = {
    "platform",
    "verified",
    "errors",
    "measurement",
    "report_data",
    "debug",
    "signer",
    "chip_id",
    "tcb_status",
    "advisories",
}
SIGNERS = {"vcek", "vlek", "pck", "device", "simulated", "cca-cpak", "psa-iak", "aws-nitro"}
HEX = set("0123456789abcdef")

# Times (PROVENANCE.md and the upstream tests it cites).
GO_SEV_NOW = "2022-09-24T01:00:00Z"
MILAN_2024 = "2024-01-01T00:00:00Z"
OAK_GENOA_NOW = "2025-08-08T12:00:00Z"
TRUSTEE_E2E_NOW = "2025-06-01T00:00:00Z"
PHALA_TDX_NOW = "2025-07-19T10:00:34Z"  # collateral window end - 1 s
PHALA_SGX_NOW = "2025-07-19T10:01:17Z"
SPR_E4_NOW = "2023-07-01T01:00:00Z"
V5_NOW = "2026-02-03T01:00:00Z"
QUOTE6_NOW = "2025-11-01T00:00:00Z"
TRUSTEE_DEBUG_NOW = "2024-07-03T00:00:00Z"


@dataclass(frozen=True)
class Result:
    code: int
    doc: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def errors(self) -> str:
        return "; ".join(self.doc.get("errors") or [])


def _argv(evidence: Path, args: Sequence[str]) -> list[str]:
    return ["attest", "verify", str(evidence), *args, "--format", "json"]


def _check_document(stdout: str, code: int) -> dict[str, Any]:
    """ONE JSON object on stdout with every contract key, typed as promised."""
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"want exactly one JSON line, got {stdout!r}"
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    assert KEYS <= set(doc), KEYS - set(doc)
    assert isinstance(doc["verified"], bool) and doc["verified"] is (code == 0)
    assert isinstance(doc["errors"], list) and all(isinstance(e, str) for e in doc["errors"])
    assert isinstance(doc["advisories"], list)
    if code == 0:
        assert doc["errors"] == []
        assert isinstance(doc["platform"], str)
        for k in ("measurement", "report_data"):
            assert doc[k] and set(doc[k]) <= HEX and len(doc[k]) % 2 == 0
        assert isinstance(doc["debug"], bool)
        assert doc["signer"] in SIGNERS
        assert doc["chip_id"] is None or (set(doc["chip_id"]) <= HEX and doc["chip_id"])
        assert doc["tcb_status"] is None or isinstance(doc["tcb_status"], str)
    else:
        assert doc["errors"], "a failure must say why"
    return doc


def cli(evidence: Path, *args: str) -> Result:
    """In-process, through click (the same command the console script runs)."""
    r = CliRunner().invoke(main, _argv(evidence, args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, _check_document(r.stdout, r.exit_code), r.stdout, r.stderr)


def sub(evidence: Path, *args: str) -> Result:
    """The installed ``cctrain`` console script, as another tool would run it."""
    p = subprocess.run(
        [str(CCTRAIN), *_argv(evidence, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in p.stderr, p.stderr
    return Result(p.returncode, _check_document(p.stdout, p.returncode), p.stdout, p.stderr)


@pytest.fixture(scope="module")
def v(vectors_dir: Path) -> Path:
    if not CCTRAIN.is_file():  # pragma: no cover - the venv always has it
        pytest.skip(f"console script {CCTRAIN} not installed")
    return vectors_dir


def expect_ok(r: Result, **want: Any) -> None:
    assert r.code == 0, r.doc
    for k, val in want.items():
        assert r.doc[k] == val, (k, r.doc[k], val)


def expect_fail(r: Result, code: int, *needles: str) -> None:
    assert r.code == code, r.doc
    assert r.doc["verified"] is False
    for n in needles:
        assert n in r.errors, (n, r.errors)


# ------------------------------------------------------------------ expected facts (PROVENANCE)

GO_SEV = {
    "platform": "sev-snp",
    "signer": "vcek",
    "debug": True,  # policy 0xb0000: DEBUG allowed
    "tcb_status": None,
    "advisories": [],
    "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01",
    "report_data": "0102030405" + "00" * 59,
    "chip_id": "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
    "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
}

SNP_CASES = [
    # (report, certs, at, measurement, report_data, chip_id, debug)
    (
        "sev-snp/go-sev-guest_milan_attestation.bin",
        ("sev-snp/go-sev-guest_milan_vcek.der",),
        GO_SEV_NOW,
        GO_SEV["measurement"],
        GO_SEV["report_data"],
        GO_SEV["chip_id"],
        True,
    ),
    (
        "sev-snp/virtee-sev_milan_report.hex",
        ("sev-snp/virtee-sev_milan_vcek.der",),
        MILAN_2024,
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
        "3e1a0dc39b2c60bd95b9c480cd81841f",
        "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c64581"
        "0b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd",
        "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
        "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6",
        False,
    ),
    (
        "sev-snp/trustee_milan_vcek_report.bin",
        ("sev-snp/trustee_milan_vcek.der",),
        MILAN_2024,
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c"
        "23500644e0e692e6be917f9050d3d38c",
        "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2" + "00" * 32,
        "c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f"
        "8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e",
        False,
    ),
    (
        "sev-snp/oak_genoa_report.bin",
        ("sev-snp/oak_genoa_vcek.der",),
        OAK_GENOA_NOW,
        "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f5"
        "2384370e77b7032862a08c440a9bc4dc",
        "8100555af0ad8e7525be6dffeed0af83e30bbacbf03b76e175e6894d1ed057ce" + "00" * 32,
        "d2421d976f95ce0ba849b7cc5c789122f1e59c77a037272c137ae4d188bb102a"
        "dbc7c53d0302bff82a432c94a305dec7a7a270ceb19a10f04a83316c6486968d",
        False,
    ),
    (
        # Azure HCL report: VCEK + ASK + ARK in one PEM file.
        "sev-snp/azure-cvm_milan_hcl_report.bin",
        ("sev-snp/azure-cvm_milan_vcek_chain.pem",),
        MILAN_2024,
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308"
        "b459d5ef1a12e0c22944eb386d17c315",
        "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac" + "00" * 32,
        "19752a447db501a32ade46428a46e92639bd3515dbb45e2e67bbcb0934ffcf1f"
        "3e3c004ccb4a99c9fa7e4ffb09da6b324ac58acedaf679f24ba7db5f838c6cca",
        False,
    ),
    (
        # trustee JSON evidence carries its VCEK: no --cert.
        "sev-snp/trustee_e2e_genoa_evidence.json",
        (),
        TRUSTEE_E2E_NOW,
        "6a6519d757e68c2e939c9dbbbc1828498e8de35d2766dd05f1a2cca5059d0cf4"
        "ae62a36d75c837974dd50b315506e73e",
        "7e7320889600c7ac133aea7b896c51f41026002982292a7369559796999c1bf9"
        "29eef3ff23c46e858f0b1982f9a92b17c51b578d958cde6b0c92978f150cf9b0",
        "371c55d6d15cb50f16dc31d39a24e300caaabff4431e841111429b73ec45ad67"
        "ea6e687ffae7bf84b54a5d0e6d79b3ef6ff0bd8b4cff94c2163af5c5de8718e8",
        False,
    ),
]

PHALA_TDX = {
    "platform": "tdx",
    "signer": "pck",
    "debug": False,
    "chip_id": None,
    "tcb_status": "UpToDate",
    "advisories": [],
    "measurement": "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7",
    "report_data": "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
    "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20",
}
PHALA_SGX = {
    "platform": "sgx",
    "signer": "pck",
    "debug": False,
    "chip_id": None,
    "tcb_status": "ConfigurationAndSWHardeningNeeded",
    "advisories": ["INTEL-SA-00289", "INTEL-SA-00615"],
    "measurement": "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
    "report_data": b"Hello, world!".hex() + "00" * 51,
}

DCAP_NO_COLLATERAL = [
    # (quote, at, platform, debug, measurement (MRTD / MRENCLAVE), report_data)
    (
        "tdx/trustee_v4_quote6.dat",
        QUOTE6_NOW,
        "tdx",
        False,
        "21e8dead92d6c69d7cbba79816686c03a48485c7df0c11f6f04792d5e1d378f6"
        "b8c46615ba6946adccac6becffbb1e88",
        "26cae1c77185617fb6a03fc29bf1f924596e52352b9b7594940b576ae126cd4a"
        "570cc3202a900c5d19a6eb0a95b32cfd" + "00" * 16,
    ),
    (
        "tdx/trustee_v4_quote.dat",
        TRUSTEE_DEBUG_NOW,
        "tdx",
        True,  # TUD debug bit: a production policy must reject it
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b6"
        "89cac1599ccea1b7d420483a9ce5f031",
        "7c71fe2c86eff65a7cf8dbc22b3275689fd0464a267baced1bf94fc1324656ae"
        "b755da3d44d098c0c87382f3a5f85b45c8a28fee1d3bdb38342bf96671501429",
    ),
    (
        "tdx/go-tdx-guest_v5_quote.dat",
        V5_NOW,
        "tdx",
        False,
        "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb0"
        "01a1ced3ee19747dda8f750c3bc8f876",
        "945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e"
        "094aed63060cd4a4933a4dd537ed1255c9c79ecb3ed82cd1b486233e31c25c3a",
    ),
    (
        # zero-padded to 8000 bytes; report_data == the all-zero nonce
        "tdx/go-tdx-guest_gce_cos113_v4_quote.dat",
        "2025-01-01T00:00:00Z",
        "tdx",
        False,
        "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954db"
        "a41394c7717cb2735396c1d04231f94a",
        "00" * 64,
    ),
    (
        "sgx/trustee_occlum_v3_quote.dat",
        TRUSTEE_DEBUG_NOW,
        "sgx",
        True,  # ATTRIBUTES 0x07: DEBUG enclave
        "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68",
        b"test".hex() + "00" * 60,
    ),
]

NVIDIA_CASES = [
    # (report, chain, request nonce)
    (
        "nvidia-gpu/nvtrust_hopper_report.hex",
        "nvidia-gpu/nvtrust_hopper_cert_chain.pem",
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    ),
    (
        "nvidia-gpu/nvat-sdk_hopper_report.hex",
        "nvidia-gpu/nvat-sdk_hopper_cert_chain.pem",
        "5bb22e377702d4e1e8215a903ba094826b9ac7f731dee1fe8102958bf2840aca",
    ),
    (
        "nvidia-gpu/nvat-sdk_sample_hopper_report.hex",
        "nvidia-gpu/nvat-sdk_sample_hopper_cert_chain.pem",
        "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66",
    ),
    (
        "nvidia-gpu/nvat-sdk_sample_blackwell_report.hex",
        "nvidia-gpu/nvat-sdk_sample_blackwell_cert_chain.pem",
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    ),
    (
        # 'expired' is the RIM/OCSP status online; offline the report and chain verify.
        "nvidia-gpu/nvat-sdk_sample_hopper_report_expired.hex",
        "nvidia-gpu/nvat-sdk_sample_hopper_cert_chain_expired.pem",
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    ),
    (
        # one trailing byte after the signature
        "nvidia-gpu/trustee_hopper_coco_report1.hex",
        "nvidia-gpu/trustee_hopper_coco_cert_chain1.pem",
        "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec",
    ),
]
NVIDIA_JSON_NONCE = "e97b23a1718095a0e9e35edca810768c70a6a5a389b705e753b197912bc11576"


def expect_nvidia(r: Result, nonce: str) -> None:
    expect_ok(
        r,
        platform="nvidia-gpu",
        signer="device",
        debug=False,
        tcb_status=None,
        advisories=[],
        report_data=nonce + "00" * 32,
    )
    assert len(r.doc["measurement"]) == 96  # SHA-384 of the signed measurement record
    assert r.doc["chip_id"] and len(r.doc["chip_id"]) == 16  # 8-byte device serial


# ------------------------------------------------------------------ subprocess (representative)


def test_subprocess_representative_set(v: Path, tmp_path: Path) -> None:
    """The installed console script: one happy path per platform, each exit code, bad args."""
    go_sev = v / "sev-snp/go-sev-guest_milan_attestation.bin"
    vcek = v / "sev-snp/go-sev-guest_milan_vcek.der"
    expect_ok(sub(go_sev, "--cert", str(vcek), "--at", GO_SEV_NOW), **GO_SEV)
    r = sub(
        v / "tdx/phala_v4_quote.dat",
        "--platform",
        "tdx",
        "--collateral",
        str(v / "tdx/phala_v4_quote_collateral.json"),
        "--at",
        PHALA_TDX_NOW,
    )
    expect_ok(r, **PHALA_TDX)
    r = sub(
        v / "sgx/phala_v3_quote.dat",
        "--collateral",
        str(v / "sgx/phala_v3_quote_collateral.json"),
        "--at",
        PHALA_SGX_NOW,
    )
    expect_ok(r, **PHALA_SGX)
    report, chain, nonce = NVIDIA_CASES[0]
    # The GPU chain is valid until 9999: no --at needed (the current time is used).
    expect_nvidia(sub(v / report, "--cert", str(v / chain)), nonce)

    # exit 1: parses, does not verify
    r = sub(
        v / "sev-snp/trustee_milan_vcek_report.bin",
        "--cert",
        str(v / "sev-snp/trustee_milan_vcek_invalid_new.der"),
        "--at",
        MILAN_2024,
    )
    expect_fail(r, 1, "signature does not verify", "chip_id mismatch")
    # exit 2: garbage, bad --at, missing --cert file, unknown --platform
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 3)
    expect_fail(sub(garbage), 2, "cannot tell the platform")
    expect_fail(sub(go_sev, "--cert", str(vcek), "--at", "not-a-time"), 2, "--at")
    expect_fail(sub(go_sev, "--cert", str(tmp_path / "missing.der")), 2, "missing.der")
    p = subprocess.run(
        [str(CCTRAIN), *_argv(go_sev, ["--platform", "sev"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # An unknown platform is still answered with the JSON document, exit 2.
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert doc["verified"] is False and "unknown platform 'sev'" in doc["errors"][0]


# ------------------------------------------------------------------ SEV-SNP


@pytest.mark.parametrize("platform", ["auto", "sev-snp"])
@pytest.mark.parametrize(
    ("report", "certs", "at", "meas", "rd", "chip", "debug"),
    SNP_CASES,
    ids=[c[0].split("/")[1] for c in SNP_CASES],
)
def test_snp_happy_paths(
    v: Path,
    platform: str,
    report: str,
    certs: tuple[str, ...],
    at: str,
    meas: str,
    rd: str,
    chip: str,
    debug: bool,
) -> None:
    args = ["--platform", platform, "--at", at]
    for c in certs:
        args += ["--cert", str(v / c)]
    r = cli(v / report, *args)
    expect_ok(
        r,
        platform="sev-snp",
        signer="vcek",
        measurement=meas,
        report_data=rd,
        chip_id=chip,
        debug=debug,
        tcb_status=None,
        advisories=[],
    )


def test_snp_vcek_der_and_pem_give_the_same_document(v: Path, tmp_path: Path) -> None:
    report = v / "sev-snp/go-sev-guest_milan_attestation.bin"
    der = v / "sev-snp/go-sev-guest_milan_vcek.der"
    pem = tmp_path / "vcek.pem"
    pem.write_bytes(x509.load_der_x509_certificate(der.read_bytes()).public_bytes(Encoding.PEM))
    a = cli(report, "--cert", str(der), "--at", GO_SEV_NOW)
    b = cli(report, "--cert", str(pem), "--at", GO_SEV_NOW)
    expect_ok(a, **GO_SEV)
    assert a.doc == b.doc
    # VCEK plus the (redundant) ASK/ARK chain as a second --cert: still verifies.
    c = cli(
        report,
        "--cert",
        str(pem),
        "--cert",
        str(v / "sev-snp/amd_milan_ask_ark.pem"),
        "--at",
        GO_SEV_NOW,
    )
    assert c.doc == a.doc


def test_snp_hex_and_raw_evidence_files_agree(v: Path, tmp_path: Path) -> None:
    """The .hex vector, its raw bytes, and hex wrapped the way ``xxd -p`` writes it."""
    hex_file = v / "sev-snp/virtee-sev_milan_report.hex"
    cert = ["--cert", str(v / "sev-snp/virtee-sev_milan_vcek.der"), "--at", MILAN_2024]
    raw = bytes.fromhex(hex_file.read_text())
    assert len(raw) == 1184
    raw_file = tmp_path / "report.bin"
    raw_file.write_bytes(raw)
    h = raw.hex()
    wrapped = tmp_path / "wrapped.hex"  # 60 digits a line: 40 lines, an odd number of breaks
    wrapped.write_text("".join(h[i : i + 60] + "\n" for i in range(0, len(h), 60)))
    upper_crlf = tmp_path / "upper.hex"
    upper_crlf.write_bytes(h.upper().encode() + b"\r\n")
    docs = [cli(f, *cert) for f in (hex_file, raw_file, wrapped, upper_crlf)]
    for r in docs:
        assert r.code == 0, r.doc
        assert r.doc == docs[0].doc
    assert docs[0].doc["measurement"].startswith("7a1e5c266c0108db")


def test_snp_negative_vectors(v: Path, tmp_path: Path) -> None:
    report = v / "sev-snp/trustee_milan_vcek_report.bin"
    for bad in ("trustee_milan_vcek_invalid_legacy.der", "trustee_milan_vcek_invalid_new.der"):
        r = cli(report, "--cert", str(v / "sev-snp" / bad), "--at", MILAN_2024)
        expect_fail(
            r,
            1,
            "report signature does not verify",
            "SEV-VCEK signature does not verify with SEV-Milan",
            "chip_id mismatch",
        )
    good = ["--cert", str(v / "sev-snp/trustee_milan_vcek.der"), "--at", MILAN_2024]
    data = report.read_bytes()
    # trustee: byte 42 +1 => signature failure; byte 384 (reported_tcb) +1 => TCB check failure
    for offset, needle in ((42, "signature does not verify"), (384, "TCB mismatch")):
        b = bytearray(data)
        b[offset] = (b[offset] + 1) % 256
        f = tmp_path / f"mut{offset}.bin"
        f.write_bytes(bytes(b))
        expect_fail(cli(f, *good), 1, needle)
    # virtee: milan_report_invalid flips bit 0x80 of byte 21 (policy)
    b = bytearray(bytes.fromhex((v / "sev-snp/virtee-sev_milan_report.hex").read_text()))
    b[21] ^= 0x80
    f = tmp_path / "virtee_invalid.bin"
    f.write_bytes(bytes(b))
    r = cli(f, "--cert", str(v / "sev-snp/virtee-sev_milan_vcek.der"), "--at", MILAN_2024)
    expect_fail(r, 1, "signature does not verify")
    # another chip's VCEK; no VCEK at all
    go_sev = v / "sev-snp/go-sev-guest_milan_attestation.bin"
    r = cli(go_sev, "--cert", str(v / "sev-snp/oak_milan_vcek.der"), "--at", "2025-09-01T00:00:00Z")
    expect_fail(r, 1, "chip_id mismatch", "signature does not verify")
    expect_fail(cli(go_sev, "--at", GO_SEV_NOW), 1, "no VCEK certificate")


def test_snp_expired_and_not_yet_valid(v: Path) -> None:
    report = v / "sev-snp/trustee_milan_vcek_report.bin"
    cert = ["--cert", str(v / "sev-snp/trustee_milan_vcek.der")]
    # VCEK valid 2023-01-24..2030-01-24
    expect_fail(cli(report, *cert, "--at", "2031-01-01T00:00:00Z"), 1, "expired")
    expect_fail(cli(report, *cert, "--at", "2022-01-01T00:00:00Z"), 1, "not yet valid")
    # an explicit offset is honoured: 03:00+02:00 is 01:00Z, after the VCEK's 00:55:28Z start
    go_sev = v / "sev-snp/go-sev-guest_milan_attestation.bin"
    go_cert = ["--cert", str(v / "sev-snp/go-sev-guest_milan_vcek.der")]
    expect_ok(cli(go_sev, *go_cert, "--at", "2022-09-24T03:00:00+02:00"), **GO_SEV)
    expect_fail(cli(go_sev, *go_cert, "--at", "2022-09-24T02:00:00+02:00"), 1, "not yet valid")


# ------------------------------------------------------------------ TDX / SGX


def _split_bundle(bundle_file: Path, out: Path) -> Path:
    """Write a collateral bundle as the files Intel PCS serves (a --collateral directory)."""
    b = json.loads(bundle_file.read_text())
    out.mkdir()
    (out / "tcbinfo.json").write_text(
        '{"tcbInfo":' + b["tcb_info"] + ',"signature":"' + b["tcb_info_signature"] + '"}'
    )
    (out / "qe_identity.json").write_text(
        '{"enclaveIdentity":'
        + b["qe_identity"]
        + ',"signature":"'
        + b["qe_identity_signature"]
        + '"}'
    )
    (out / "root_ca_crl.der").write_bytes(bytes.fromhex(b["root_ca_crl"]))
    (out / "pck_crl.der").write_bytes(bytes.fromhex(b["pck_crl"]))
    (out / "tcb_signing_chain.pem").write_text(b["tcb_info_issuer_chain"])
    (out / "pck_crl_issuer_chain.pem").write_text(b["pck_crl_issuer_chain"])
    return out


DCAP_COLLATERAL = [
    ("tdx/phala_v4_quote.dat", "tdx/phala_v4_quote_collateral.json", PHALA_TDX_NOW, PHALA_TDX),
    ("sgx/phala_v3_quote.dat", "sgx/phala_v3_quote_collateral.json", PHALA_SGX_NOW, PHALA_SGX),
]


@pytest.mark.parametrize(("quote", "bundle", "at", "want"), DCAP_COLLATERAL, ids=["tdx", "sgx"])
def test_dcap_with_collateral_bundle_and_directory(
    v: Path, tmp_path: Path, quote: str, bundle: str, at: str, want: dict[str, Any]
) -> None:
    directory = _split_bundle(v / bundle, tmp_path / "pcs")
    docs = []
    for platform in ("auto", want["platform"]):
        for coll in (v / bundle, directory):
            r = cli(v / quote, "--platform", platform, "--collateral", str(coll), "--at", at)
            expect_ok(r, **want)
            docs.append(r.doc)
    assert all(d == docs[0] for d in docs)
    # Without collateral: still verified, but no TCB status or advisories.
    r = cli(v / quote, "--at", at)
    expect_ok(r, **{**want, "tcb_status": None, "advisories": []})
    # After the collateral window: the collateral has expired.
    r = cli(v / quote, "--collateral", str(v / bundle), "--at", "2025-08-19T00:00:00Z")
    expect_fail(r, 1, "TCB info expired", "QE identity expired", "PCK CRL expired")


@pytest.mark.parametrize(
    ("quote", "at", "platform", "debug", "meas", "rd"),
    DCAP_NO_COLLATERAL,
    ids=[c[0].split("/")[1] for c in DCAP_NO_COLLATERAL],
)
def test_dcap_without_collateral(
    v: Path, quote: str, at: str, platform: str, debug: bool, meas: str, rd: str
) -> None:
    for p in ("auto", platform):
        r = cli(v / quote, "--platform", p, "--at", at)
        expect_ok(
            r,
            platform=platform,
            signer="pck",
            debug=debug,
            measurement=meas,  # TDX: MRTD, SGX: MRENCLAVE
            report_data=rd,
            chip_id=None,
            tcb_status=None,
            advisories=[],
        )


def test_go_tdx_guest_collateral_directory(v: Path, tmp_path: Path) -> None:
    """The real PCS-files directory: SPR E4 matches no TCB level (PROVENANCE), nothing else."""
    coll = ["--collateral", str(v / "tdx/go-tdx-guest_collateral")]
    spr = v / "tdx/go-tdx-guest_v4_spr_e4_quote.dat"
    # As shipped it has a 39-byte non-zero test trailer: refused as unparseable.
    expect_fail(cli(spr, *coll, "--at", SPR_E4_NOW), 2, "trailing bytes")
    trimmed = tmp_path / "spr_e4.dat"
    trimmed.write_bytes(spr.read_bytes()[:-39])
    ok = cli(trimmed, "--at", SPR_E4_NOW)
    expect_ok(ok, platform="tdx", signer="pck", tcb_status=None)
    assert ok.doc["measurement"].startswith("6363b8043668a3ad953278e10389574d")
    r = cli(trimmed, "--platform", "tdx", *coll, "--at", SPR_E4_NOW)
    expect_fail(r, 1, "TCB level not supported")
    assert len(r.doc["errors"]) == 1, r.doc["errors"]  # signatures, CRLs and dates all pass
    # The v5 quote at its own time: the 2023 CRLs and TCB Signing cert have expired.
    r = cli(v / "tdx/go-tdx-guest_v5_quote.dat", *coll, "--at", V5_NOW)
    expect_fail(r, 1, "Root CA CRL expired", "PCK CRL expired", "'Intel SGX TCB Signing' expired")


def test_dcap_negative_vectors(v: Path, tmp_path: Path) -> None:
    r = cli(
        v / "tdx/phala_v5_outdated_quote.dat",
        "--collateral",
        str(v / "tdx/phala_v5_outdated_quote_collateral.json"),
        "--at",
        "2026-03-01T00:00:00Z",
    )
    expect_fail(r, 1, "TCB level not supported", "no matching TCB level")
    # Expired PCK chain at a later --at (PCK valid until 2032-02-06).
    r = cli(v / "tdx/phala_v4_quote.dat", "--at", "2040-01-01T00:00:00Z")
    expect_fail(r, 1, "'Intel SGX PCK Certificate' expired")
    r = cli(v / "sgx/phala_v3_quote.dat", "--at", "2031-01-01T00:00:00Z")
    expect_fail(r, 1, "'Intel SGX PCK Certificate' expired")
    # The wrong TEE's collateral.
    r = cli(
        v / "sgx/phala_v3_quote.dat",
        "--collateral",
        str(v / "tdx/phala_v4_quote_collateral.json"),
        "--at",
        PHALA_SGX_NOW,
    )
    assert r.code == 1 and r.doc["errors"]


def test_corrupt_certificate_inside_a_quote_is_unparseable(v: Path, tmp_path: Path) -> None:
    """One base64 letter of the embedded PCK certificate's key changed (found by fuzzing): the
    verifier used to crash with a traceback (no JSON, exit 1); now exit 2 with a reason."""
    data = bytearray((v / "tdx/phala_v4_quote.dat").read_bytes())
    assert data[1790:1791] == b"D" and data.find(b"-----BEGIN CERTIFICATE-----") < 1790
    data[1790] = ord("T")
    f = tmp_path / "quote.dat"
    f.write_bytes(bytes(data))
    r = cli(f, "--at", PHALA_TDX_NOW)
    expect_fail(r, 2, "certificate")


# ------------------------------------------------------------------ NVIDIA GPU


@pytest.mark.parametrize(
    ("report", "chain", "nonce"), NVIDIA_CASES, ids=[c[0].split("/")[1] for c in NVIDIA_CASES]
)
def test_nvidia_happy_paths(v: Path, report: str, chain: str, nonce: str) -> None:
    docs = []
    for platform in ("auto", "nvidia-gpu"):
        r = cli(v / report, "--platform", platform, "--cert", str(v / chain))
        expect_nvidia(r, nonce)
        docs.append(r.doc)
    # Same result at an explicit time inside every certificate's validity.
    r = cli(v / report, "--cert", str(v / chain), "--at", "2026-01-01T00:00:00Z")
    docs.append(r.doc)
    assert all(d == docs[0] for d in docs)


def test_nvidia_json_evidence_carries_its_chain(v: Path) -> None:
    r = cli(v / "nvidia-gpu/nvat-sdk_evidence_hopper_590_12.json")
    expect_nvidia(r, NVIDIA_JSON_NONCE)


def test_nvidia_negative_vectors(v: Path, tmp_path: Path) -> None:
    bad = v / "nvidia-gpu/nvat-sdk_sample_hopper_report_invalid_signature.hex"
    for chain_file in sorted((v / "nvidia-gpu").glob("*cert_chain*.pem")):
        expect_fail(cli(bad, "--cert", str(chain_file)), 1, "report signature does not verify")
    report, chain, _ = NVIDIA_CASES[0]
    expect_fail(cli(v / report), 1, "no device certificate chain")
    # Another GPU's chain.
    other = v / "nvidia-gpu/nvat-sdk_sample_blackwell_cert_chain.pem"
    expect_fail(cli(v / report, "--cert", str(other)), 1, "signature does not verify")
    # The chain (valid from 2020-10-17 .. 9999) is not yet valid at an earlier --at.
    r = cli(v / report, "--cert", str(v / chain), "--at", "2020-01-01T00:00:00Z")
    expect_fail(r, 1, "not yet valid")


# ------------------------------------------------------------------ parse errors, bad arguments


def test_truncated_and_garbage_evidence_exit_2(v: Path, tmp_path: Path) -> None:
    def write(name: str, data: bytes) -> Path:
        f = tmp_path / name
        f.write_bytes(data)
        return f

    snp = (v / "sev-snp/go-sev-guest_milan_attestation.bin").read_bytes()
    tdx = (v / "tdx/phala_v4_quote.dat").read_bytes()
    gpu = (v / "nvidia-gpu/nvtrust_hopper_report.hex").read_bytes()
    cases = [
        (write("snp.bin", snp[:500]), "sev-snp", "1184"),
        (write("tdx.dat", tdx[:3000]), "tdx", "truncated"),
        (write("sgx.dat", (v / "sgx/phala_v3_quote.dat").read_bytes()[:1000]), "sgx", ""),
        (write("gpu.hex", gpu[:3000]), "nvidia-gpu", "truncated"),
    ]
    for f, platform, needle in cases:
        expect_fail(cli(f, "--platform", platform), 2, needle)
        assert cli(f).code == 2  # auto: either undetectable or truncated
    for data in (b"", b"\x00" * 4000, bytes(range(256)) * 8, b"hello, not evidence\n", b"{}"):
        expect_fail(cli(write("junk", data)), 2)
    # A valid quote parsed as the wrong platform.
    expect_fail(cli(v / "tdx/phala_v4_quote.dat", "--platform", "sgx"), 2, "version 4")
    expect_fail(cli(v / "sev-snp/oak_milan_report.bin", "--platform", "tdx"), 2)
    expect_fail(cli(tmp_path / "does-not-exist.bin"), 2, "cannot read")
    expect_fail(cli(tmp_path), 2, "cannot read")  # a directory


def test_bad_arguments_exit_2(v: Path, tmp_path: Path) -> None:
    go_sev = v / "sev-snp/go-sev-guest_milan_attestation.bin"
    vcek = ["--cert", str(v / "sev-snp/go-sev-guest_milan_vcek.der")]
    for at in ("yesterday", "2022-13-01T00:00:00Z", "", "24/09/2022"):
        expect_fail(cli(go_sev, *vcek, "--at", at), 2, "--at")
    expect_fail(cli(go_sev, "--cert", str(tmp_path / "nope.der")), 2, "cannot read --cert")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    expect_fail(cli(go_sev, "--cert", str(junk)), 2, "certificate cannot be parsed")
    quote = v / "tdx/phala_v4_quote.dat"
    expect_fail(cli(quote, "--collateral", str(tmp_path / "nope.json")), 2, "nope.json")
    expect_fail(cli(quote, "--collateral", str(junk)), 2, "junk.pem")
    # Unknown --platform: exit 2 with the JSON document naming it.
    r = CliRunner().invoke(main, _argv(go_sev, ["--platform", "amd-sev"]))
    assert r.exit_code == 2 and "unknown platform 'amd-sev'" in json.loads(r.stdout)["errors"][0]
    # The contract function itself answers an unknown platform with exit 2 and a document.
    code, doc = run_attest_verify(go_sev, platform="amd-sev")
    assert code == 2 and "unknown platform 'amd-sev'" in doc["errors"][0]
    assert KEYS <= set(doc) and doc["verified"] is False
