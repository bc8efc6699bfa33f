"""Parse Azure confidential-VM vTPM evidence: one JSON document, structure only.

The document carries the HCL report (SNP report + runtime data), the vTPM quote
(``TPMS_ATTEST`` bytes, signature, PCR values) and the VCEK.  The forms of
confidential-containers/trustee's ``az-snp-vtpm`` evidence are accepted and
normalised to :class:`AzureVtpmEvidence`:

* v0: ``{"report": [...], "quote": {"signature", "message", "pcrs"}, "vcek": PEM}``
  with byte arrays as integer lists;
* v1, v2: ``{"version": 1|2, "hcl_report": base64url, "tpm_quote": {...hex...},
  "vcek": base64url DER}``.

Byte fields may be integer arrays, hex or base64(url) in any form.  The runtime
data JSON is read for the attestation key ``HCLAkPub`` (an RSA JWK); nothing
here checks a signature or a hash (:mod:`.verify` does).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from cctrain.attestation.azure_vtpm.tpm import (
    QuoteAttest,
    TpmSignature,
    parse_quote_attest,
    parse_signature,
)
from cctrain.attestation.sev_snp.parse import (
    MAX_JSON_SIZE,
    SnpEvidence,
    _decode_text,
    _json_bytes,
    parse_hcl_report,
)
from cctrain.errors import EvidenceParseError

MIN_AK_BITS = 2048
MAX_PCRS = 64
PCR_SIZE = 32  # SHA-256 bank values
_TOP_KEYS = {"version", "report", "hcl_report", "quote", "tpm_quote", "vcek"}
_QUOTE_KEYS = {"signature", "message", "pcrs"}
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


@dataclass(frozen=True)
class AzureVtpmEvidence:
    """Parsed Azure vTPM evidence; nothing in it is verified yet."""

    #: The HCL report as sev-snp parses it (SNP report, runtime data, VCEK).
    snp: SnpEvidence
    quote: QuoteAttest
    signature: TpmSignature
    #: The SHA-256 PCR values the evidence carries, in the quote's selection order.
    pcr_values: tuple[bytes, ...]
    #: HCLAkPub, the vTPM attestation key, from the runtime data.
    ak_pub: rsa.RSAPublicKey
    #: The runtime data JSON (HCLAkPub/HCLEkPub, vm-configuration, user-data).
    runtime: Mapping[str, Any]
    #: "trustee-v0", "trustee-v1", "trustee-v2".
    format: str


def _b64url_int(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value or not _B64URL.match(value):
        raise EvidenceParseError(f"{what}: expected a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise EvidenceParseError(f"{what}: not base64url") from None
    return int.from_bytes(raw, "big")


def _runtime(runtime_data: bytes) -> tuple[Mapping[str, Any], rsa.RSAPublicKey]:
    try:
        doc = json.loads(runtime_data)
    except (ValueError, RecursionError) as exc:
        raise EvidenceParseError(f"HCL runtime data is not JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise EvidenceParseError("HCL runtime data must be a JSON object")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise EvidenceParseError("HCL runtime data has no 'keys' list")
    aks = [k for k in keys if isinstance(k, Mapping) and k.get("kid") == "HCLAkPub"]
    if len(aks) != 1:
        raise EvidenceParseError(
            f"HCL runtime data must carry exactly one HCLAkPub key, has {len(aks)}"
        )
    return doc, rsa_from_jwk(aks[0], "HCLAkPub")


def rsa_from_jwk(jwk: Mapping[str, Any], what: str) -> rsa.RSAPublicKey:
    """An RSA public key of at least MIN_AK_BITS from a JWK (kty, n, e)."""
    if jwk.get("kty") != "RSA":
        raise EvidenceParseError(f"{what}: kty is {jwk.get('kty')!r}, want 'RSA'")
    n = _b64url_int(jwk.get("n"), f"{what}.n")
    e = _b64url_int(jwk.get("e"), f"{what}.e")
    if n.bit_length() < MIN_AK_BITS:
        raise EvidenceParseError(
            f"{what} is a {n.bit_length()}-bit RSA key, want at least {MIN_AK_BITS}"
        )
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise EvidenceParseError(f"{what} is not a valid RSA public key: {exc}") from None


def _certificates(value: Any) -> tuple[bytes, ...]:
    """The ``vcek`` field: PEM text (one or more certificates) or base64 DER."""
    if value is None:
        return ()
    if not isinstance(value, str):
        raise EvidenceParseError("vcek: expected a PEM or base64 string")
    blob = _decode_text(value, "vcek")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if blob.lstrip().startswith(b"-----BEGIN"):
                certs = x509.load_pem_x509_certificates(blob)
            else:
                certs = [x509.load_der_x509_certificate(blob)]
            return tuple(c.public_bytes(Encoding.DER) for c in certs)
    except ValueError as exc:
        raise EvidenceParseError(f"vcek cannot be parsed: {exc}") from None


def _one_of(doc: Mapping[str, Any], names: tuple[str, str], what: str) -> Any:
    present = [n for n in names if n in doc]
    if len(present) != 1:
        raise EvidenceParseError(
            f"Azure vTPM evidence needs exactly one of {'/'.join(names)} ({what}), "
            f"has {len(present)}"
        )
    return doc[present[0]]


def parse_document(doc: Mapping[str, Any]) -> AzureVtpmEvidence:
    """Normalise one decoded evidence document (any trustee form)."""
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise EvidenceParseError(f"Azure vTPM evidence: unknown fields {unknown}")
    version = doc.get("version", 0)
    if version not in (0, 1, 2) or isinstance(version, bool):
        raise EvidenceParseError(f"Azure vTPM evidence version {version!r} is not 0, 1 or 2")
    hcl = parse_hcl_report(
        _json_bytes(_one_of(doc, ("hcl_report", "report"), "HCL report"), "hcl_report")
    )
    quote_obj = _one_of(doc, ("tpm_quote", "quote"), "TPM quote")
    if not isinstance(quote_obj, Mapping):
        raise EvidenceParseError("quote: expected an object")
    if set(quote_obj) != _QUOTE_KEYS:
        raise EvidenceParseError(
            f"quote: want exactly the fields {sorted(_QUOTE_KEYS)}, got {sorted(quote_obj)}"
        )
    message = _json_bytes(quote_obj["message"], "quote.message")
    attest = parse_quote_attest(message)
    pcr_list = quote_obj["pcrs"]
    if not isinstance(pcr_list, list) or len(pcr_list) > MAX_PCRS:
        raise EvidenceParseError(f"quote.pcrs: expected a list of at most {MAX_PCRS} values")
    pcrs = tuple(_json_bytes(v, f"quote.pcrs[{i}]", size=PCR_SIZE) for i, v in enumerate(pcr_list))
    if hcl.runtime_data is None:  # parse_hcl_report always sets it
        raise EvidenceParseError("HCL report carries no runtime data")
    runtime, ak = _runtime(hcl.runtime_data)
    signature = parse_signature(
        _json_bytes(quote_obj["signature"], "quote.signature"), (ak.key_size + 7) // 8
    )
    snp = SnpEvidence(
        report=hcl.report,
        certificates=_certificates(doc.get("vcek")),
        format="azure-vtpm",
        runtime_data=hcl.runtime_data,
        runtime_data_hash=hcl.runtime_data_hash,
    )
    return AzureVtpmEvidence(
        snp=snp,
        quote=attest,
        signature=signature,
        pcr_values=pcrs,
        ak_pub=ak,
        runtime=runtime,
        format=f"trustee-v{version}",
    )


def parse(raw: bytes) -> AzureVtpmEvidence:
    """Parse Azure vTPM evidence bytes (a JSON document); raise EvidenceParseError."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EvidenceParseError(f"Azure vTPM evidence must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_JSON_SIZE:
        raise EvidenceParseError(f"Azure vTPM evidence is {len(raw)} bytes, limit {MAX_JSON_SIZE}")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EvidenceParseError(f"Azure vTPM evidence is not valid JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise EvidenceParseError("Azure vTPM evidence must be a JSON object")
    return parse_document(doc)


def sniff(raw: bytes) -> bool:
    """True for a JSON document with an HCL report and a TPM quote; never raises."""
    try:
        if raw.lstrip()[:1] != b"{" or len(raw) > MAX_JSON_SIZE:
            return False
        return (b'"quote"' in raw or b'"tpm_quote"' in raw) and (
            b'"report"' in raw or b'"hcl_report"' in raw
        )
    except Exception:  # noqa: BLE001 - sniffing must never fail
        return False
