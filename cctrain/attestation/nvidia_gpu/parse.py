"""Parse an NVIDIA GPU attestation report: SPDM 1.1 GET_MEASUREMENTS request + response.

Structure and lengths only; nothing here is trusted until :mod:`.verify` checks the
signature and the device certificate chain.

Layout (DMTF DSP0274 1.1; what Hopper and Blackwell GPUs return through NVML)::

    request  (37 bytes)  version 0x11 | code 0xE0 | attributes (bit 0: signature requested)
                         | operation (0xFF: all blocks) | requester nonce (32) | slot id (1)
    response             version 0x11 | code 0x60 | param1 | param2 (slot id in bits 0-3)
                         | number of blocks (1) | record length (3, LE) | record
                         | responder nonce (32) | opaque length (2, LE) | opaque data
                         | signature (96: ECDSA P-384 r || s, big-endian)

Each measurement block is ``index (1) | spec (1, 0x01 = DMTF) | size (2, LE) | DMTF
value type (1) | value size (2, LE) | value``.  The opaque data is NVIDIA's TLV list
(``type (2) | size (2) | value``), or, on newer firmware, the same list behind a 12-byte
``NVDAOD`` header whose entries carry a 2-byte value type as well.

Hopper and Blackwell share this wire layout; they differ in the certificate chain
(Blackwell's leaf carries a TCG DiceTcbInfo ``2.23.133.5.4.1.1`` extension where Hopper
carries a CompositeDeviceID under ``2.23.133.5.4.1``) and in the opaque fields present
(Blackwell adds e.g. type 33), which is why the architecture is read from the verified
chain, not from these bytes.

Every length is checked before it is used; any inconsistency raises
:class:`~cctrain.errors.EvidenceParseError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cctrain.errors import EvidenceParseError

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_LEN = 37
NONCE_LEN = 32
SIGNATURE_LEN = 96
RESPONSE_FIXED_LEN = 8  # version, code, param1, param2, number of blocks, record length (3)
DMTF_MEASUREMENT_SPEC = 0x01
#: Zero bytes tolerated after the signature.  confidential-containers/trustee's real
#: H100 capture ends in one 0x00 byte; the bytes are unsigned, so only zero padding is
#: accepted, and only a little of it, so that no data can ride along unnoticed.
MAX_TRAILING_PADDING = 8

NVDAOD_MAGIC = b"NVDAOD"
NVDAOD_HEADER_LEN = 12

# NVIDIA opaque-data field types (nvtrust / attestation-sdk naming).
OPAQUE_DRIVER_VERSION = 3
OPAQUE_GPU_INFO = 4
OPAQUE_VBIOS_VERSION = 6
OPAQUE_NVDEC0_STATUS = 11
OPAQUE_MSRSCNT = 12
OPAQUE_BOARD_ID = 14
OPAQUE_CHIP_SKU = 15
OPAQUE_CHIP_SKU_MOD = 16
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_PROJECT_SKU_MOD = 19
OPAQUE_FWID = 20
OPAQUE_PROTECTED_PCIE_STATUS = 21
OPAQUE_DATA_VERSION = 34

ARCHITECTURES = ("hopper", "blackwell")


@dataclass(frozen=True)
class MeasurementBlock:
    """One SPDM measurement block (DMTF measurement specification)."""

    index: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class OpaqueField:
    type: int
    value: bytes
    #: Only the NVDAOD format carries a value type per entry.
    value_type: int | None = None


@dataclass(frozen=True)
class OpaqueData:
    """NVIDIA's opaque data, signed with the rest of the response."""

    format: str  # "legacy" or "nvdaod"
    header_version: tuple[int, int] | None
    fields: tuple[OpaqueField, ...]

    def get(self, field_type: int) -> bytes | None:
        for f in self.fields:
            if f.type == field_type:
                return f.value
        return None


@dataclass(frozen=True)
class GpuReport:
    """A parsed, not yet verified, GPU attestation report."""

    raw: bytes
    #: request || response without the signature: exactly the bytes the GPU signed.
    signed_bytes: bytes
    spdm_version: int
    request_attributes: int
    measurement_operation: int
    requester_nonce: bytes
    slot_id: int
    #: The measurement record exactly as signed (all blocks, headers included).
    measurement_record: bytes
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: OpaqueData
    signature: bytes
    trailing_padding: int
    driver_version: str | None
    vbios_version: str | None
    project: str | None
    project_sku: str | None
    chip_sku: str | None
    fwid: bytes | None
    opaque_data_version: int | None
    nvdec0_status: int | None
    #: From NVIDIA's JSON evidence form only: the PEM chain and the claimed architecture.
    embedded_chain: bytes | None = None
    declared_architecture: str | None = None


class _Reader:
    """Bounds-checked little-endian reader: every read names the field it reads."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.remaining() < n:
            raise EvidenceParseError(
                f"{self.what} truncated: {field} needs {n} bytes at offset {self.pos}, "
                f"{self.remaining()} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")


def _ascii(value: bytes, field: str) -> str:
    text = value.rstrip(b"\x00")
    if b"\x00" in text or not all(0x20 <= b < 0x7F for b in text):
        raise EvidenceParseError(f"opaque field {field} is not printable ASCII: {value.hex()}")
    return text.decode("ascii")


def format_vbios_version(value: bytes) -> str:
    """NVIDIA's VBIOS version string from the 8 opaque bytes (e.g. ``96.00.74.00.20``).

    The bytes hold two little-endian words; the printed form is the low word's bytes
    high-to-low followed by the lowest byte of the high word (as nvtrust prints it).
    """
    if len(value) != 8:
        raise EvidenceParseError(f"opaque VBIOS version must be 8 bytes, got {len(value)}")
    parts = [value[3], value[2], value[1], value[0], value[4]]
    return ".".join(f"{b:02X}" for b in parts)


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record, "measurement record")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for n in range(count):
        index = r.uint(1, f"block {n} index")
        spec = r.uint(1, f"block {n} measurement specification")
        size = r.uint(2, f"block {n} measurement size")
        measurement = r.take(size, f"block {n} measurement")
        if index == 0:
            raise EvidenceParseError(f"measurement block {n} has index 0 (indices start at 1)")
        if index in seen:
            raise EvidenceParseError(f"measurement block index {index} appears twice")
        seen.add(index)
        if spec != DMTF_MEASUREMENT_SPEC:
            raise EvidenceParseError(
                f"measurement block {index}: specification 0x{spec:02x} is not DMTF (0x01)"
            )
        m = _Reader(measurement, f"measurement block {index}")
        value_type = m.uint(1, "DMTF value type")
        value_size = m.uint(2, "DMTF value size")
        value = m.take(value_size, "DMTF value")
        if m.remaining():
            raise EvidenceParseError(
                f"measurement block {index}: size {size} does not match DMTF value size "
                f"{value_size} + 3"
            )
        blocks.append(MeasurementBlock(index=index, value_type=value_type, value=value))
    if r.remaining():
        raise EvidenceParseError(
            f"measurement record has {r.remaining()} bytes after its {count} declared blocks"
        )
    return tuple(blocks)


def parse_opaque_data(data: bytes) -> OpaqueData:
    """NVIDIA opaque data: legacy TLVs, or TLVs with value types behind an NVDAOD header."""
    header: tuple[int, int] | None = None
    start = 0
    with_value_type = False
    fmt = "legacy"
    if data[: len(NVDAOD_MAGIC)] == NVDAOD_MAGIC:
        h = _Reader(data, "opaque data header")
        h.take(len(NVDAOD_MAGIC), "magic")
        profile = h.uint(2, "profile")
        major = h.uint(1, "major version")
        minor = h.uint(1, "minor version")
        h.take(NVDAOD_HEADER_LEN - h.pos, "reserved")
        if profile != 0:
            raise EvidenceParseError(f"opaque data profile {profile} is not supported (want 0)")
        header = (major, minor)
        start, with_value_type, fmt = NVDAOD_HEADER_LEN, True, "nvdaod"
    r = _Reader(data, "opaque data")
    r.pos = start
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while r.remaining():
        ftype = r.uint(2, "field type")
        vtype = r.uint(2, f"field {ftype} value type") if with_value_type else None
        size = r.uint(2, f"field {ftype} size")
        value = r.take(size, f"field {ftype} value")
        # A repeated field would let two readers disagree on, say, the driver version.
        if ftype in seen:
            raise EvidenceParseError(f"opaque data field type {ftype} appears twice")
        seen.add(ftype)
        fields.append(OpaqueField(type=ftype, value=value, value_type=vtype))
    return OpaqueData(format=fmt, header_version=header, fields=tuple(fields))


def parse_report(raw: bytes) -> GpuReport:
    """Parse the binary report (request || response); raise EvidenceParseError."""
    if not isinstance(raw, (bytes, bytearray)):
        raise EvidenceParseError("GPU evidence must be bytes")
    raw = bytes(raw)
    r = _Reader(raw, "GPU attestation report")
    request = r.take(REQUEST_LEN, "SPDM GET_MEASUREMENTS request")
    version, code, attributes, operation = request[0], request[1], request[2], request[3]
    if version != SPDM_VERSION_1_1:
        raise EvidenceParseError(
            f"request SPDM version 0x{version:02x} is not supported (only 1.1, 0x11)"
        )
    if code != GET_MEASUREMENTS:
        raise EvidenceParseError(f"request code 0x{code:02x} is not GET_MEASUREMENTS (0xe0)")
    if not attributes & 0x01:
        raise EvidenceParseError("request did not ask for a signature (attributes bit 0 clear)")
    requester_nonce = request[4 : 4 + NONCE_LEN]
    slot_id = request[4 + NONCE_LEN]
    if slot_id > 7:
        raise EvidenceParseError(f"request slot id {slot_id} is out of range (0-7)")

    rv = r.uint(1, "response SPDM version")
    if rv != SPDM_VERSION_1_1:
        raise EvidenceParseError(
            f"response SPDM version 0x{rv:02x} is not supported (only 1.1, 0x11)"
        )
    rc = r.uint(1, "response code")
    if rc != MEASUREMENTS:
        raise EvidenceParseError(f"response code 0x{rc:02x} is not MEASUREMENTS (0x60)")
    r.uint(1, "response param1")
    param2 = r.uint(1, "response param2")
    if param2 & 0x0F != slot_id:
        raise EvidenceParseError(
            f"response slot id {param2 & 0x0F} does not match request slot id {slot_id}"
        )
    count = r.uint(1, "number of blocks")
    if count == 0:
        raise EvidenceParseError("response carries no measurement blocks")
    record_len = r.uint(3, "measurement record length")
    record = r.take(record_len, "measurement record")
    blocks = _parse_blocks(record, count)
    responder_nonce = r.take(NONCE_LEN, "responder nonce")
    opaque_len = r.uint(2, "opaque data length")
    opaque_raw = r.take(opaque_len, "opaque data")
    signed_end = r.pos
    signature = r.take(SIGNATURE_LEN, "signature")
    trailing = raw[r.pos :]
    if trailing.strip(b"\x00") or len(trailing) > MAX_TRAILING_PADDING:
        raise EvidenceParseError(
            f"{len(trailing)} unexpected bytes after the signature (over-long report)"
        )
    opaque = parse_opaque_data(opaque_raw)

    def text(ftype: int, name: str) -> str | None:
        value = opaque.get(ftype)
        return None if value is None else _ascii(value, name)

    vbios_raw = opaque.get(OPAQUE_VBIOS_VERSION)
    version_raw = opaque.get(OPAQUE_DATA_VERSION)
    if version_raw is not None and not 1 <= len(version_raw) <= 8:
        raise EvidenceParseError(f"opaque data version has {len(version_raw)} bytes (1-8)")
    nvdec = opaque.get(OPAQUE_NVDEC0_STATUS)
    if nvdec is not None and len(nvdec) != 1:
        raise EvidenceParseError(f"opaque NVDEC0 status has {len(nvdec)} bytes (want 1)")
    fwid = opaque.get(OPAQUE_FWID)
    if fwid is not None and len(fwid) != 48:
        raise EvidenceParseError(f"opaque FWID has {len(fwid)} bytes (want 48, SHA-384)")
    return GpuReport(
        raw=raw,
        signed_bytes=raw[:signed_end],
        spdm_version=version,
        request_attributes=attributes,
        measurement_operation=operation,
        requester_nonce=requester_nonce,
        slot_id=slot_id,
        measurement_record=record,
        blocks=blocks,
        responder_nonce=responder_nonce,
        opaque=opaque,
        signature=signature,
        trailing_padding=len(trailing),
        driver_version=text(OPAQUE_DRIVER_VERSION, "driver version"),
        vbios_version=None if vbios_raw is None else format_vbios_version(vbios_raw),
        project=text(OPAQUE_PROJECT, "project"),
        project_sku=text(OPAQUE_PROJECT_SKU, "project SKU"),
        chip_sku=text(OPAQUE_CHIP_SKU, "chip SKU"),
        fwid=fwid,
        opaque_data_version=(
            None if version_raw is None else int.from_bytes(version_raw, "little")
        ),
        nvdec0_status=None if nvdec is None else nvdec[0],
    )


def _looks_like_json(raw: bytes) -> bool:
    head = raw.lstrip()[:1]
    return head in (b"[", b"{")


def _json_entry(entry: Any, n: int) -> GpuReport:
    if not isinstance(entry, Mapping):
        raise EvidenceParseError(f"GPU evidence JSON entry {n} is not an object")
    missing = [k for k in ("arch", "nonce", "evidence", "certificate") if k not in entry]
    if missing:
        raise EvidenceParseError(f"GPU evidence JSON entry {n} lacks {', '.join(missing)}")
    arch = str(entry["arch"]).lower()
    if arch not in ARCHITECTURES:
        raise EvidenceParseError(f"GPU evidence JSON entry {n}: unknown arch {entry['arch']!r}")
    try:
        report_raw = base64.b64decode(str(entry["evidence"]), validate=True)
        chain = base64.b64decode(str(entry["certificate"]), validate=True)
        nonce = bytes.fromhex(str(entry["nonce"]))
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError(f"GPU evidence JSON entry {n}: bad encoding: {exc}") from None
    report = parse_report(report_raw)
    if nonce != report.requester_nonce:
        raise EvidenceParseError(
            f"GPU evidence JSON entry {n}: nonce {nonce.hex()} does not match the "
            f"report's nonce {report.requester_nonce.hex()}"
        )
    return dataclasses.replace(report, embedded_chain=chain, declared_architecture=arch)


def parse_evidence_list(raw: bytes) -> list[GpuReport]:
    """NVIDIA's JSON evidence (a list of {arch, nonce, evidence, certificate}), one per GPU."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EvidenceParseError(f"GPU evidence JSON cannot be parsed: {exc}") from None
    entries = doc if isinstance(doc, list) else [doc]
    if not entries:
        raise EvidenceParseError("GPU evidence JSON holds no entries")
    return [_json_entry(e, n) for n, e in enumerate(entries)]


def parse(raw: bytes) -> GpuReport:
    """One GPU's evidence: the binary report, or NVIDIA's JSON form with exactly one entry."""
    if isinstance(raw, (bytes, bytearray)) and _looks_like_json(bytes(raw)):
        reports = parse_evidence_list(bytes(raw))
        if len(reports) != 1:
            raise EvidenceParseError(
                f"GPU evidence JSON holds {len(reports)} GPUs; verify each one separately "
                "(see parse_evidence_list) and bind them with composite.verify_composite"
            )
        return reports[0]
    return parse_report(raw)


def sniff(raw: bytes) -> bool:
    """True for a binary SPDM 1.1 GET_MEASUREMENTS request + MEASUREMENTS response, or the JSON."""
    if len(raw) > REQUEST_LEN + 2 and raw[0:2] == bytes([SPDM_VERSION_1_1, GET_MEASUREMENTS]):
        return raw[REQUEST_LEN : REQUEST_LEN + 2] == bytes([SPDM_VERSION_1_1, MEASUREMENTS])
    if _looks_like_json(raw):
        return b'"evidence"' in raw and b'"arch"' in raw
    return False
