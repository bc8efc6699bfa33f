"""Read the Intel SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1).

The extension is a DER ``SEQUENCE OF SEQUENCE { OID, value }``; the TCB entry
nests 16 component SVNs, PCESVN and CPUSVN the same way.  ``cryptography``
hands it over as an unrecognised extension, so a minimal, strict DER TLV reader
(definite lengths only, single-byte tags) decodes it here.  Any malformed
encoding raises :class:`~cctrain.errors.EvidenceParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from cctrain.errors import EvidenceParseError

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSION_OID + ".1"
_TCB = SGX_EXTENSION_OID + ".2"
_PCEID = SGX_EXTENSION_OID + ".3"
_FMSPC = SGX_EXTENSION_OID + ".4"
_SGX_TYPE = SGX_EXTENSION_OID + ".5"

_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30


@dataclass(frozen=True)
class PckExtensions:
    """The platform facts Intel certified in the PCK certificate."""

    ppid: bytes
    #: SGX TCB component SVNs 1..16, in order.
    tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int


def _tlvs(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Split ``data`` into consecutive (tag, value) pairs, with explicit length checks."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise EvidenceParseError(f"PCK SGX extension: truncated {what}")
        tag = data[pos]
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise EvidenceParseError(f"PCK SGX extension: bad length in {what}")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise EvidenceParseError(f"PCK SGX extension: truncated {what}")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def _one(data: bytes, tag: int, what: str) -> bytes:
    items = _tlvs(data, what)
    if len(items) != 1 or items[0][0] != tag:
        raise EvidenceParseError(f"PCK SGX extension: {what} is not one element of tag 0x{tag:x}")
    return items[0][1]


def _oid(value: bytes) -> str:
    if not value:
        raise EvidenceParseError("PCK SGX extension: empty OID")
    parts = [value[0] // 40, value[0] % 40] if value[0] < 80 else [2, value[0] - 80]
    acc = 0
    for i, b in enumerate(value[1:], start=1):
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(acc)
            acc = 0
        elif i == len(value) - 1:
            raise EvidenceParseError("PCK SGX extension: truncated OID")
    return ".".join(str(p) for p in parts)


def _int(value: bytes, what: str) -> int:
    if not value or len(value) > 8:
        raise EvidenceParseError(f"PCK SGX extension: bad INTEGER for {what}")
    return int.from_bytes(value, "big", signed=True)


def _entries(seq_value: bytes, what: str) -> dict[str, tuple[int, bytes]]:
    """``SEQUENCE { OID, value }`` items of a sequence body, keyed by OID."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, item in _tlvs(seq_value, what):
        if tag != _TAG_SEQUENCE:
            raise EvidenceParseError(f"PCK SGX extension: {what} entry is not a SEQUENCE")
        parts = _tlvs(item, what)
        if len(parts) != 2 or parts[0][0] != _TAG_OID:
            raise EvidenceParseError(f"PCK SGX extension: malformed {what} entry")
        out[_oid(parts[0][1])] = parts[1]
    return out


def _need(entries: dict[str, tuple[int, bytes]], oid: str, tag: int, name: str) -> bytes:
    if oid not in entries:
        raise EvidenceParseError(f"PCK SGX extension lacks {name}")
    got_tag, value = entries[oid]
    if got_tag != tag:
        raise EvidenceParseError(f"PCK SGX extension: {name} has tag 0x{got_tag:x}")
    return value


def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Decode the SGX extension of a PCK leaf certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound:
        raise EvidenceParseError(
            "PCK certificate has no Intel SGX extension (1.2.840.113741.1.13.1)"
        ) from None
    except ValueError as exc:
        raise EvidenceParseError(f"PCK certificate extensions cannot be parsed: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceParseError("PCK SGX extension has an unexpected type")
    top = _entries(_one(value.value, _TAG_SEQUENCE, "extension"), "extension")
    tcb = _entries(_need(top, _TCB, _TAG_SEQUENCE, "TCB"), "TCB")
    components = tuple(
        _int(_need(tcb, f"{_TCB}.{i}", _TAG_INTEGER, f"TCB component {i}"), f"component {i}")
        for i in range(1, 17)
    )
    pce_svn = _int(_need(tcb, f"{_TCB}.17", _TAG_INTEGER, "PCESVN"), "PCESVN")
    cpu_svn = _need(tcb, f"{_TCB}.18", _TAG_OCTET_STRING, "CPUSVN")
    fmspc = _need(top, _FMSPC, _TAG_OCTET_STRING, "FMSPC")
    pce_id = _need(top, _PCEID, _TAG_OCTET_STRING, "PCE-ID")
    if len(fmspc) != 6 or len(pce_id) != 2 or len(cpu_svn) != 16:
        raise EvidenceParseError("PCK SGX extension: FMSPC, PCE-ID or CPUSVN has a wrong length")
    if any(c < 0 or c > 255 for c in components) or not 0 <= pce_svn <= 0xFFFF:
        raise EvidenceParseError("PCK SGX extension: TCB SVN out of range")
    sgx_type_raw = _need(top, _SGX_TYPE, _TAG_ENUMERATED, "SGX type")
    return PckExtensions(
        ppid=_need(top, _PPID, _TAG_OCTET_STRING, "PPID"),
        tcb_components=components,
        pce_svn=pce_svn,
        cpu_svn=cpu_svn,
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=_int(sgx_type_raw, "SGX type"),
    )
