"""AMD certificates: loading, the pinned ARK/ASK roots, VCEK/VLEK extensions, KDS URLs.

The AMD Root Keys (ARK) of each product line are pinned twice: the PEM files
shipped under ``cctrain/attestation/roots/amd_*.pem`` and, in this module, the
SHA-256 of each ARK's SubjectPublicKeyInfo.  A swapped or edited root file is
refused instead of silently trusted.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from cctrain.attestation.sev_snp.abi import CHIP_ID_SIZE, TURIN_HWID_SIZE, TcbVersion
from cctrain.errors import EvidenceParseError, EvidenceVerificationError

#: SHA-256 of the DER SubjectPublicKeyInfo of each AMD Root Key (ARK).
PINNED_ARK_SPKI_SHA256 = {
    "Milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    "Genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    "Turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
}

#: The root files the package ships: ``amd_<product>_<ask|asvk>_ark.pem``.
ROOT_FILES = tuple(
    (product, kind, f"amd_{product.lower()}_{kind}_ark.pem")
    for product in PINNED_ARK_SPKI_SHA256
    for kind in ("ask", "asvk")
)

KDS_BASE = "https://kdsintf.amd.com"
_AMD_OID = "1.3.6.1.4.1.3704.1."
_OID_PRODUCT_NAME = _AMD_OID + "2"
_OID_HWID = _AMD_OID + "4"
_OID_CSP_ID = _AMD_OID + "5"
#: KDS TCB extension OIDs (1.3.6.1.4.1.3704.1.3.x) by component name.
_TCB_OIDS = {
    "bootloader": _AMD_OID + "3.1",
    "tee": _AMD_OID + "3.2",
    "snp": _AMD_OID + "3.3",
    "spl4": _AMD_OID + "3.4",
    "spl5": _AMD_OID + "3.5",
    "spl6": _AMD_OID + "3.6",
    "spl7": _AMD_OID + "3.7",
    "microcode": _AMD_OID + "3.8",
    "fmc": _AMD_OID + "3.9",
}


def load_certificate(blob: bytes, what: str = "certificate") -> x509.Certificate:
    """One DER or PEM certificate.

    AMD issues VCEKs with serial number 0, which ``cryptography`` loads with a
    deprecation warning; that warning is expected here and silenced so that it
    cannot turn into an error under ``-W error``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if blob.lstrip().startswith(b"-----BEGIN"):
                certs = x509.load_pem_x509_certificates(blob)
                if len(certs) != 1:
                    raise EvidenceParseError(f"{what}: want one PEM certificate, got {len(certs)}")
                return certs[0]
            return x509.load_der_x509_certificate(blob)
    except ValueError as exc:
        raise EvidenceParseError(f"{what} cannot be parsed: {exc}") from None


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
    except ValueError:  # a malformed extension: not a CA we would trust
        return False


def is_rsa_pss_sha384(cert: x509.Certificate) -> bool:
    """AMD signs every certificate of the chain with RSASSA-PSS / SHA-384."""
    try:
        return (
            cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
            and cert.signature_hash_algorithm is not None
            and cert.signature_hash_algorithm.name == "sha384"
        )
    except Exception:  # noqa: BLE001 - unsupported algorithm parameters
        return False


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None when ``issuer`` signed ``cert`` (RSA-PSS/SHA-384), else why not."""
    if not is_rsa_pss_sha384(cert):
        return f"{common_name(cert.subject)} is not signed with RSASSA-PSS/SHA-384"
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return (
            f"{common_name(cert.subject)} signature does not verify with "
            f"{common_name(issuer.subject)}"
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"{common_name(cert.subject)} is not issued by {common_name(issuer.subject)}: {exc}"
    return None


# --- pinned roots -----------------------------------------------------------


@dataclass(frozen=True)
class AmdChain:
    """A pinned intermediate (ASK for VCEKs, ASVK for VLEKs) and its ARK."""

    product: str
    kind: str  # "ask" or "asvk"
    intermediate: x509.Certificate
    ark: x509.Certificate


@dataclass(frozen=True)
class AmdRoots:
    chains: tuple[AmdChain, ...]

    def arks(self) -> dict[str, x509.Certificate]:
        return {c.product: c.ark for c in self.chains}


def load_amd_roots(directory: Path | None = None) -> AmdRoots:
    """Load and check the shipped AMD roots; refuse any file whose ARK is not pinned."""
    problems: list[str] = []
    chains: list[AmdChain] = []
    base = directory if directory is not None else _default_roots_dir()
    for product, kind, filename in ROOT_FILES:
        path = base / filename
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"pinned AMD root file {filename} cannot be read: {exc.strerror}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            problems.append(f"pinned AMD root file {filename} cannot be parsed: {exc}")
            continue
        if len(certs) != 2:
            problems.append(f"pinned AMD root file {filename}: want 2 certificates (AS(V)K, ARK)")
            continue
        intermediate, ark = certs
        try:
            got = spki_sha256(ark)
        except (ValueError, UnsupportedAlgorithm):
            problems.append(f"pinned AMD root file {filename}: ARK public key cannot be read")
            continue
        if got != PINNED_ARK_SPKI_SHA256[product]:
            problems.append(
                f"pinned AMD root file {filename}: ARK key fingerprint {got} is not the "
                f"pinned ARK-{product} {PINNED_ARK_SPKI_SHA256[product]}"
            )
            continue
        for why in (signed_by(ark, ark), signed_by(intermediate, ark)):
            if why is not None:
                problems.append(f"pinned AMD root file {filename}: {why}")
        chains.append(AmdChain(product, kind, intermediate, ark))
    if problems:
        raise EvidenceVerificationError(problems)
    return AmdRoots(tuple(chains))


def _default_roots_dir() -> Path:
    return Path(str(importlib.resources.files("cctrain.attestation").joinpath("roots")))


_ROOTS: AmdRoots | None = None


def pinned_roots() -> AmdRoots:
    """The package's AMD roots, loaded and checked once per process."""
    global _ROOTS
    if _ROOTS is None:
        _ROOTS = load_amd_roots()
    return _ROOTS


# --- VCEK / VLEK extensions -------------------------------------------------


@dataclass(frozen=True)
class EndorsementKeyExtensions:
    """The AMD KDS extensions of a VCEK or VLEK certificate."""

    product_name: str  # e.g. "Milan-B0", "Genoa", "Turin"
    tcb: dict[str, int]  # component name -> SPL, as the certificate states it
    hwid: bytes | None  # VCEK only
    csp_id: str | None  # VLEK only

    @property
    def product_line(self) -> str:
        return self.product_name.split("-", 1)[0]

    def tcb_version(self, *, turin: bool) -> TcbVersion:
        return TcbVersion.compose(self.tcb, turin=turin)


def _der_tlv(data: bytes, what: str) -> tuple[int, bytes]:
    """One DER TLV with nothing after it."""
    if len(data) < 2:
        raise EvidenceParseError(f"{what}: truncated DER")
    tag, first = data[0], data[1]
    if first < 0x80:
        length, start = first, 2
    else:
        n = first & 0x7F
        if n == 0 or n > 2 or len(data) < 2 + n:
            raise EvidenceParseError(f"{what}: bad DER length")
        length, start = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
    if start + length != len(data):
        raise EvidenceParseError(f"{what}: DER length {length} does not match the value")
    return tag, data[start:]


def _ext_value(cert: x509.Certificate, oid: str) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == oid:
            value = ext.value
            if isinstance(value, x509.UnrecognizedExtension):
                return value.value
            raise EvidenceParseError(f"AMD extension {oid} has an unexpected type")
    return None


def _ext_int(cert: x509.Certificate, oid: str, what: str) -> int | None:
    raw = _ext_value(cert, oid)
    if raw is None:
        return None
    tag, body = _der_tlv(raw, what)
    if tag != 0x02 or not body or body[0] & 0x80:
        raise EvidenceParseError(f"{what}: not a non-negative DER INTEGER")
    value = int.from_bytes(body, "big")
    if value > 255:
        raise EvidenceParseError(f"{what}: {value} is not a byte-sized SPL")
    return value


def _ext_ia5(cert: x509.Certificate, oid: str, what: str) -> str | None:
    raw = _ext_value(cert, oid)
    if raw is None:
        return None
    tag, body = _der_tlv(raw, what)
    if tag != 0x16:
        raise EvidenceParseError(f"{what}: not an IA5String")
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise EvidenceParseError(f"{what}: not ASCII") from None


def endorsement_key_extensions(cert: x509.Certificate) -> EndorsementKeyExtensions:
    """Read the KDS extensions; raise EvidenceParseError when one is malformed."""
    try:
        product_name = _ext_ia5(cert, _OID_PRODUCT_NAME, "productName extension")
        if product_name is None:
            raise EvidenceParseError("certificate has no AMD productName extension")
        tcb: dict[str, int] = {}
        for name, oid in _TCB_OIDS.items():
            value = _ext_int(cert, oid, f"{name} SPL extension")
            if value is not None:
                tcb[name] = value
        hwid_raw = _ext_value(cert, _OID_HWID)
        hwid: bytes | None = None
        if hwid_raw is not None:
            # KDS has shipped hwID both as raw bytes and as a DER OCTET STRING.
            if len(hwid_raw) in (CHIP_ID_SIZE, TURIN_HWID_SIZE):
                hwid = hwid_raw
            else:
                tag, body = _der_tlv(hwid_raw, "hwID extension")
                if tag != 0x04 or len(body) not in (CHIP_ID_SIZE, TURIN_HWID_SIZE):
                    raise EvidenceParseError("hwID extension is not a 64- or 8-byte string")
                hwid = body
        csp_id = _ext_ia5(cert, _OID_CSP_ID, "cspID extension")
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise EvidenceParseError(f"certificate extensions cannot be parsed: {exc}") from None
    return EndorsementKeyExtensions(product_name, tcb, hwid, csp_id)


def vcek_url(product: str, chip_id: bytes, tcb: TcbVersion) -> str:
    """The AMD KDS URL of the VCEK for this chip and reported TCB."""
    parts = tcb.named()
    hwid = chip_id[:TURIN_HWID_SIZE] if product == "Turin" else chip_id
    args = [f"blSPL={parts['bootloader']}", f"teeSPL={parts['tee']}"]
    args += [f"snpSPL={parts['snp']}", f"ucodeSPL={parts['microcode']}"]
    if product == "Turin":
        args.insert(0, f"fmcSPL={parts['fmc']}")
    return f"{KDS_BASE}/vcek/v1/{product}/{hwid.hex()}?{'&'.join(args)}"


def unique(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        der = cert.public_bytes(Encoding.DER)
        if der not in seen:
            seen.add(der)
            out.append(cert)
    return out
