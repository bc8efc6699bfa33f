"""Parse SEV-SNP evidence bytes into typed values: lengths and structure only.

Nothing here checks a signature; :mod:`.verify` does.  Accepted inputs:

* a raw 1184-byte ATTESTATION_REPORT (ABI v2, v3, v5);
* an Azure confidential-VM HCL report (``HCLA`` header, SNP report, IGVM
  runtime data whose hash the SNP report_data carries);
* JSON bundles that carry an SNP report: the Azure vTPM evidence of
  confidential-containers/trustee (v0, v1, v2 forms; the HCL report and VCEK
  are used, the TPM quote is *not* verified here) and trustee's ``sev`` crate
  serde form (report fields as integer arrays, ``cert_chain`` with the VCEK).

Every malformed input raises :class:`~cctrain.errors.EvidenceParseError`
naming the cause; no lower-level exception escapes.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from cctrain.attestation.sev_snp.abi import (
    CHIP_ID_SIZE,
    ECDSA_COMPONENT_SIZE,
    POLICY_DEBUG_BIT,
    POLICY_FIRST_RESERVED_ZERO_BIT,
    POLICY_RESERVED_ONE_BIT,
    REPORT_SIZE,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNATURE_END,
    SIGNATURE_OFFSET,
    SIGNED_END,
    SIGNING_KEYS,
    SUPPORTED_VERSIONS,
    TcbVersion,
    product_from_cpuid,
)
from cctrain.attestation.sev_snp.certs import load_certificate
from cctrain.errors import EvidenceParseError

#: JSON bundles larger than this are refused before json.loads sees them.
MAX_JSON_SIZE = 1 << 20

HCL_MAGIC = b"HCLA"
HCL_HEADER_SIZE = 0x20
HCL_REPORT_TYPE_SNP = 2
IGVM_HEADER_OFFSET = HCL_HEADER_SIZE + REPORT_SIZE  # 0x4C0
IGVM_HEADER_SIZE = 20  # data_size, version, report_type, hash_type, variable_data_size
#: IGVM report_data hash types: the SNP report_data holds this hash of the runtime data.
HCL_HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512"}


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True)
class AttestationReport:
    """One SEV-SNP ATTESTATION_REPORT, every field typed.  ``raw`` is kept so
    the verifier checks the signature over the exact bytes that were signed."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: str  # "vcek", "vlek" or "none"
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes  # little-endian, as in the report
    signature_s: bytes
    #: Product line from CPUID (v3+); None for v2 reports or unknown parts.
    product: str | None

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_END]

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    def with_product(self, product: str) -> AttestationReport:
        """The same report with TCBs decoded for ``product`` (used when a v2
        report's product is learnt from its certificate chain)."""
        return _decode(self.raw, product)


@dataclass(frozen=True)
class SnpEvidence:
    """A parsed input: the SNP report plus what its container carried."""

    report: AttestationReport
    #: DER certificates embedded in the container (for example the VCEK).
    certificates: tuple[bytes, ...] = ()
    #: "report", "azure-hcl", "azure-vtpm-json" or "trustee-snp-json".
    format: str = "report"
    #: Azure HCL runtime data (JSON with the vTPM keys) whose hash is report_data.
    runtime_data: bytes | None = None
    #: Hash algorithm binding runtime_data into report_data ("sha256", ...).
    runtime_data_hash: str | None = None


def _mbz(raw: bytes, lo: int, hi: int, what: str) -> None:
    if any(raw[lo:hi]):
        raise EvidenceParseError(
            f"SNP report reserved field {what} [0x{lo:x}:0x{hi:x}] must be zero, "
            f"got {raw[lo:hi].hex()}"
        )


def parse_report(raw: bytes) -> AttestationReport:
    """Parse exactly one raw 1184-byte attestation report."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EvidenceParseError(f"SNP report must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE:
        raise EvidenceParseError(
            f"SNP report length is {len(raw)} bytes, want exactly {REPORT_SIZE}"
        )
    return _decode(raw, None)


def _u32(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off : off + 4], "little")


def _u64(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off : off + 8], "little")


def _decode(raw: bytes, product_hint: str | None) -> AttestationReport:
    version = _u32(raw, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceParseError(
            f"SNP report version {version} is not supported "
            f"(supported: {sorted(SUPPORTED_VERSIONS)})"
        )
    policy = _u64(raw, 0x08)
    if not policy >> POLICY_RESERVED_ONE_BIT & 1:
        raise EvidenceParseError(
            f"SNP guest policy 0x{policy:x}: reserved bit {POLICY_RESERVED_ONE_BIT} must be 1"
        )
    if policy >> POLICY_FIRST_RESERVED_ZERO_BIT:
        raise EvidenceParseError(
            f"SNP guest policy 0x{policy:x}: reserved bits "
            f"{POLICY_FIRST_RESERVED_ZERO_BIT}..63 must be zero"
        )
    signature_algo = _u32(raw, 0x34)
    if signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise EvidenceParseError(
            f"SNP report signature algorithm {signature_algo} is unknown "
            f"(only {SIG_ALGO_ECDSA_P384_SHA384} = ECDSA P-384/SHA-384 is defined)"
        )
    key_info = _u32(raw, 0x48)
    if key_info >> 5:
        raise EvidenceParseError(
            f"SNP report KEY_INFO 0x{key_info:x}: reserved bits 5..31 must be zero"
        )
    signing_key_code = key_info >> 2 & 7
    if signing_key_code not in SIGNING_KEYS:
        raise EvidenceParseError(f"SNP report SIGNING_KEY {signing_key_code} is reserved")
    _mbz(raw, 0x4C, 0x50, "after KEY_INFO")

    if version >= 3:
        cpuid: tuple[int | None, int | None, int | None] = (raw[0x188], raw[0x189], raw[0x18A])
        _mbz(raw, 0x18B, 0x1A0, "after CPUID")
    else:
        cpuid = (None, None, None)
        _mbz(raw, 0x188, 0x1A0, "after REPORTED_TCB")
    _mbz(raw, 0x1EB, 0x1EC, "after CURRENT version")
    _mbz(raw, 0x1EF, 0x1F0, "after COMMITTED version")
    if version >= 5:
        launch_mit: int | None = _u64(raw, 0x1F8)
        current_mit: int | None = _u64(raw, 0x200)
        _mbz(raw, 0x208, SIGNED_END, "after CURRENT_MIT_VECTOR")
    else:
        launch_mit = current_mit = None
        _mbz(raw, 0x1F8, SIGNED_END, "after LAUNCH_TCB")
    _mbz(raw, SIGNATURE_END, REPORT_SIZE, "after the ECDSA signature")

    product = product_hint
    if product is None and cpuid[0] is not None and cpuid[1] is not None:
        product = product_from_cpuid(cpuid[0], cpuid[1])
    turin = product == "Turin"

    def tcb(off: int) -> TcbVersion:
        return TcbVersion(raw=_u64(raw, off), turin=turin)

    return AttestationReport(
        raw=raw,
        version=version,
        guest_svn=_u32(raw, 0x04),
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=_u32(raw, 0x30),
        signature_algo=signature_algo,
        current_tcb=tcb(0x38),
        platform_info=_u64(raw, 0x40),
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info & 2),
        signing_key=SIGNING_KEYS[signing_key_code],
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=tcb(0x180),
        cpuid_fam_id=cpuid[0],
        cpuid_mod_id=cpuid[1],
        cpuid_step=cpuid[2],
        chip_id=raw[0x1A0 : 0x1A0 + CHIP_ID_SIZE],
        committed_tcb=tcb(0x1E0),
        current_version=FirmwareVersion(raw[0x1EA], raw[0x1E9], raw[0x1E8]),
        committed_version=FirmwareVersion(raw[0x1EE], raw[0x1ED], raw[0x1EC]),
        launch_tcb=tcb(0x1F0),
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=raw[SIGNATURE_OFFSET : SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE],
        signature_s=raw[SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE : SIGNATURE_END],
        product=product,
    )


# --- Azure HCL report -------------------------------------------------------


def parse_hcl_report(raw: bytes) -> SnpEvidence:
    """Azure CVM HCL report: 32-byte 'HCLA' header, SNP report, IGVM runtime data."""
    if len(raw) < IGVM_HEADER_OFFSET + IGVM_HEADER_SIZE:
        raise EvidenceParseError(
            f"Azure HCL report is {len(raw)} bytes, shorter than its fixed part "
            f"({IGVM_HEADER_OFFSET + IGVM_HEADER_SIZE})"
        )
    if raw[:4] != HCL_MAGIC:
        raise EvidenceParseError("Azure HCL report does not start with 'HCLA'")
    report_type = _u32(raw, 0x0C)
    if report_type != HCL_REPORT_TYPE_SNP:
        raise EvidenceParseError(
            f"Azure HCL report type {report_type} is not SEV-SNP ({HCL_REPORT_TYPE_SNP})"
        )
    report = parse_report(raw[HCL_HEADER_SIZE:IGVM_HEADER_OFFSET])
    data_size, _version, igvm_type, hash_type, var_size = struct.unpack_from(
        "<5I", raw, IGVM_HEADER_OFFSET
    )
    if igvm_type != HCL_REPORT_TYPE_SNP:
        raise EvidenceParseError(f"Azure HCL runtime data type {igvm_type} is not SEV-SNP")
    if hash_type not in HCL_HASH_TYPES:
        raise EvidenceParseError(f"Azure HCL runtime data hash type {hash_type} is unknown")
    start = IGVM_HEADER_OFFSET + IGVM_HEADER_SIZE
    if data_size != IGVM_HEADER_SIZE + var_size or start + var_size > len(raw):
        raise EvidenceParseError(
            f"Azure HCL runtime data length {var_size} (total {data_size}) does not fit "
            f"the {len(raw)}-byte report"
        )
    return SnpEvidence(
        report=report,
        format="azure-hcl",
        runtime_data=raw[start : start + var_size],
        runtime_data_hash=HCL_HASH_TYPES[hash_type],
    )


# --- JSON bundles -----------------------------------------------------------


def _json_bytes(value: Any, what: str, *, size: int | None = None) -> bytes:
    """An integer array, hex string or base64(url) string, as the bundles use."""
    if isinstance(value, list):
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            raise EvidenceParseError(f"{what}: not a byte array")
        out = bytes(value)
    elif isinstance(value, str):
        out = _decode_text(value, what)
    else:
        raise EvidenceParseError(f"{what}: expected bytes, got {type(value).__name__}")
    if size is not None and len(out) != size:
        raise EvidenceParseError(f"{what}: {len(out)} bytes, want {size}")
    return out


def _decode_text(value: str, what: str) -> bytes:
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.encode("ascii", "replace")
    try:
        if len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (ValueError, binascii.Error):
        raise EvidenceParseError(f"{what}: neither hex nor base64") from None


def _pem_or_der(blob: bytes, what: str) -> bytes:
    """Normalise one certificate to DER, checking that it parses."""
    return load_certificate(blob, what).public_bytes(Encoding.DER)


def _int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EvidenceParseError(f"{what}.{key}: expected a non-negative integer")
    return value


def _tcb_from_json(obj: Any, what: str) -> int:
    if not isinstance(obj, Mapping):
        raise EvidenceParseError(f"{what}: expected an object")
    turin = obj.get("fmc") is not None
    parts = {
        name: _int(obj, name, what)
        for name in ("bootloader", "tee", "snp", "microcode") + (("fmc",) if turin else ())
    }
    if any(v > 255 for v in parts.values()):
        raise EvidenceParseError(f"{what}: component out of range 0..255")
    return TcbVersion.compose(parts, turin=turin).raw


def _rebuild_trustee_report(r: Mapping[str, Any]) -> bytes:
    """Rebuild the 1184 signed bytes from trustee's ``sev`` serde JSON (reserved = 0).

    The result is only as good as its signature: any field we misplace makes
    the ECDSA check fail, so this cannot forge anything.
    """
    out = bytearray(REPORT_SIZE)
    w = "attestation_report"
    version = _int(r, "version", w)

    def put(off: int, value: int, size: int, name: str) -> None:
        if value >= 1 << (8 * size):
            raise EvidenceParseError(f"{w}.{name}: {value} does not fit {size} bytes")
        out[off : off + size] = value.to_bytes(size, "little")

    def put_bytes(off: int, key: str, size: int) -> None:
        out[off : off + size] = _json_bytes(r.get(key), f"{w}.{key}", size=size)

    put(0x00, version, 4, "version")
    put(0x04, _int(r, "guest_svn", w), 4, "guest_svn")
    put(0x08, _int(r, "policy", w), 8, "policy")
    put_bytes(0x10, "family_id", 16)
    put_bytes(0x20, "image_id", 16)
    put(0x30, _int(r, "vmpl", w), 4, "vmpl")
    put(0x34, _int(r, "sig_algo", w), 4, "sig_algo")
    put(0x38, _tcb_from_json(r.get("current_tcb"), f"{w}.current_tcb"), 8, "current_tcb")
    put(0x40, _int(r, "plat_info", w), 8, "plat_info")
    put(0x48, _int(r, "key_info", w), 4, "key_info")
    put_bytes(0x50, "report_data", 64)
    put_bytes(0x90, "measurement", 48)
    put_bytes(0xC0, "host_data", 32)
    put_bytes(0xE0, "id_key_digest", 48)
    put_bytes(0x110, "author_key_digest", 48)
    put_bytes(0x140, "report_id", 32)
    put_bytes(0x160, "report_id_ma", 32)
    put(0x180, _tcb_from_json(r.get("reported_tcb"), f"{w}.reported_tcb"), 8, "reported_tcb")
    if version >= 3:
        put(0x188, _int(r, "cpuid_fam_id", w), 1, "cpuid_fam_id")
        put(0x189, _int(r, "cpuid_mod_id", w), 1, "cpuid_mod_id")
        put(0x18A, _int(r, "cpuid_step", w), 1, "cpuid_step")
    put_bytes(0x1A0, "chip_id", 64)
    put(0x1E0, _tcb_from_json(r.get("committed_tcb"), f"{w}.committed_tcb"), 8, "committed_tcb")
    for off, key in ((0x1E8, "current"), (0x1EC, "committed")):
        ver = r.get(key)
        if not isinstance(ver, Mapping):
            raise EvidenceParseError(f"{w}.{key}: expected an object")
        put(off, _int(ver, "build", f"{w}.{key}"), 1, f"{key}.build")
        put(off + 1, _int(ver, "minor", f"{w}.{key}"), 1, f"{key}.minor")
        put(off + 2, _int(ver, "major", f"{w}.{key}"), 1, f"{key}.major")
    put(0x1F0, _tcb_from_json(r.get("launch_tcb"), f"{w}.launch_tcb"), 8, "launch_tcb")
    if version >= 5:
        put(0x1F8, _int(r, "launch_mit_vector", w), 8, "launch_mit_vector")
        put(0x200, _int(r, "current_mit_vector", w), 8, "current_mit_vector")
    sig = r.get("signature")
    if not isinstance(sig, Mapping):
        raise EvidenceParseError(f"{w}.signature: expected an object with r and s")
    out[SIGNATURE_OFFSET : SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE] = _json_bytes(
        sig.get("r"), f"{w}.signature.r", size=ECDSA_COMPONENT_SIZE
    )
    out[SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE : SIGNATURE_END] = _json_bytes(
        sig.get("s"), f"{w}.signature.s", size=ECDSA_COMPONENT_SIZE
    )
    return bytes(out)


def _parse_json(raw: bytes) -> SnpEvidence:
    if len(raw) > MAX_JSON_SIZE:
        raise EvidenceParseError(f"SNP JSON evidence is {len(raw)} bytes, limit {MAX_JSON_SIZE}")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EvidenceParseError(f"SNP JSON evidence is not valid JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise EvidenceParseError("SNP JSON evidence must be an object")

    if "attestation_report" in doc:  # trustee / virtee ``sev`` serde form
        report_obj = doc["attestation_report"]
        if not isinstance(report_obj, Mapping):
            raise EvidenceParseError("attestation_report: expected an object")
        report = parse_report(_rebuild_trustee_report(report_obj))
        certs: list[bytes] = []
        chain = doc.get("cert_chain") or []
        if not isinstance(chain, list):
            raise EvidenceParseError("cert_chain: expected a list")
        for i, entry in enumerate(chain):
            if not isinstance(entry, Mapping):
                raise EvidenceParseError(f"cert_chain[{i}]: expected an object")
            what = f"cert_chain[{i}].data"
            certs.append(_pem_or_der(_json_bytes(entry.get("data"), what), what))
        return SnpEvidence(report=report, certificates=tuple(certs), format="trustee-snp-json")

    hcl_value = doc.get("hcl_report", doc.get("report"))
    if hcl_value is not None and "vcek" in doc:  # trustee az-snp-vtpm v0/v1/v2
        inner = parse_hcl_report(_json_bytes(hcl_value, "hcl_report"))
        vcek = doc["vcek"]
        if not isinstance(vcek, str):
            raise EvidenceParseError("vcek: expected a PEM or base64 string")
        vcek_der = _pem_or_der(_decode_text(vcek, "vcek"), "vcek")
        return SnpEvidence(
            report=inner.report,
            certificates=(vcek_der,),
            format="azure-vtpm-json",
            runtime_data=inner.runtime_data,
            runtime_data_hash=inner.runtime_data_hash,
        )
    raise EvidenceParseError(
        "JSON evidence carries no SEV-SNP report (want 'attestation_report' or "
        "'hcl_report'/'report' with 'vcek')"
    )


def parse(raw: bytes) -> SnpEvidence:
    """Parse any supported SNP input (see module docstring)."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EvidenceParseError(f"SNP evidence must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if raw[:4] == HCL_MAGIC:
        return parse_hcl_report(raw)
    if raw.lstrip()[:1] == b"{":
        return _parse_json(raw)
    return SnpEvidence(report=parse_report(raw))


def sniff(raw: bytes) -> bool:
    """True for inputs :func:`parse` accepts; never raises."""
    try:
        if raw[:4] == HCL_MAGIC:
            return len(raw) >= IGVM_HEADER_OFFSET and _u32(raw, 0x0C) == HCL_REPORT_TYPE_SNP
        if raw.lstrip()[:1] == b"{":
            if len(raw) > MAX_JSON_SIZE:
                return False
            return (b'"attestation_report"' in raw) or (
                (b'"hcl_report"' in raw or b'"report"' in raw) and b'"vcek"' in raw
            )
        if len(raw) != REPORT_SIZE:
            return False
        return (
            _u32(raw, 0) in SUPPORTED_VERSIONS
            and _u32(raw, 0x34) == SIG_ALGO_ECDSA_P384_SHA384
            and bool(_u64(raw, 0x08) >> POLICY_RESERVED_ONE_BIT & 1)
        )
    except Exception:  # noqa: BLE001 - sniffing must never fail
        return False
