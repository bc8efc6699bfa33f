"""Verify a parsed GPU report: device certificate chain to NVIDIA's pinned CA, then the signature.

What is checked, every failure collected into one EvidenceVerificationError:

* the chain (leaf first, as NVML returns it) links certificate by certificate, each
  issuer a CA allowed to sign certificates, and ends at NVIDIA's Device Identity CA,
  pinned here by the SHA-256 of its SubjectPublicKeyInfo, not by name;
* every certificate, the pinned root included, is valid at ``now`` (an argument);
* the report signature (ECDSA P-384 / SHA-384, raw ``r || s``) verifies with the leaf
  key over the SPDM transcript ``request || response-without-signature``;
* the firmware ID (FWID) the GPU put in its signed opaque data equals the FWID in the
  leaf certificate (NVIDIA's own verifier makes the same check): it ties the report to
  the firmware the leaf key was issued to;
* a JSON envelope's claimed architecture agrees with the chain.

Claims produced (documented here because other modules rely on them):

* ``measurement`` = SHA-384 of the measurement record exactly as signed: every block in
  response order, headers included.  One value that pins all 64 GPU measurements.
* ``report_data`` = the 32-byte SPDM *requester* nonce followed by 32 zero bytes.  The
  GPU cannot carry cctrain's 64-byte binding itself; :mod:`.composite` derives the
  32-byte nonce from the CPU evidence's report_data, which is what binds the two.
* ``chip_id`` = the device serial from the leaf's DMTF device-info name
  (``NVIDIA:GH100:<serial>``), the same for every firmware the chip runs; else None.
* ``debug`` = False unless a Blackwell leaf's TCG DiceTcbInfo operational flags set the
  ``debug`` bit (bit 3).  Hopper evidence carries no debug indicator; non-production
  firmware shows up as measurements that differ from NVIDIA's RIM (see validate).
* ``signer`` = ``"device"``; ``tcb_status`` None (no offline TCB status exists for GPUs).

Nothing is fetched: OCSP revocation of the device certificates and RIM retrieval need
NVIDIA's online services and are out of scope for this offline verifier.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.resources
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID

from cctrain.attestation.base import VerifiedClaims
from cctrain.attestation.nvidia_gpu.parse import SIGNATURE_LEN, GpuReport
from cctrain.errors import EvidenceParseError, EvidenceVerificationError

PLATFORM = "nvidia-gpu"
ROOT_FILE = "nvidia_device_identity_ca.pem"
#: SHA-256 of the DER SubjectPublicKeyInfo of "NVIDIA Device Identity CA" (P-384,
#: 2021-11-05..9999-12-31), the root of every Hopper and Blackwell device chain.
NVIDIA_DEVICE_ROOT_SPKI_SHA256 = "a90c4eb5acfd3e3d03a25db6a26b84f720ad0503196c627c21ddd48dd85b06a4"

OID_DMTF_DEVICE_INFO = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")
OID_TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
OID_NVIDIA_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1.1")
_SHA384_OID_DER = bytes.fromhex("608648016503040202")
_KNOWN_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}
_DICE_DEBUG_BIT = 3


def spki_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@lru_cache(maxsize=1)
def pinned_root() -> x509.Certificate:
    """NVIDIA's Device Identity CA shipped with the package, checked against the pin."""
    pem = (importlib.resources.files("cctrain.attestation") / "roots" / ROOT_FILE).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if spki_sha256(cert) != NVIDIA_DEVICE_ROOT_SPKI_SHA256:
        raise EvidenceVerificationError(
            [f"packaged {ROOT_FILE} does not match the pinned NVIDIA root key fingerprint"]
        )
    return cert


# --- a minimal DER walker for the two device-certificate extensions we read -----------


def _der_items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Split DER into (tag, content) pairs with explicit lengths; raise on any overrun."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise EvidenceParseError(f"{what}: truncated DER header")
        tag, first = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise EvidenceParseError(f"{what}: multi-byte DER tags are not expected")
        pos += 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or len(data) - pos < n:
                raise EvidenceParseError(f"{what}: bad DER length")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if len(data) - pos < length:
            raise EvidenceParseError(f"{what}: DER value overruns its container")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def _single(data: bytes, tag: int, what: str) -> bytes:
    items = _der_items(data, what)
    if len(items) != 1 or items[0][0] != tag:
        raise EvidenceParseError(f"{what}: expected one DER element with tag 0x{tag:02x}")
    return items[0][1]


def _fwid_digest(fwid_seq: bytes, what: str) -> bytes:
    """FWID ::= SEQUENCE { hashAlg OID, digest OCTET STRING } -> the SHA-384 digest."""
    items = _der_items(fwid_seq, what)
    if len(items) != 2 or items[0][0] != 0x06 or items[1][0] != 0x04:
        raise EvidenceParseError(f"{what}: FWID is not (OID, OCTET STRING)")
    if items[0][1] != _SHA384_OID_DER or len(items[1][1]) != 48:
        raise EvidenceParseError(f"{what}: FWID is not a SHA-384 digest")
    return items[1][1]


def _dice_tcb_info(value: bytes) -> tuple[bytes | None, bool]:
    """TCG DiceTcbInfo: (first FWID digest, debug flag set)."""
    fields = dict(_der_items(_single(value, 0x30, "DiceTcbInfo"), "DiceTcbInfo"))
    fwid = None
    if 0xA6 in fields:
        fwids = _der_items(fields[0xA6], "DiceTcbInfo fwids")
        if fwids:
            if fwids[0][0] != 0x30:
                raise EvidenceParseError("DiceTcbInfo fwids: FWID is not a SEQUENCE")
            fwid = _fwid_digest(fwids[0][1], "DiceTcbInfo fwid")

    def bit(bits: bytes | None, n: int) -> bool | None:
        if bits is None:
            return None
        if not bits:
            raise EvidenceParseError("DiceTcbInfo: empty BIT STRING")
        body = bits[1:]
        return len(body) > n // 8 and bool(body[n // 8] & (0x80 >> (n % 8)))

    debug = bit(fields.get(0x87), _DICE_DEBUG_BIT)
    mask = bit(fields.get(0x8A), _DICE_DEBUG_BIT)
    return fwid, bool(debug) and mask is not False


def _composite_device_id_fwid(value: bytes) -> bytes:
    """NVIDIA Hopper CompositeDeviceID ::= SEQUENCE { version INTEGER, SPKI, FWID }."""
    items = _der_items(_single(value, 0x30, "CompositeDeviceID"), "CompositeDeviceID")
    if len(items) != 3 or items[0][0] != 0x02 or items[2][0] != 0x30:
        raise EvidenceParseError("CompositeDeviceID: expected (INTEGER, SPKI, FWID)")
    return _fwid_digest(items[2][1], "CompositeDeviceID fwid")


def _leaf_identity(leaf: x509.Certificate) -> dict[str, Any]:
    """Architecture, device serial, FWID and DICE debug flag from the leaf certificate."""
    info: dict[str, Any] = {"product": None, "serial": None, "fwid": None, "debug": False}
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id != OID_DMTF_DEVICE_INFO:
                continue
            for tag in (0x0C, 0x16, 0x13):  # UTF8String, IA5String, PrintableString
                try:
                    text = _single(other.value, tag, "DMTF device info").decode("utf-8")
                    break
                except (EvidenceParseError, UnicodeDecodeError):
                    continue
            else:
                raise EvidenceParseError("DMTF device info name is not a string")
            parts = text.split(":")
            if len(parts) != 3 or not parts[2]:
                raise EvidenceParseError(f"DMTF device info {text!r} is not maker:product:serial")
            info["product"], info["serial"] = parts[1], parts[2]
    cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    info["leaf_cn"] = str(cn[0].value) if cn else ""
    product = info["product"] or info["leaf_cn"].split(" ")[0]
    info["architecture"] = (
        "hopper" if product.startswith("GH") else "blackwell" if product.startswith("GB") else None
    )
    for ext in leaf.extensions:
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        if ext.oid == OID_NVIDIA_DICE_TCB_INFO:
            info["fwid"], info["debug"] = _dice_tcb_info(ext.value.value)
            info["fwid_extension"] = ext.oid.dotted_string
        elif ext.oid == OID_TCG_DICE_TCB_INFO:
            first = _der_items(_single(ext.value.value, 0x30, "TcbInfo"), "TcbInfo")
            if first and first[0][0] == 0x02:
                info["fwid"] = _composite_device_id_fwid(ext.value.value)
            else:
                info["fwid"], info["debug"] = _dice_tcb_info(ext.value.value)
            info["fwid_extension"] = ext.oid.dotted_string
    return info


# --- the checks ---------------------------------------------------------------------


def _name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


def _check_validity(cert: x509.Certificate, now: _dt.datetime, errors: list[str]) -> None:
    if now < cert.not_valid_before_utc:
        errors.append(
            f"certificate {_name(cert)!r} is not yet valid at {now.isoformat()} "
            f"(valid from {cert.not_valid_before_utc.isoformat()})"
        )
    if now > cert.not_valid_after_utc:
        errors.append(
            f"certificate {_name(cert)!r} expired at {cert.not_valid_after_utc.isoformat()} "
            f"(now {now.isoformat()})"
        )


def _check_issued_by(child: x509.Certificate, issuer: x509.Certificate, errors: list[str]) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature:
        errors.append(f"certificate {_name(child)!r}: signature by {_name(issuer)!r} is invalid")
        return False
    except (ValueError, TypeError) as exc:
        errors.append(f"certificate {_name(child)!r} is not issued by {_name(issuer)!r}: {exc}")
        return False
    return True


def _check_ca(cert: x509.Certificate, below: int, errors: list[str]) -> None:
    """``below`` = CA certificates between this one and the leaf (for pathLenConstraint)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        errors.append(f"certificate {_name(cert)!r} signs certificates but is not a CA")
        return
    if not bc.ca:
        errors.append(f"certificate {_name(cert)!r} signs certificates but is not a CA")
    elif bc.path_length is not None and below > bc.path_length:
        errors.append(f"certificate {_name(cert)!r}: path length {bc.path_length} exceeded")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        errors.append(f"certificate {_name(cert)!r} may not sign certificates (key usage)")


def _check_critical(cert: x509.Certificate, errors: list[str]) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            errors.append(
                f"certificate {_name(cert)!r} has an unknown critical extension "
                f"{ext.oid.dotted_string}"
            )


def verify_chain(
    chain: Sequence[x509.Certificate], *, now: _dt.datetime, errors: list[str]
) -> None:
    """Leaf-first chain to the pinned NVIDIA Device Identity CA; append every failure."""
    root = pinned_root()
    certs = list(chain)
    for cert in certs:
        _check_critical(cert, errors)
    for i in range(len(certs) - 1):
        _check_issued_by(certs[i], certs[i + 1], errors)
        _check_ca(certs[i + 1], i, errors)
    last = certs[-1]
    if spki_sha256(last) == NVIDIA_DEVICE_ROOT_SPKI_SHA256:
        anchors = certs
    else:
        # The chain may stop below the root; it must then be issued by the pinned root.
        if not _check_issued_by(last, root, []):
            errors.append(
                f"chain does not end at NVIDIA's pinned Device Identity CA (top certificate "
                f"{_name(last)!r}, key fingerprint {spki_sha256(last)})"
            )
        anchors = [*certs, root]
    for cert in anchors:
        _check_validity(cert, now, errors)
    try:
        ku = certs[0].extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            errors.append(f"leaf certificate {_name(certs[0])!r} may not sign (key usage)")
    except x509.ExtensionNotFound:
        pass


def verify_report_signature(report: GpuReport, leaf: x509.Certificate) -> str | None:
    """ECDSA P-384/SHA-384 over request || response-without-signature; None if it verifies."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return f"leaf certificate key is not ECDSA P-384 ({type(key).__name__})"
    half = SIGNATURE_LEN // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "report signature does not verify with the device (leaf) certificate key"
    return None


def _load_embedded(report: GpuReport) -> list[x509.Certificate]:
    if not report.embedded_chain:
        return []
    try:
        return x509.load_pem_x509_certificates(report.embedded_chain)
    except ValueError as exc:
        raise EvidenceParseError(
            f"embedded GPU certificate chain cannot be parsed: {exc}"
        ) from None


def verify(
    report: GpuReport,
    *,
    certificates: Sequence[x509.Certificate],
    now: _dt.datetime,
) -> VerifiedClaims:
    """Verify ``report`` with its device chain at ``now``; return claims or raise."""
    if not isinstance(report, GpuReport):
        raise EvidenceParseError("not a parsed NVIDIA GPU report (use nvidia_gpu.parse)")
    errors: list[str] = []
    if now.tzinfo is None:
        raise EvidenceVerificationError(["now must be timezone-aware (UTC)"])
    chain = list(certificates) or _load_embedded(report)
    if not chain:
        raise EvidenceVerificationError(
            ["no device certificate chain: pass the GPU's chain (leaf first) as certificates"]
        )
    verify_chain(chain, now=now, errors=errors)
    leaf = chain[0]
    sig_error = verify_report_signature(report, leaf)
    if sig_error:
        errors.append(sig_error)
    try:
        ident = _leaf_identity(leaf)
    except EvidenceParseError as exc:
        errors.append(f"leaf certificate identity: {exc}")
        ident = {"architecture": None, "serial": None, "fwid": None, "debug": False}
    arch = ident["architecture"]
    if arch is None:
        errors.append(f"unsupported GPU architecture (leaf {_name(leaf)!r})")
    if report.declared_architecture and arch and report.declared_architecture != arch:
        errors.append(
            f"evidence says architecture {report.declared_architecture!r}, chain says {arch!r}"
        )
    if report.fwid is not None:
        if ident["fwid"] is None:
            errors.append("report carries an FWID but the leaf certificate has none")
        elif ident["fwid"] != report.fwid:
            errors.append(
                f"FWID in the report ({report.fwid.hex()}) does not match the leaf "
                f"certificate's FWID ({ident['fwid'].hex()})"
            )
    if errors:
        raise EvidenceVerificationError(errors)

    serial = ident["serial"]
    chip_id: bytes | None = None
    if serial:
        try:
            chip_id = bytes.fromhex(serial)
        except ValueError:
            chip_id = serial.encode("utf-8")
    extra: dict[str, Any] = {
        "architecture": arch,
        "measurements": {b.index: b.value.hex() for b in report.blocks},
        "driver_version": report.driver_version,
        "vbios_version": report.vbios_version,
        "nonce": report.requester_nonce.hex(),
        "responder_nonce": report.responder_nonce.hex(),
        "project": report.project,
        "project_sku": report.project_sku,
        "chip_sku": report.chip_sku,
        "fwid": report.fwid.hex() if report.fwid is not None else None,
        "opaque_data_version": report.opaque_data_version,
        "opaque_data_format": report.opaque.format,
        "nvdec0_status": report.nvdec0_status,
        "spdm_version": "1.1",
        "hwmodel": _name(chain[1]) if len(chain) > 1 else None,
        "leaf_key_sha256": spki_sha256(leaf),
    }
    return VerifiedClaims(
        platform=PLATFORM,
        measurement=hashlib.sha384(report.measurement_record).digest(),
        report_data=report.requester_nonce + bytes(32),
        debug=bool(ident["debug"]),
        signer="device",
        chip_id=chip_id,
        tcb_status=None,
        extra=extra,
    )
