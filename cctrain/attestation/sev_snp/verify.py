"""Verify an SEV-SNP report: signature, VCEK/VLEK ← ASK/ASVK ← pinned ARK, TCB, chip.

Every check runs and every failure is collected into one
:class:`~cctrain.errors.EvidenceVerificationError`, so a caller sees at once
that, say, the chain is fine but the TCB does not match.  Time is the explicit
``now``; nothing is fetched unless a ``getter`` is passed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from cctrain.attestation.base import CollateralGetter, VerifiedClaims
from cctrain.attestation.sev_snp.abi import PRODUCTS, TURIN_HWID_SIZE
from cctrain.attestation.sev_snp.certs import (
    AmdChain,
    EndorsementKeyExtensions,
    common_name,
    endorsement_key_extensions,
    is_ca,
    load_certificate,
    pinned_roots,
    signed_by,
    unique,
    vcek_url,
)
from cctrain.attestation.sev_snp.parse import AttestationReport, SnpEvidence
from cctrain.errors import EvidenceParseError, EvidenceVerificationError

PLATFORM = "sev-snp"
_LEAF_NAMES = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}

# Verified signatures, keyed by the exact DER bytes involved.  A signature
# check is a pure function of those bytes, so caching it is safe; validity
# periods depend on ``now`` and are checked on every call.
_CACHE_LIMIT = 256
_signature_cache: dict[tuple[bytes, bytes], bool] = {}


def _cached_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    key = (cert.public_bytes(Encoding.DER), issuer.public_bytes(Encoding.DER))
    if key in _signature_cache:
        return None
    why = signed_by(cert, issuer)
    if why is None:
        if len(_signature_cache) >= _CACHE_LIMIT:
            _signature_cache.clear()
        _signature_cache[key] = True
    return why


def clear_cache() -> None:
    """Forget cached chain signatures (tests; rotating roots)."""
    _signature_cache.clear()


def _utc(now: _dt.datetime) -> _dt.datetime:
    # Naive datetimes are taken as UTC, the zone X.509 validity is stated in.
    return now if now.tzinfo is not None else now.replace(tzinfo=_dt.timezone.utc)


def _check_validity(cert: x509.Certificate, role: str, now: _dt.datetime) -> str | None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < nb:
        return f"{role} certificate is not yet valid at {now.isoformat()} (valid from {nb})"
    if now > na:
        return f"{role} certificate has expired at {now.isoformat()} (valid until {na})"
    return None


def verify_report_signature(report: AttestationReport, cert: x509.Certificate) -> str | None:
    """None when the VCEK/VLEK certificate's key signed ``report``, else why not."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "endorsement key cannot be loaded from its certificate"
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return "endorsement key is not an ECDSA P-384 key"
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "report signature does not verify with the endorsement key"
    return None


def _as_evidence(report: Any) -> SnpEvidence:
    if isinstance(report, SnpEvidence):
        return report
    if isinstance(report, AttestationReport):
        return SnpEvidence(report=report)
    raise EvidenceParseError(f"sev-snp verify needs a parsed report, got {type(report).__name__}")


def _check_runtime_binding(ev: SnpEvidence) -> str | None:
    """Azure HCL: the SNP report_data must be the hash of the runtime data."""
    if ev.runtime_data is None or ev.runtime_data_hash is None:
        return None
    digest = hashlib.new(ev.runtime_data_hash, ev.runtime_data).digest()
    want = digest + bytes(64 - len(digest))
    if ev.report.report_data != want:
        return (
            f"HCL runtime data: report_data is not {ev.runtime_data_hash}(runtime data) "
            f"(got {ev.report.report_data.hex()}, want {want.hex()})"
        )
    return None


def _find_leaf(
    report: AttestationReport,
    certs: Sequence[x509.Certificate],
    getter: CollateralGetter | None,
    errors: list[str],
) -> list[x509.Certificate]:
    """Candidate VCEK/VLEK certificates: supplied ones, else one from ``getter``."""
    want = _LEAF_NAMES[report.signing_key]
    leaves = [c for c in certs if not is_ca(c) and common_name(c.subject) == want]
    if leaves:
        return leaves
    other = {n for n in _LEAF_NAMES.values() if n != want}
    if any(common_name(c.subject) in other for c in certs):
        errors.append(
            f"report is signed by the {report.signing_key.upper()} but only a "
            f"{'/'.join(sorted(other))} certificate was supplied"
        )
        return []
    if getter is None:
        errors.append(
            f"no {report.signing_key.upper()} certificate supplied (pass it as a certificate, "
            "or pass a getter to fetch it from AMD KDS)"
        )
        return []
    if report.signing_key == "vlek":
        errors.append("no VLEK certificate supplied (AMD KDS serves VLEKs only to the CSP)")
        return []
    if report.product is None:
        errors.append(
            f"no VCEK supplied and the product line of this v{report.version} report is "
            "unknown, so its KDS URL cannot be built; pass the VCEK"
        )
        return []
    url = vcek_url(report.product, report.chip_id, report.reported_tcb)
    try:
        blob = getter(url)
    except Exception as exc:  # noqa: BLE001 - any getter failure is a verification failure
        errors.append(f"fetching the VCEK from {url} failed: {type(exc).__name__}: {exc}")
        return []
    try:
        return [load_certificate(blob, f"VCEK from {url}")]
    except EvidenceParseError as exc:
        errors.append(str(exc))
        return []


def _find_chain(
    leaf: x509.Certificate,
    certs: Sequence[x509.Certificate],
    errors: list[str],
) -> AmdChain | None:
    """The pinned (or supplied, ARK-signed) intermediate that signed ``leaf``."""
    roots = pinned_roots()
    arks = roots.arks()
    candidates: list[tuple[x509.Certificate, str, x509.Certificate]] = [
        (c.intermediate, c.product, c.ark) for c in roots.chains
    ]
    # A supplied intermediate is usable only when a pinned ARK signed it
    # (AMD may re-issue an ASK); a supplied ARK is never trusted as such.
    for cert in certs:
        if is_ca(cert) and cert.issuer != cert.subject:
            for product, ark in arks.items():
                if cert.issuer == ark.subject:
                    candidates.append((cert, product, ark))
    reasons: list[str] = []
    for intermediate, product, ark in candidates:
        if intermediate.subject != leaf.issuer:
            continue
        why = _cached_signed_by(intermediate, ark) or _cached_signed_by(leaf, intermediate)
        if why is None:
            kind = "asvk" if "VLEK" in common_name(intermediate.subject) else "ask"
            return AmdChain(product, kind, intermediate, ark)
        reasons.append(why)
    if reasons:
        errors.extend(dict.fromkeys(reasons))
    else:
        errors.append(
            f"no pinned AMD ASK/ASVK named {common_name(leaf.issuer)!r} issues the "
            f"{common_name(leaf.subject)} certificate"
        )
    return None


def _check_leaf_against_report(
    report: AttestationReport,
    leaf: x509.Certificate,
    chain: AmdChain | None,
    product: str,
    exts: EndorsementKeyExtensions,
    errors: list[str],
) -> None:
    if chain is not None:
        expected_intermediate = (
            f"SEV-{product}" if report.signing_key == "vcek" else f"SEV-VLEK-{product}"
        )
        if common_name(chain.intermediate.subject) != expected_intermediate:
            errors.append(
                f"signing key: report says {report.signing_key.upper()}, but the chain's "
                f"intermediate is {common_name(chain.intermediate.subject)}"
            )
    if exts.product_line != product:
        errors.append(
            f"product line: {common_name(leaf.subject)} productName is "
            f"{exts.product_name!r}, but its chain is {product}"
        )
    if report.product is not None and report.product != product:
        errors.append(
            f"product line: report CPUID (family 0x{report.cpuid_fam_id:x} model "
            f"0x{report.cpuid_mod_id:x}) is {report.product}, but the certificate chain "
            f"is {product}"
        )
    # TCB: every component the certificate states must equal the report's.
    reported = report.reported_tcb.all_components()
    for name, cert_value in sorted(exts.tcb.items()):
        got = reported.get(name)
        if got is None:
            errors.append(f"TCB: certificate states {name} SPL, which {product} does not have")
        elif got != cert_value:
            errors.append(
                f"TCB mismatch: reported_tcb.{name} is {got}, "
                f"{common_name(leaf.subject)} certifies {cert_value}"
            )
    for name in report.reported_tcb.named():
        if name not in exts.tcb:
            errors.append(f"TCB: {common_name(leaf.subject)} has no {name} SPL extension")
    if report.signing_key == "vcek":
        if exts.csp_id is not None:
            errors.append("VCEK certificate carries a VLEK cspID extension")
        if exts.hwid is None:
            errors.append("VCEK certificate has no hwID extension")
        elif not report.mask_chip_key:
            size = TURIN_HWID_SIZE if product == "Turin" else len(report.chip_id)
            if len(exts.hwid) != size or exts.hwid != report.chip_id[:size]:
                errors.append(
                    f"chip_id mismatch: report chip_id {report.chip_id[:size].hex()}, "
                    f"VCEK hwID {exts.hwid.hex()}"
                )
    else:
        if exts.hwid is not None:
            errors.append("VLEK certificate carries a VCEK hwID extension")
        if exts.csp_id is None:
            errors.append("VLEK certificate has no cspID extension")


def _tcb_dict(report: AttestationReport, which: str) -> dict[str, int]:
    tcb = getattr(report, which)
    return dict(tcb.named())


def _claims(ev: SnpEvidence, report: AttestationReport, product: str) -> VerifiedClaims:
    chip_id: bytes | None = None
    if not report.mask_chip_key:
        chip_id = report.chip_id[:TURIN_HWID_SIZE] if product == "Turin" else report.chip_id
    extra: dict[str, Any] = {
        "version": report.version,
        "guest_policy": report.policy,
        "vmpl": report.vmpl,
        "reported_tcb": _tcb_dict(report, "reported_tcb"),
        "committed_tcb": _tcb_dict(report, "committed_tcb"),
        "current_tcb": _tcb_dict(report, "current_tcb"),
        "launch_tcb": _tcb_dict(report, "launch_tcb"),
        "guest_svn": report.guest_svn,
        "family_id": report.family_id,
        "image_id": report.image_id,
        "host_data": report.host_data,
        "id_key_digest": report.id_key_digest,
        "author_key_digest": report.author_key_digest,
        "product": product,
        "platform_info": report.platform_info,
        "current_firmware": str(report.current_version),
        "committed_firmware": str(report.committed_version),
        "evidence_format": ev.format,
    }
    if ev.runtime_data is not None:
        extra["runtime_data"] = ev.runtime_data
    return VerifiedClaims(
        platform=PLATFORM,
        measurement=report.measurement,
        report_data=report.report_data,
        debug=report.debug,
        signer=report.signing_key,
        chip_id=chip_id,
        tcb_status=None,
        advisories=(),
        extra=extra,
    )


def verify(
    report: SnpEvidence | AttestationReport,
    *,
    certificates: Sequence[x509.Certificate] = (),
    collateral: Mapping[str, Any] | None = None,
    now: _dt.datetime,
    getter: CollateralGetter | None = None,
) -> VerifiedClaims:
    """Verify a parsed SNP report at ``now``; return claims or raise with every failure.

    ``certificates`` carries the VCEK or VLEK (and optionally AMD intermediates,
    used only when a pinned ARK signed them); ``collateral`` is unused for SNP.
    """
    del collateral  # SNP has no collateral beyond the certificates
    ev = _as_evidence(report)
    rep = ev.report
    now = _utc(now)
    errors: list[str] = []
    if rep.signing_key == "none":
        raise EvidenceVerificationError(["report is not signed (SIGNING_KEY = none)"])

    certs = list(certificates)
    for i, der in enumerate(ev.certificates):
        certs.append(load_certificate(der, f"embedded certificate {i}"))
    certs = unique(certs)

    binding = _check_runtime_binding(ev)
    if binding:
        errors.append(binding)

    leaves = _find_leaf(rep, certs, getter, errors)
    if not leaves:
        raise EvidenceVerificationError(errors)
    # Several candidates (say, VCEKs of two TCB levels): use the one that signed.
    leaf, why = leaves[0], verify_report_signature(rep, leaves[0])
    for candidate in leaves[1:]:
        if why is None:
            break
        if verify_report_signature(rep, candidate) is None:
            leaf, why = candidate, None
    if why:
        errors.append(why)

    role = rep.signing_key.upper()
    chain = _find_chain(leaf, certs, errors)
    exts: EndorsementKeyExtensions | None = None
    try:
        exts = endorsement_key_extensions(leaf)
    except EvidenceParseError as exc:
        errors.append(f"{role} {exc}")
    # The product line comes from the pinned ARK; without a chain, the best
    # guess (for reporting the remaining checks) is the report's, then the leaf's.
    if chain is not None:
        product = chain.product
    else:
        product = rep.product or (exts.product_line if exts is not None else "unknown")
    if rep.product is None and product in PRODUCTS:
        rep = rep.with_product(product)  # v2: the TCB layout follows the product
    if exts is not None:
        _check_leaf_against_report(rep, leaf, chain, product, exts, errors)
    why = _check_validity(leaf, role, now)
    if why:
        errors.append(why)
    if chain is not None:
        for cert, name in (
            (chain.intermediate, common_name(chain.intermediate.subject)),
            (chain.ark, common_name(chain.ark.subject)),
        ):
            why = _check_validity(cert, name, now)
            if why:
                errors.append(why)
    if errors:
        raise EvidenceVerificationError(errors)
    return _claims(ev, rep, product)
