"""Intel PCS collateral: load it from files, fetch it through a getter, parse it.

The mapping put in :attr:`Evidence.collateral` is JSON-compatible.  Two shapes
are accepted (keys as in Phala's dcap-qvl ``QuoteCollateralV3``, which the
vectors use)::

    {"tcb_info": "<exact tcbInfo JSON text>", "tcb_info_signature": "<hex r||s>",
     "tcb_info_issuer_chain": "<PEM>",            # optional: pinned TCB Signing cert
     "qe_identity": "<exact enclaveIdentity JSON text>", "qe_identity_signature": "<hex>",
     "qe_identity_issuer_chain": "<PEM>",         # optional
     "root_ca_crl": "<hex DER or PEM>", "pck_crl": "<hex DER or PEM>",
     "pck_crl_issuer_chain": "<PEM>"}             # optional, informational

or, from a directory holding several of a kind, ``tcb_infos`` /
``qe_identities`` (lists of ``{"tcb_info"|"qe_identity": ..., "..._signature": ...}``)
and ``pck_crls`` (list).  Intel signs the *exact bytes* of the ``tcbInfo`` /
``enclaveIdentity`` value, so the text is kept verbatim and never re-serialised.

Parsed pieces are cached by their bytes: the same collateral verifies many
quotes, and parsing certificates and CRLs dominates a verification otherwise.
"""

from __future__ import annotations

import binascii
import functools
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from cctrain.attestation.base import CollateralGetter
from cctrain.errors import EvidenceParseError

PCS_BASE = "https://api.trustedservices.intel.com"
ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


@dataclass(frozen=True)
class SignedJson:
    """One Intel-signed JSON value: the exact text, its raw r||s signature, and its parse."""

    text: str
    signature: bytes
    body: Mapping[str, Any]


@dataclass(frozen=True)
class DcapCollateral:
    tcb_infos: tuple[SignedJson, ...]
    qe_identities: tuple[SignedJson, ...]
    #: Issuer chains as shipped (may be empty: the pinned TCB Signing cert is used then).
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    root_ca_crl: x509.CertificateRevocationList | None
    pck_crls: tuple[x509.CertificateRevocationList, ...]


# -- small cached parsers ---------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def load_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """PEM certificates in order; cached by their bytes."""
    try:
        return tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise EvidenceParseError(f"certificate chain cannot be parsed: {exc}") from None


@functools.lru_cache(maxsize=256)
def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL given as DER, PEM or hex text of DER; cached by its bytes."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        stripped = data.strip()
        if stripped and all(c in b"0123456789abcdefABCDEF" for c in stripped):
            data = binascii.unhexlify(stripped)
        return x509.load_der_x509_crl(data)
    except (ValueError, binascii.Error) as exc:
        raise EvidenceParseError(f"CRL cannot be parsed: {exc}") from None


@functools.lru_cache(maxsize=256)
def _parse_signed_json(text: str, signature_hex: str, what: str) -> SignedJson:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise EvidenceParseError(f"{what} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EvidenceParseError(f"{what} is not a JSON object")
    try:
        sig = bytes.fromhex(signature_hex)
    except ValueError:
        raise EvidenceParseError(f"{what} signature is not hex") from None
    if len(sig) != 64:
        raise EvidenceParseError(f"{what} signature must be 64 bytes (r||s), got {len(sig)}")
    return SignedJson(text=text, signature=sig, body=body)


def raw_json_member(document: str, key: str) -> str:
    """The exact source text of ``document[key]`` (a top-level member), never re-serialised.

    Intel signs the bytes of the value as served; ``json.dumps`` of the parse
    would not reproduce them.
    """
    try:
        json.loads(document)
        decoder = json.JSONDecoder()
        pos = _skip_ws(document, 0)
        if document[pos] != "{":
            raise EvidenceParseError("expected a JSON object")
        pos = _skip_ws(document, pos + 1)
        found: str | None = None
        while document[pos] != "}":
            if document[pos] != '"':
                raise EvidenceParseError("expected a member name")
            name, pos = json.decoder.scanstring(document, pos + 1)  # type: ignore[attr-defined]
            pos = _skip_ws(document, pos)
            if document[pos] != ":":
                raise EvidenceParseError("expected ':'")
            start = _skip_ws(document, pos + 1)
            _, end = decoder.raw_decode(document, start)
            if name == key:
                found = document[start:end]
            pos = _skip_ws(document, end)
            if document[pos] == ",":
                pos = _skip_ws(document, pos + 1)
        if found is None:
            raise EvidenceParseError(f"no {key!r} member")
        return found
    except (ValueError, IndexError) as exc:
        raise EvidenceParseError(f"malformed JSON: {exc}") from None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# -- the mapping → typed collateral -----------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise EvidenceParseError(f"collateral {what} must be a string, got {type(value).__name__}")
    return value


def _signed_list(
    mapping: Mapping[str, Any], single: str, plural: str, what: str
) -> tuple[SignedJson, ...]:
    items: list[tuple[Any, Any]] = []
    if single in mapping:
        items.append((mapping[single], mapping.get(f"{single}_signature")))
    for entry in mapping.get(plural, ()) or ():
        if not isinstance(entry, Mapping):
            raise EvidenceParseError(f"collateral {plural} entries must be objects")
        items.append((entry.get(single), entry.get(f"{single}_signature")))
    out = []
    for text, sig in items:
        out.append(_parse_signed_json(_text(text, what), _text(sig, f"{what} signature"), what))
    return tuple(out)


def _chain(mapping: Mapping[str, Any], key: str) -> tuple[x509.Certificate, ...]:
    value = mapping.get(key)
    if value is None:
        return ()
    return load_pem_chain(_text(value, key).encode())


def _crl(value: Any, what: str) -> x509.CertificateRevocationList:
    return load_crl(_text(value, what).encode())


def parse_collateral(mapping: Mapping[str, Any]) -> DcapCollateral:
    """Type-check and parse a collateral mapping; raise EvidenceParseError naming the part."""
    if not isinstance(mapping, Mapping):
        raise EvidenceParseError("DCAP collateral must be a JSON object")
    pck_values: list[Any] = []
    if "pck_crl" in mapping:
        value = mapping["pck_crl"]
        pck_values.extend(value if isinstance(value, list) else [value])
    pck_values.extend(mapping.get("pck_crls", ()) or ())
    root = mapping.get("root_ca_crl")
    return DcapCollateral(
        tcb_infos=_signed_list(mapping, "tcb_info", "tcb_infos", "TCB info"),
        qe_identities=_signed_list(mapping, "qe_identity", "qe_identities", "QE identity"),
        tcb_info_issuer_chain=_chain(mapping, "tcb_info_issuer_chain"),
        qe_identity_issuer_chain=_chain(mapping, "qe_identity_issuer_chain"),
        root_ca_crl=_crl(root, "root_ca_crl") if root is not None else None,
        pck_crls=tuple(_crl(v, "pck_crl") for v in pck_values),
    )


# -- loading from files -----------------------------------------------------------------------


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _classify_file(path: pathlib.Path, out: dict[str, Any]) -> None:
    data = path.read_bytes()
    text = data.decode("utf-8", errors="strict") if _is_text(data) else None
    if text is not None and text.lstrip().startswith("{"):
        doc = json.loads(text)
        if "tcbInfo" in doc:
            out.setdefault("tcb_infos", []).append(
                {
                    "tcb_info": raw_json_member(text, "tcbInfo"),
                    "tcb_info_signature": _text(doc.get("signature"), "signature"),
                }
            )
        elif "enclaveIdentity" in doc or "qeIdentity" in doc:
            key = "enclaveIdentity" if "enclaveIdentity" in doc else "qeIdentity"
            out.setdefault("qe_identities", []).append(
                {
                    "qe_identity": raw_json_member(text, key),
                    "qe_identity_signature": _text(doc.get("signature"), "signature"),
                }
            )
        else:
            _merge_bundle(doc, out)
        return
    if b"-----BEGIN CERTIFICATE-----" in data:
        chain = load_pem_chain(data)
        cn = _common_name(chain[0].subject)
        pem = data.decode("ascii")
        if "TCB Signing" in cn:
            out["tcb_info_issuer_chain"] = pem
            out["qe_identity_issuer_chain"] = pem
        elif "PCK" in cn and "CA" in cn:
            out["pck_crl_issuer_chain"] = pem
        elif "Root CA" not in cn:  # the root is pinned in the package; a copy adds nothing
            raise EvidenceParseError(f"unexpected certificate {cn!r}")
        return
    crl = load_crl(data)
    der_hex = crl.public_bytes(_der()).hex()
    if _common_name(crl.issuer) == "Intel SGX Root CA":
        out["root_ca_crl"] = der_hex
    else:
        out.setdefault("pck_crls", []).append(der_hex)


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_BUNDLE_KEYS = frozenset(
    {
        "tcb_info",
        "tcb_info_signature",
        "tcb_info_issuer_chain",
        "tcb_infos",
        "qe_identity",
        "qe_identity_signature",
        "qe_identity_issuer_chain",
        "qe_identities",
        "root_ca_crl",
        "pck_crl",
        "pck_crls",
        "pck_crl_issuer_chain",
    }
)


def _merge_bundle(doc: Any, out: dict[str, Any]) -> None:
    if not isinstance(doc, dict) or not (set(doc) & _BUNDLE_KEYS):
        raise EvidenceParseError("not a TCB info, QE identity or collateral bundle")
    for key in ("tcb_infos", "qe_identities", "pck_crls"):
        out.setdefault(key, []).extend(doc.get(key, ()))
    if "tcb_info" in doc:
        out.setdefault("tcb_infos", []).append(
            {"tcb_info": doc["tcb_info"], "tcb_info_signature": doc.get("tcb_info_signature")}
        )
    if "qe_identity" in doc:
        out.setdefault("qe_identities", []).append(
            {
                "qe_identity": doc["qe_identity"],
                "qe_identity_signature": doc.get("qe_identity_signature"),
            }
        )
    if "pck_crl" in doc:
        out.setdefault("pck_crls", []).append(doc["pck_crl"])
    for key in (
        "tcb_info_issuer_chain",
        "qe_identity_issuer_chain",
        "root_ca_crl",
        "pck_crl_issuer_chain",
    ):
        if key in doc:
            out[key] = doc[key]


def load_collateral_path(path: pathlib.Path) -> dict[str, Any]:
    """Read collateral from a bundle JSON file or a directory of Intel PCS files.

    Returns the mapping for :attr:`Evidence.collateral`.  Any unreadable or
    unrecognised file raises EvidenceParseError naming it.
    """
    path = pathlib.Path(path)
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if path.is_dir()
        else [path]
    )
    out: dict[str, Any] = {}
    for file in files:
        try:
            _classify_file(file, out)
        except EvidenceParseError as exc:
            raise EvidenceParseError(f"collateral file {file}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise EvidenceParseError(f"collateral file {file}: {exc}") from None
    try:
        parse_collateral(out)
    except EvidenceParseError as exc:
        raise EvidenceParseError(f"collateral at {path}: {exc}") from None
    return out


# -- fetching through a getter ----------------------------------------------------------------


def collateral_urls(*, tee: str, fmspc: bytes, pck_ca: str) -> dict[str, str]:
    """Intel PCS v4 URLs of the collateral for one platform (``pck_ca``: platform/processor)."""
    kind = "tdx" if tee == "tdx" else "sgx"
    return {
        "tcb_info": f"{PCS_BASE}/{kind}/certification/v4/tcb?fmspc={fmspc.hex().upper()}",
        "qe_identity": f"{PCS_BASE}/{kind}/certification/v4/qe/identity",
        "pck_crl": f"{PCS_BASE}/sgx/certification/v4/pckcrl?ca={pck_ca}&encoding=der",
        "root_ca_crl": ROOT_CA_CRL_URL,
    }


def fetch_collateral(
    getter: CollateralGetter, *, tee: str, fmspc: bytes, pck_ca: str
) -> dict[str, Any]:
    """Fetch collateral with the caller's getter; issuer chains come from the pinned certs.

    The getter returns response bodies only (PCS sends issuer chains in headers),
    so the TCB info and QE identity are checked against the package's pinned
    TCB Signing certificate, itself chained to the pinned root.
    """
    urls = collateral_urls(tee=tee, fmspc=fmspc, pck_ca=pck_ca)
    out: dict[str, Any] = {}
    for part in ("tcb_info", "qe_identity"):
        text = getter(urls[part]).decode("utf-8")
        key = "tcbInfo" if part == "tcb_info" else "enclaveIdentity"
        out[part] = raw_json_member(text, key)
        out[f"{part}_signature"] = _text(json.loads(text).get("signature"), "signature")
    out["pck_crl"] = load_crl(getter(urls["pck_crl"])).public_bytes(_der()).hex()
    out["root_ca_crl"] = load_crl(getter(urls["root_ca_crl"])).public_bytes(_der()).hex()
    return out
