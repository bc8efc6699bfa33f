"""AMD SEV-SNP evidence and sealing keys through ``/dev/sev-guest`` ioctls.

The structures below mirror the kernel's ``include/uapi/linux/sev-guest.h``
(Linux v6.x) field for field; ``ctypes`` applies the same natural alignment as
the C compiler, and the tests pin every size and ioctl number to the header.
Prefer configfs-tsm (``configfs_tsm.py``) for reports where the kernel offers
it; this module is still what provides SNP *sealing* keys
(``SNP_GET_DERIVED_KEY``), which configfs-tsm does not expose.

Responses follow the SEV-SNP Firmware ABI specification (AMD 56860):
MSG_REPORT_RSP (Table 25) and MSG_KEY_RSP (Table 21).  The certificate table
of an extended report follows the GHCB specification (AMD 56421, 4.1.8.1).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from cctrain.attestation.base import Evidence
from cctrain.errors import AttestationError, EvidenceParseError, NoEvidenceProviderError

from ._common import (
    IoctlFn,
    check_echo,
    check_report_data,
    derive_sealing_key,
    describe_oserror,
    iowr,
    system_ioctl,
)

DEVICE = "dev/sev-guest"

# ---------------------------------------------------------------------------
# Structures of include/uapi/linux/sev-guest.h.

SNP_REPORT_USER_DATA_SIZE = 64


class SnpReportReq(ctypes.Structure):
    """struct snp_report_req: user_data[64], vmpl, rsvd[28] (96 bytes)."""

    _fields_ = [
        ("user_data", ctypes.c_uint8 * SNP_REPORT_USER_DATA_SIZE),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class SnpReportResp(ctypes.Structure):
    """struct snp_report_resp: data[4000], the firmware's MSG_REPORT_RSP."""

    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class SnpDerivedKeyReq(ctypes.Structure):
    """struct snp_derived_key_req (32 bytes), the firmware's MSG_KEY_REQ."""

    _fields_ = [
        ("root_key_select", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint32),
        ("guest_field_select", ctypes.c_uint64),
        ("vmpl", ctypes.c_uint32),
        ("guest_svn", ctypes.c_uint32),
        ("tcb_version", ctypes.c_uint64),
    ]


class SnpDerivedKeyResp(ctypes.Structure):
    """struct snp_derived_key_resp: data[64], the firmware's MSG_KEY_RSP."""

    _fields_ = [("data", ctypes.c_uint8 * 64)]


class _SnpErrors(ctypes.Structure):
    _fields_ = [("fw_error", ctypes.c_uint32), ("vmm_error", ctypes.c_uint32)]


class _SnpExitInfo(ctypes.Union):
    _anonymous_ = ("errors",)
    _fields_ = [("exitinfo2", ctypes.c_uint64), ("errors", _SnpErrors)]


class SnpGuestRequestIoctl(ctypes.Structure):
    """struct snp_guest_request_ioctl (32 bytes): the argument of every SNP ioctl.

    ``req_data``/``resp_data`` hold the *addresses* of the request and response
    structures; the kernel copies from and to them.
    """

    _anonymous_ = ("exit",)
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exit", _SnpExitInfo),
    ]


class SnpExtReportReq(ctypes.Structure):
    """struct snp_ext_report_req: a report request plus the certificate buffer."""

    _fields_ = [
        ("data", SnpReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    ]


SNP_GUEST_REQ_IOC_TYPE = "S"
SNP_GET_REPORT = iowr(SNP_GUEST_REQ_IOC_TYPE, 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_DERIVED_KEY = iowr(SNP_GUEST_REQ_IOC_TYPE, 0x1, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = iowr(SNP_GUEST_REQ_IOC_TYPE, 0x2, ctypes.sizeof(SnpGuestRequestIoctl))

#: exitinfo2 bits[63:32] (VMM error), from the same header.
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
SNP_GUEST_VMM_ERR_BUSY = 2

#: The kernel accepts at most SEV_FW_BLOB_MAX_SIZE (include/uapi/linux/psp-sev.h)
#: of certificates, in whole pages; asking for all of it needs one round trip.
SEV_FW_BLOB_MAX_SIZE = 0x4000

#: msg_version must be non-zero; version 1 is the only one the firmware defines.
MSG_VERSION = 1

#: MSG_KEY_REQ GUEST_FIELD_SELECT bits (SNP ABI spec, Table 19).
GUEST_FIELD_POLICY = 1 << 0
GUEST_FIELD_IMAGE_ID = 1 << 1
GUEST_FIELD_FAMILY_ID = 1 << 2
GUEST_FIELD_MEASUREMENT = 1 << 3
GUEST_FIELD_GUEST_SVN = 1 << 4
GUEST_FIELD_TCB_VERSION = 1 << 5
#: Sealing keys mix in the launch measurement (different code cannot unseal) and
#: the guest policy (a debug-enabled launch of the same code cannot either).
#: TCB_VERSION is left out so a firmware update does not lose sealed state.
SEALING_FIELDS = GUEST_FIELD_POLICY | GUEST_FIELD_MEASUREMENT
#: ROOT_KEY_SELECT: 0 = VCEK (chip-unique), 1 = VMRK (the migration agent's key).
ROOT_KEY_VCEK = 0

#: SNP firmware status codes that a report or key request may return.
_FW_STATUS = {
    0x00: "SUCCESS",
    0x16: "INVALID_PARAM",
    0x27: "INVALID_KEY",
}

SNP_REPORT_SIZE = 0x4A0  # 1184 bytes: ATTESTATION_REPORT, SNP ABI spec Table 22

# ---------------------------------------------------------------------------
# Certificate table (GHCB spec 4.1.8.1): entries of GUID(16) | offset u32 |
# length u32, terminated by an all-zero entry; offsets count from the table's
# first byte. GUIDs are stored in RFC 4122 byte order.

CERT_TABLE_ENTRY = struct.Struct("<16sII")
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
#: Leaf first, root last: the order the verifier walks the chain.
CERT_ORDER = (VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID)
CERT_NAMES = {VCEK_GUID: "VCEK", VLEK_GUID: "VLEK", ASK_GUID: "ASK/ASVK", ARK_GUID: "ARK"}


@dataclass(frozen=True)
class CertTableEntry:
    """One entry of the SNP certificate table."""

    guid: uuid.UUID
    offset: int
    length: int


def parse_cert_table(blob: bytes) -> tuple[CertTableEntry, ...]:
    """Parse the GUID table at the start of ``blob``; lengths and bounds only.

    An empty or all-zero blob means the host supplied no certificates.
    """
    entries: list[CertTableEntry] = []
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY.size > len(blob):
            if not blob.strip(b"\x00"):
                return ()
            raise EvidenceParseError(
                f"SNP certificate table has no terminating all-zero entry within {len(blob)} bytes"
            )
        raw_guid, offset, length = CERT_TABLE_ENTRY.unpack_from(blob, pos)
        pos += CERT_TABLE_ENTRY.size
        if raw_guid == bytes(16) and offset == 0 and length == 0:
            break
        entries.append(CertTableEntry(uuid.UUID(bytes=raw_guid), offset, length))
    table_end = pos
    seen: set[uuid.UUID] = set()
    for e in entries:
        if e.guid in seen:
            raise EvidenceParseError(f"SNP certificate table lists GUID {e.guid} twice")
        seen.add(e.guid)
        if e.length == 0:
            raise EvidenceParseError(f"SNP certificate table entry {e.guid} has length 0")
        if e.offset < table_end or e.offset + e.length > len(blob):
            raise EvidenceParseError(
                f"SNP certificate table entry {e.guid} spans bytes "
                f"{e.offset}..{e.offset + e.length}, outside the data area "
                f"{table_end}..{len(blob)}"
            )
    return tuple(entries)


def _der_span(data: bytes) -> int:
    """Length of the DER SEQUENCE at the start of ``data`` (hosts may pad entries)."""
    if len(data) < 2 or data[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or len(data) < 2 + n:
        raise ValueError("bad DER length")
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def _certificate_der(data: bytes, name: str) -> bytes:
    """DER bytes of the certificate in ``data`` (DER, zero-padded DER, or PEM).

    Only the framing is checked here: the certificate is parsed and verified by
    the verifier, not by the enclave. (Parsing here would also trip over real
    VCEKs, whose serial number 0 ``cryptography`` warns about.)
    """
    body = data
    if body.lstrip().startswith(_PEM_BEGIN):
        text = body.rstrip(b"\x00").strip()
        if not text.endswith(_PEM_END) or text.count(_PEM_BEGIN) != 1:
            raise EvidenceParseError(f"SNP certificate table entry {name} is malformed PEM")
        b64 = b"".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
        try:
            body = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise EvidenceParseError(
                f"SNP certificate table entry {name} has invalid base64 in its PEM"
            ) from None
    try:
        span = _der_span(body)
    except ValueError as exc:
        raise EvidenceParseError(
            f"SNP certificate table entry {name} is not a DER certificate: {exc}"
        ) from None
    if span > len(body):
        raise EvidenceParseError(
            f"SNP certificate table entry {name} is truncated: DER says {span} bytes, "
            f"entry holds {len(body)}"
        )
    if body[span:].strip(b"\x00"):
        raise EvidenceParseError(
            f"SNP certificate table entry {name} has non-zero bytes after its DER"
        )
    return bytes(body[:span])


def certificates_from_table(blob: bytes) -> tuple[bytes, ...]:
    """DER certificates (VCEK or VLEK, ASK/ASVK, ARK) from an SNP certificate table.

    Entries with other GUIDs (host-specific extras) are not certificates the
    verifier uses and are left out.
    """
    by_guid = {e.guid: e for e in parse_cert_table(blob)}
    out: list[bytes] = []
    for guid in CERT_ORDER:
        e = by_guid.get(guid)
        if e is not None:
            name = f"{CERT_NAMES[guid]} ({guid})"
            out.append(_certificate_der(blob[e.offset : e.offset + e.length], name))
    return tuple(out)


# ---------------------------------------------------------------------------
# Request packing and response parsing, pure so tests can feed them bytes.


def pack_report_request(report_data: bytes, vmpl: int) -> SnpReportReq:
    """A zero-filled snp_report_req carrying ``report_data`` at privilege ``vmpl``."""
    data = check_report_data(report_data)
    if not 0 <= vmpl <= 3:
        raise AttestationError(f"VMPL must be 0..3, got {vmpl}")
    req = SnpReportReq()
    ctypes.memmove(req.user_data, data, len(data))
    req.vmpl = vmpl
    return req


def pack_derived_key_request(vmpl: int) -> SnpDerivedKeyReq:
    """MSG_KEY_REQ for a VCEK-rooted key mixing in measurement and guest policy."""
    if not 0 <= vmpl <= 3:
        raise AttestationError(f"VMPL must be 0..3, got {vmpl}")
    req = SnpDerivedKeyReq()
    req.root_key_select = ROOT_KEY_VCEK
    req.guest_field_select = SEALING_FIELDS
    req.vmpl = vmpl
    req.guest_svn = 0
    req.tcb_version = 0
    return req


def _fw_status(status: int) -> str:
    return f"0x{status:x} ({_FW_STATUS.get(status, 'unknown')})"


def parse_report_response(data: bytes) -> bytes:
    """The attestation report inside MSG_REPORT_RSP.

    Layout: status u32, report_size u32, 24 reserved bytes, then the report.
    """
    if len(data) < 0x20:
        raise EvidenceParseError(f"MSG_REPORT_RSP too short: {len(data)} bytes")
    status, size = struct.unpack_from("<II", data, 0)
    if status != 0:
        raise AttestationError(
            f"SNP firmware refused the report request: status {_fw_status(status)}"
        )
    if size != SNP_REPORT_SIZE:
        raise EvidenceParseError(
            f"MSG_REPORT_RSP report_size is {size}, expected {SNP_REPORT_SIZE}"
        )
    if 0x20 + size > len(data):
        raise EvidenceParseError(
            f"MSG_REPORT_RSP claims a {size}-byte report but holds {len(data) - 0x20}"
        )
    return bytes(data[0x20 : 0x20 + size])


def parse_derived_key_response(data: bytes) -> bytes:
    """The 32-byte key inside MSG_KEY_RSP: status u32, 28 reserved bytes, key."""
    if len(data) < 0x40:
        raise EvidenceParseError(f"MSG_KEY_RSP too short: {len(data)} bytes")
    (status,) = struct.unpack_from("<I", data, 0)
    if status != 0:
        raise AttestationError(
            f"SNP firmware refused the derived-key request: status {_fw_status(status)}"
        )
    return bytes(data[0x20:0x40])


# ---------------------------------------------------------------------------
# The device.


def _open_device(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoEvidenceProviderError(
            f"{path} not found: not an SEV-SNP guest, or the sev-guest driver is not "
            "loaded (modprobe sev-guest)"
        ) from None
    except PermissionError:
        raise AttestationError(
            f"permission denied opening {path}: run the enclave as root or give its user "
            "read-write access to the device"
        ) from None
    except OSError as exc:
        raise AttestationError(f"cannot open {path}: {describe_oserror(exc)}") from None


class SevGuestProvider:
    """SEV-SNP evidence via SNP_GET_EXT_REPORT, sealing keys via SNP_GET_DERIVED_KEY."""

    platform = "sev-snp"

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        vmpl: int = 0,
        extended: bool = True,
        ioctl: IoctlFn | None = None,
    ) -> None:
        """``extended=False`` uses SNP_GET_REPORT: no certificates, for hosts that
        do not serve them (the verifier then fetches the VCEK from AMD KDS)."""
        self.device = Path(root) / DEVICE
        if not 0 <= vmpl <= 3:
            raise AttestationError(f"VMPL must be 0..3, got {vmpl}")
        self._vmpl = vmpl
        self._extended = extended
        self._ioctl = ioctl if ioctl is not None else system_ioctl

    def available(self) -> bool:
        return self.device.exists()

    def _request(
        self, what: str, request: int, req: ctypes.Structure, resp: ctypes.Structure
    ) -> None:
        arg = SnpGuestRequestIoctl()
        arg.msg_version = MSG_VERSION
        arg.req_data = ctypes.addressof(req)
        arg.resp_data = ctypes.addressof(resp)
        fd = _open_device(self.device)
        try:
            self._ioctl(fd, request, arg)
        except OSError as exc:
            if arg.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN:
                detail = "the host needs a larger certificate buffer than the kernel allows"
            elif arg.vmm_error == SNP_GUEST_VMM_ERR_BUSY:
                detail = "the host is throttling guest requests"
            else:
                detail = f"firmware error 0x{arg.fw_error:x}, VMM error 0x{arg.vmm_error:x}"
            raise AttestationError(
                f"{what} on {self.device} failed: {describe_oserror(exc)}; {detail}"
            ) from None
        finally:
            os.close(fd)

    def get_report(self, report_data: bytes) -> tuple[bytes, bytes]:
        """(report, certificate table) from SNP_GET_EXT_REPORT (or SNP_GET_REPORT)."""
        if not self._extended:
            req = pack_report_request(report_data, self._vmpl)
            plain = SnpReportResp()
            self._request("SNP_GET_REPORT", SNP_GET_REPORT, req, plain)
            return parse_report_response(bytes(plain.data)), b""
        ext = SnpExtReportReq()
        ext.data = pack_report_request(report_data, self._vmpl)
        certs = (ctypes.c_uint8 * SEV_FW_BLOB_MAX_SIZE)()
        ext.certs_address = ctypes.addressof(certs)
        ext.certs_len = SEV_FW_BLOB_MAX_SIZE
        resp = SnpReportResp()
        self._request("SNP_GET_EXT_REPORT", SNP_GET_EXT_REPORT, ext, resp)
        report = parse_report_response(bytes(resp.data))
        return report, bytes(certs)

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        report, table = self.get_report(data)
        check_echo("sev-snp", report, data)
        return Evidence(
            platform="sev-snp", report=report, certificates=certificates_from_table(table)
        )

    def derived_key(self) -> bytes:
        """The firmware's 32-byte key bound to chip, measurement and guest policy."""
        req = pack_derived_key_request(self._vmpl)
        resp = SnpDerivedKeyResp()
        try:
            self._request("SNP_GET_DERIVED_KEY", SNP_GET_DERIVED_KEY, req, resp)
            return parse_derived_key_response(bytes(resp.data))
        finally:
            ctypes.memset(ctypes.addressof(resp), 0, ctypes.sizeof(resp))

    def sealing_key(self, label: bytes) -> bytes:
        return derive_sealing_key(self.derived_key(), platform=self.platform, label=label)


__all__ = [
    "SNP_GET_DERIVED_KEY",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "CertTableEntry",
    "SevGuestProvider",
    "SnpDerivedKeyReq",
    "SnpExtReportReq",
    "SnpGuestRequestIoctl",
    "SnpReportReq",
    "SnpReportResp",
    "certificates_from_table",
    "parse_cert_table",
    "parse_derived_key_response",
    "parse_report_response",
]
