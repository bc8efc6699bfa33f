"""Parse an AWS Nitro Enclaves attestation document: structure, types and lengths only.

What the Nitro Secure Module (NSM) returns is an *untagged* COSE_Sign1 (RFC 9052), ES384,
whose payload is a CBOR map with exactly these fields (AWS, "Nitro Enclaves attestation
document", and the NSM API ``AttestationDoc``)::

    module_id:   text, non-empty
    digest:      "SHA384"
    timestamp:   uint (milliseconds since the Unix epoch), 64-bit
    pcrs:        {uint 0..31 => bstr of 48 bytes (SHA-384)}, PCR0..2 present
    certificate: bstr, DER X.509 (1..1024 bytes)
    cabundle:    [+ bstr DER (1..1024 bytes)], root first: [root, intermediates...]
    public_key:  ? bstr (1..1024) / null
    user_data:   ? bstr (0..512) / null
    nonce:       ? bstr (0..512) / null

Anything else (another key, another type, a tag, an indefinite-length or duplicate-key map,
a byte after the item) is refused with :class:`~cctrain.errors.EvidenceParseError` naming
the field. The certificates are decoded here (a malformed DER certificate is unparseable
evidence); nothing is verified.

Besides raw CBOR (and hex, which the CLI reader decodes before), :func:`parse` accepts two
forms a document travels in:

* base64 text of the document (how SDKs and the upstream test data pass it around);
* an X.509 certificate carrying the document hex-encoded in the first label of its longest
  SAN DNS name (Evervault Cages TLS certificates). The carrying certificate is kept as
  :attr:`NitroDocument.carrier`: it is NOT verified (it is the enclave's own TLS
  certificate); verify only reports whether ``user_data`` is its SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from cctrain.attestation.cose import CoseSign1, loads_strict, parse_sign1
from cctrain.errors import EvidenceParseError

WHAT = "AWS Nitro attestation document"
ES384 = -35
SIGNATURE_LEN = 96
DIGEST = "SHA384"
PCR_LEN = 48
#: The NSM holds 32 PCRs; a document lists some of them (16 on current hosts).
PCR_COUNT = 32
#: PCRs every document carries and verification reads (measurement, debug).
REQUIRED_PCRS = (0, 1, 2)
CERT_MAX = 1024
PUBLIC_KEY_MAX = 1024
USER_DATA_MAX = 512
NONCE_MAX = 512
UINT64_MAX = (1 << 64) - 1
#: user_data of exactly this length is cctrain's report_data (see verify).
REPORT_DATA_LEN = 64

REQUIRED_FIELDS = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
OPTIONAL_FIELDS = ("public_key", "user_data", "nonce")
_OPTIONAL_MAX = {"public_key": PUBLIC_KEY_MAX, "user_data": USER_DATA_MAX, "nonce": NONCE_MAX}

#: What an NSM document starts with: array(4), bstr(4) {1: -35}; and its base64.
COSE_PREFIX = bytes.fromhex("8444a1013822")
_B64_PREFIX = base64.b64encode(COSE_PREFIX)
_HEX_PREFIX = COSE_PREFIX.hex().encode()


@dataclass(frozen=True)
class NitroDocument:
    """A parsed, not yet verified, Nitro attestation document."""

    sign1: CoseSign1
    module_id: str
    digest: str
    timestamp: int  # milliseconds since the epoch
    pcrs: Mapping[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]
    cabundle_der: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    #: The certificate the document arrived in (Evervault form), else None.
    carrier: x509.Certificate | None = None


def sniff(raw: bytes) -> bool:
    data = bytes(raw)
    if data.startswith(COSE_PREFIX) or data.lstrip().startswith(_B64_PREFIX):
        return True
    return data[:1] == b"\x30" and _HEX_PREFIX in data


def parse(raw: bytes) -> NitroDocument:
    """A document from raw CBOR, base64 text, or a certificate carrying it."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceParseError(f"{WHAT}: want bytes, got {type(raw).__name__}")
    data = bytes(raw)
    if data and (0x80 <= data[0] <= 0x9F or 0xC0 <= data[0] <= 0xDB):
        # A CBOR array or tag: the document itself (strictly), nothing else is tried.
        return parse_document(data)
    if data[:1] == b"\x30":  # DER SEQUENCE: a certificate carrying the document
        carrier = _load_der(data, "carrying certificate")
        return parse_document(_document_from_certificate(carrier), carrier=carrier)
    compact = b"".join(data.split())
    if compact and all(c < 0x80 for c in compact):
        try:
            decoded = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded[:1] == b"\x84":
            return parse_document(decoded)
    raise EvidenceParseError(
        f"{WHAT}: not a COSE_Sign1 (raw CBOR, hex or base64) nor a certificate carrying one"
    )


def _document_from_certificate(cert: x509.Certificate) -> bytes:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise EvidenceParseError(f"carrying certificate: SAN cannot be parsed: {exc}") from None
    if not names:
        raise EvidenceParseError(
            "carrying certificate: no SAN DNS name, so no attestation document in it "
            "(a plain TLS certificate is not evidence)"
        )
    label = max(names, key=len).split(".", 1)[0]
    try:
        doc = bytes.fromhex(label)
    except ValueError:
        doc = b""
    if doc[:1] != b"\x84":
        raise EvidenceParseError(
            "carrying certificate: its longest SAN DNS name does not start with a "
            "hex-encoded attestation document"
        )
    return doc


def _load_der(der: bytes, what: str) -> x509.Certificate:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
            # cryptography decodes lazily: touch what verification reads, now.
            cert.public_key()
            _ = cert.not_valid_before_utc, cert.not_valid_after_utc, cert.extensions
    except (ValueError, TypeError) as exc:
        raise EvidenceParseError(f"{what}: not a DER X.509 certificate ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - UnsupportedAlgorithm and kin: unparseable
        raise EvidenceParseError(f"{what}: unsupported certificate ({exc})") from None
    return cert


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _bstr(payload: Mapping[str, Any], key: str, lo: int, hi: int) -> bytes:
    v = payload[key]
    if not isinstance(v, bytes):
        raise EvidenceParseError(f"{WHAT}: {key} is {type(v).__name__}, want a byte string")
    if not lo <= len(v) <= hi:
        raise EvidenceParseError(f"{WHAT}: {key} is {len(v)} bytes, want {lo}..{hi}")
    return v


def parse_document(data: bytes, *, carrier: x509.Certificate | None = None) -> NitroDocument:
    """Parse the COSE_Sign1 bytes of a document (see the module docstring)."""
    sign1 = parse_sign1(data, WHAT, tag="forbidden")
    if set(sign1.protected) != {1} or sign1.alg != ES384:
        raise EvidenceParseError(
            f"{WHAT}: protected header alg is {sign1.alg_name} (header "
            f"{dict(sign1.protected)!r}), want exactly {{1: -35}} (ES384)"
        )
    if len(sign1.signature) != SIGNATURE_LEN:
        raise EvidenceParseError(
            f"{WHAT}: signature is {len(sign1.signature)} bytes, want {SIGNATURE_LEN} (ES384)"
        )
    payload = loads_strict(sign1.payload, f"{WHAT} payload")
    if not isinstance(payload, Mapping):
        raise EvidenceParseError(f"{WHAT}: payload is {type(payload).__name__}, want a map")
    for key in payload:
        if not isinstance(key, str):
            raise EvidenceParseError(f"{WHAT}: payload key {key!r} is not text")
        if key not in REQUIRED_FIELDS and key not in OPTIONAL_FIELDS:
            raise EvidenceParseError(f"{WHAT}: unknown field {key!r}")
    for key in REQUIRED_FIELDS:
        if key not in payload:
            raise EvidenceParseError(f"{WHAT}: field {key!r} is missing")

    module_id = payload["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise EvidenceParseError(f"{WHAT}: module_id is {module_id!r}, want non-empty text")
    digest = payload["digest"]
    if digest != DIGEST:
        raise EvidenceParseError(f"{WHAT}: digest is {digest!r}, want {DIGEST!r}")
    timestamp = payload["timestamp"]
    if not _is_uint(timestamp) or not 0 < timestamp <= UINT64_MAX:
        raise EvidenceParseError(
            f"{WHAT}: timestamp is {timestamp!r}, want a positive 64-bit uint (ms)"
        )

    raw_pcrs = payload["pcrs"]
    if not isinstance(raw_pcrs, Mapping) or not raw_pcrs:
        raise EvidenceParseError(f"{WHAT}: pcrs is {type(raw_pcrs).__name__}, want a map")
    pcrs: dict[int, bytes] = {}
    for index, value in raw_pcrs.items():
        if not _is_uint(index) or index >= PCR_COUNT:
            raise EvidenceParseError(f"{WHAT}: pcrs index {index!r}, want a uint 0..31")
        if not isinstance(value, bytes) or len(value) != PCR_LEN:
            got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
            raise EvidenceParseError(
                f"{WHAT}: pcrs[{index}] is {got}, want {PCR_LEN} bytes (digest SHA384)"
            )
        pcrs[index] = value
    missing = [i for i in REQUIRED_PCRS if i not in pcrs]
    if missing:
        raise EvidenceParseError(f"{WHAT}: pcrs lacks PCR {missing} (PCR0..2 are required)")

    cert_der = _bstr(payload, "certificate", 1, CERT_MAX)
    bundle = payload["cabundle"]
    if not isinstance(bundle, list | tuple) or not bundle:
        raise EvidenceParseError(f"{WHAT}: cabundle is not a non-empty array")
    bundle_der: list[bytes] = []
    for i, entry in enumerate(bundle):
        if not isinstance(entry, bytes) or not 1 <= len(entry) <= CERT_MAX:
            raise EvidenceParseError(
                f"{WHAT}: cabundle[{i}] is not a byte string of 1..{CERT_MAX} bytes"
            )
        bundle_der.append(entry)

    optional: dict[str, bytes | None] = {}
    for key in OPTIONAL_FIELDS:
        if payload.get(key) is None:
            optional[key] = None
        else:
            optional[key] = _bstr(payload, key, 1 if key == "public_key" else 0, _OPTIONAL_MAX[key])

    leaf = _load_der(cert_der, f"{WHAT}: certificate")
    cabundle = tuple(_load_der(d, f"{WHAT}: cabundle[{i}]") for i, d in enumerate(bundle_der))
    return NitroDocument(
        sign1=sign1,
        module_id=module_id,
        digest=digest,
        timestamp=timestamp,
        pcrs=dict(sorted(pcrs.items())),
        certificate=leaf,
        cabundle=cabundle,
        cabundle_der=tuple(bundle_der),
        public_key=optional["public_key"],
        user_data=optional["user_data"],
        nonce=optional["nonce"],
        carrier=carrier,
    )
