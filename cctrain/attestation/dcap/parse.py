"""Parse Intel DCAP ECDSA quotes (SGX v3, TDX v4/v5) into typed values.

Lengths and structure only: nothing here checks a signature.  Every field is
read at an explicit offset with an explicit length, and any malformed input
raises :class:`~cctrain.errors.EvidenceParseError` naming the cause.

Layout (all integers little-endian), after Intel's "SGX ECDSA Quote Library
API" and "TDX DCAP Quoting Library API" (appendix A)::

    header      48 B   version u16, att_key_type u16, tee_type u32,
                       qe_svn u16, pce_svn u16 (v3; reserved on v4/v5),
                       qe_vendor_id 16, user_data 20
    v3 body     384 B  SGX enclave report body
    v4 body     584 B  TD report body (TDX 1.0)
    v5 body     u16 body type (2 = TDX 1.0, 3 = TDX 1.5) || u32 size || body
    sig len     u32
    sig data    ECDSA sig 64 || attestation key 64 || certification data

Certification data is ``type u16 || size u32 || data``.  Type 6 (QE report
certification data) holds the QE report (384), its signature (64), the QE
authentication data (``u16 len || data``) and a nested certification data
whose type must be 5 (PCK certificate chain, PEM).  SGX v3 quotes carry the QE
report fields directly, followed by type-5 certification data.

Bytes after the signature data are refused unless they are all zero: real
quote buffers (configfs-tsm, GCE) are zero-padded to a fixed size, but
anything else is not part of the signed structure and is rejected rather than
silently carried along.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cctrain.errors import EvidenceParseError

HEADER_SIZE = 48
SGX_REPORT_BODY_SIZE = 384
TD10_REPORT_BODY_SIZE = 584
TD15_REPORT_BODY_SIZE = 648
ECDSA_SIG_SIZE = 64
ATT_KEY_SIZE = 64

ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081

BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3

CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6

#: Quotes are a few KiB; a fixed-size buffer may pad them.  Refuse absurd sizes early.
MAX_QUOTE_SIZE = 1 << 20


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    raw: bytes


@dataclass(frozen=True)
class EnclaveReportBody:
    """An SGX REPORT body (384 bytes): the enclave of an SGX quote, and the QE report."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    raw: bytes


@dataclass(frozen=True)
class TdReportBody:
    """A TD report body: TDX 1.0 (584 bytes) or TDX 1.5 (648 bytes, two more fields)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mr_servicetd: bytes | None
    raw: bytes


@dataclass(frozen=True)
class QeCertificationData:
    """What certifies the attestation key: QE report signed by the PCK key, and the PCK chain."""

    qe_report: EnclaveReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    #: The PCK certificate chain exactly as carried (PEM, trailing NULs removed).
    pck_chain_pem: bytes


@dataclass(frozen=True)
class Quote:
    """A parsed DCAP quote; ``signed_bytes`` is what the attestation key signed."""

    header: QuoteHeader
    body_type: int
    body: EnclaveReportBody | TdReportBody
    signature: bytes
    attestation_key: bytes
    certification: QeCertificationData
    signed_bytes: bytes
    raw: bytes

    @property
    def version(self) -> int:
        return self.header.version


class _Reader:
    """Bounds-checked cursor over bytes: every read names what it reads."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EvidenceParseError(
                f"{self.what} truncated: {field} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_header(raw: bytes) -> QuoteHeader:
    r = _Reader(raw, "quote header")
    data = r.take(HEADER_SIZE, "header")
    h = _Reader(data, "quote header")
    return QuoteHeader(
        version=h.u16("version"),
        att_key_type=h.u16("attestation key type"),
        tee_type=h.u32("TEE type"),
        qe_svn=h.u16("QE SVN"),
        pce_svn=h.u16("PCE SVN"),
        qe_vendor_id=h.take(16, "QE vendor id"),
        user_data=h.take(20, "user data"),
        raw=data,
    )


def parse_enclave_report_body(data: bytes, what: str = "SGX report body") -> EnclaveReportBody:
    if len(data) != SGX_REPORT_BODY_SIZE:
        raise EvidenceParseError(f"{what} must be {SGX_REPORT_BODY_SIZE} bytes, got {len(data)}")
    r = _Reader(data, what)
    cpu_svn = r.take(16, "CPUSVN")
    misc_select = r.u32("MISCSELECT")
    r.take(12, "reserved")
    isv_ext_prod_id = r.take(16, "ISVEXTPRODID")
    attributes = r.take(16, "ATTRIBUTES")
    mr_enclave = r.take(32, "MRENCLAVE")
    r.take(32, "reserved")
    mr_signer = r.take(32, "MRSIGNER")
    r.take(32, "reserved")
    config_id = r.take(64, "CONFIGID")
    isv_prod_id = r.u16("ISVPRODID")
    isv_svn = r.u16("ISVSVN")
    config_svn = r.u16("CONFIGSVN")
    r.take(42, "reserved")
    isv_family_id = r.take(16, "ISVFAMILYID")
    report_data = r.take(64, "REPORTDATA")
    return EnclaveReportBody(
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        isv_ext_prod_id=isv_ext_prod_id,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        config_id=config_id,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=config_svn,
        isv_family_id=isv_family_id,
        report_data=report_data,
        raw=data,
    )


def parse_td_report_body(data: bytes, *, body_type: int) -> TdReportBody:
    want = TD15_REPORT_BODY_SIZE if body_type == BODY_TYPE_TD15 else TD10_REPORT_BODY_SIZE
    if len(data) != want:
        raise EvidenceParseError(
            f"TD report body (type {body_type}) must be {want} bytes, got {len(data)}"
        )
    r = _Reader(data, "TD report body")
    tee_tcb_svn = r.take(16, "TEE_TCB_SVN")
    mr_seam = r.take(48, "MRSEAM")
    mr_signer_seam = r.take(48, "MRSIGNERSEAM")
    seam_attributes = r.take(8, "SEAMATTRIBUTES")
    td_attributes = r.take(8, "TDATTRIBUTES")
    xfam = r.take(8, "XFAM")
    mr_td = r.take(48, "MRTD")
    mr_config_id = r.take(48, "MRCONFIGID")
    mr_owner = r.take(48, "MROWNER")
    mr_owner_config = r.take(48, "MROWNERCONFIG")
    rtmrs = (r.take(48, "RTMR0"), r.take(48, "RTMR1"), r.take(48, "RTMR2"), r.take(48, "RTMR3"))
    report_data = r.take(64, "REPORTDATA")
    tee_tcb_svn2 = mr_servicetd = None
    if body_type == BODY_TYPE_TD15:
        tee_tcb_svn2 = r.take(16, "TEE_TCB_SVN_2")
        mr_servicetd = r.take(48, "MRSERVICETD")
    return TdReportBody(
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=mr_seam,
        mr_signer_seam=mr_signer_seam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mr_td=mr_td,
        mr_config_id=mr_config_id,
        mr_owner=mr_owner,
        mr_owner_config=mr_owner_config,
        rtmrs=rtmrs,
        report_data=report_data,
        tee_tcb_svn2=tee_tcb_svn2,
        mr_servicetd=mr_servicetd,
        raw=data,
    )


def _parse_pck_chain_cert_data(r: _Reader, where: str) -> bytes:
    cert_type = r.u16(f"{where} certification data type")
    size = r.u32(f"{where} certification data size")
    if cert_type != CERT_DATA_PCK_CHAIN:
        raise EvidenceParseError(
            f"unsupported {where} certification data type {cert_type} "
            f"(want {CERT_DATA_PCK_CHAIN}: PCK certificate chain)"
        )
    pem = r.take(size, f"{where} PCK certificate chain")
    # Quote generators NUL-terminate the PEM text; the NULs are not certificate data.
    pem = pem.rstrip(b"\x00")
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise EvidenceParseError(f"{where} PCK certificate chain holds no PEM certificate")
    return pem


def _parse_qe_report_fields(r: _Reader) -> tuple[EnclaveReportBody, bytes, bytes]:
    qe_report = parse_enclave_report_body(r.take(SGX_REPORT_BODY_SIZE, "QE report"), "QE report")
    qe_sig = r.take(ECDSA_SIG_SIZE, "QE report signature")
    auth_len = r.u16("QE authentication data size")
    auth = r.take(auth_len, "QE authentication data")
    return qe_report, qe_sig, auth


def _parse_signature_data(data: bytes, *, version: int) -> tuple[bytes, bytes, QeCertificationData]:
    r = _Reader(data, "quote signature data")
    signature = r.take(ECDSA_SIG_SIZE, "ECDSA signature")
    att_key = r.take(ATT_KEY_SIZE, "attestation key")
    if version == 3:
        qe_report, qe_sig, auth = _parse_qe_report_fields(r)
        pem = _parse_pck_chain_cert_data(r, "QE")
    else:
        cert_type = r.u16("certification data type")
        size = r.u32("certification data size")
        if cert_type != CERT_DATA_QE_REPORT:
            raise EvidenceParseError(
                f"unsupported certification data type {cert_type} "
                f"(want {CERT_DATA_QE_REPORT}: QE report certification data)"
            )
        inner = _Reader(
            r.take(size, "QE report certification data"), "QE report certification data"
        )
        qe_report, qe_sig, auth = _parse_qe_report_fields(inner)
        pem = _parse_pck_chain_cert_data(inner, "nested")
        if inner.remaining():
            raise EvidenceParseError(
                f"QE report certification data has {inner.remaining()} unexpected trailing bytes"
            )
    if r.remaining():
        raise EvidenceParseError(
            f"quote signature data has {r.remaining()} unexpected trailing bytes"
        )
    return signature, att_key, QeCertificationData(qe_report, qe_sig, auth, pem)


def parse_quote(raw: bytes, *, tee: str) -> Quote:
    """Parse a DCAP quote of the TEE ``tee`` ("tdx" or "sgx")."""
    if not isinstance(raw, (bytes, bytearray)):
        raise EvidenceParseError(f"quote must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_SIZE:
        raise EvidenceParseError(f"quote too large: {len(raw)} bytes (max {MAX_QUOTE_SIZE})")
    header = parse_header(raw)
    if tee == "tdx":
        if header.version not in (4, 5):
            raise EvidenceParseError(
                f"unsupported TDX quote version {header.version} (want 4 or 5)"
            )
        if header.tee_type != TEE_TYPE_TDX:
            raise EvidenceParseError(
                f"wrong TEE type 0x{header.tee_type:x} for a TDX quote (want 0x81)"
            )
    elif tee == "sgx":
        if header.version != 3:
            raise EvidenceParseError(f"unsupported SGX quote version {header.version} (want 3)")
        if header.tee_type != TEE_TYPE_SGX:
            raise EvidenceParseError(
                f"wrong TEE type 0x{header.tee_type:x} for an SGX quote (want 0x0)"
            )
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown tee {tee!r}")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise EvidenceParseError(
            f"unsupported attestation key type {header.att_key_type} (want 2: ECDSA P-256)"
        )

    r = _Reader(raw, "quote")
    r.take(HEADER_SIZE, "header")
    body: EnclaveReportBody | TdReportBody
    if header.version == 3:
        body_type = BODY_TYPE_SGX
        body = parse_enclave_report_body(r.take(SGX_REPORT_BODY_SIZE, "SGX report body"))
        signed = raw[: r.pos]
    elif header.version == 4:
        body_type = BODY_TYPE_TD10
        body = parse_td_report_body(r.take(TD10_REPORT_BODY_SIZE, "TD report body"), body_type=2)
        signed = raw[: r.pos]
    else:
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        if body_type not in (BODY_TYPE_TD10, BODY_TYPE_TD15):
            raise EvidenceParseError(
                f"unsupported quote v5 body type {body_type} (want 2: TDX 1.0 or 3: TDX 1.5)"
            )
        body = parse_td_report_body(r.take(body_size, "TD report body"), body_type=body_type)
        signed = raw[: r.pos]
    sig_len = r.u32("signature data length")
    sig_data = r.take(sig_len, "signature data")
    tail = raw[r.pos :]
    if tail.strip(b"\x00"):
        raise EvidenceParseError(
            f"quote has {len(tail)} trailing bytes after the signature data that are not "
            "zero padding"
        )
    signature, att_key, cert = _parse_signature_data(sig_data, version=header.version)
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signature=signature,
        attestation_key=att_key,
        certification=cert,
        signed_bytes=signed,
        raw=raw,
    )


def sniff_quote(raw: bytes) -> str | None:
    """ "tdx" or "sgx" when ``raw`` starts like a DCAP quote of that TEE, else None."""
    if len(raw) < 8:
        return None
    version, att_key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        return None
    if version in (4, 5) and tee_type == TEE_TYPE_TDX:
        return "tdx"
    if version == 3 and tee_type == TEE_TYPE_SGX:
        return "sgx"
    return None
