"""Verify a parsed DCAP quote up to the pinned Intel SGX Root CA, at an explicit time.

Chain of trust checked, each link by a real ECDSA P-256/SHA-256 signature::

    Intel SGX Root CA (pinned) ─► PCK Platform/Processor CA ─► PCK certificate
        ─► QE report (report_data[:32] = SHA-256(attestation key || QE auth data))
        ─► attestation key ─► quote header || body

With collateral, also: TCB info and QE identity signed by the Intel SGX TCB
Signing certificate (chained to the pinned root), their validity windows, the
Root CA CRL and PCK CA CRL (signatures, windows, revocation of every
certificate used), FMSPC and PCE-ID agreement, and TCB level matching.

Every failure is collected; the caller gets one EvidenceVerificationError
listing all of them.  ``now`` is an argument and never read here.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from cctrain.attestation.base import CollateralGetter, VerifiedClaims
from cctrain.attestation.dcap import tcb as tcbmod
from cctrain.attestation.dcap.collateral import (
    DcapCollateral,
    SignedJson,
    fetch_collateral,
    load_pem_chain,
    parse_collateral,
)
from cctrain.attestation.dcap.parse import EnclaveReportBody, Quote, TdReportBody
from cctrain.attestation.dcap.pck import PckExtensions, parse_pck_extensions
from cctrain.errors import CctrainError, EvidenceParseError, EvidenceVerificationError

ROOT_FILE = "intel_sgx_root_ca.pem"
TCB_SIGNING_FILE = "intel_tcb_signing.pem"
PCK_CA_NAMES = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}


@functools.lru_cache(maxsize=8)
def _pinned(name: str) -> tuple[x509.Certificate, ...]:
    data = resources.files("cctrain.attestation").joinpath("roots", name).read_bytes()
    return tuple(x509.load_pem_x509_certificates(data))


def intel_root() -> x509.Certificate:
    """The Intel SGX Root CA pinned in the package."""
    return _pinned(ROOT_FILE)[0]


def intel_tcb_signing() -> tuple[x509.Certificate, ...]:
    """Intel SGX TCB Signing certificates pinned for collateral that lacks its issuer chain."""
    return _pinned(TCB_SIGNING_FILE)


@dataclass(frozen=True)
class TrustAnchors:
    """The root every chain must end at, and the TCB Signing certs used when none is shipped.

    Production uses :func:`intel_anchors`; tests pass their own to exercise
    revocation with CRLs they can sign.
    """

    root: x509.Certificate
    tcb_signing: tuple[x509.Certificate, ...]


def intel_anchors() -> TrustAnchors:
    return TrustAnchors(root=intel_root(), tcb_signing=intel_tcb_signing())


# -- small checks -----------------------------------------------------------------------------


def _cn(cert: x509.Certificate | x509.CertificateRevocationList, *, issuer: bool = False) -> str:
    name = cert.issuer if issuer else cert.subject  # type: ignore[union-attr]
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _p256_raw_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def _ecdsa_ok(key: Any, raw_sig: bytes, message: bytes) -> bool:
    """Verify a raw r||s P-256 signature; False on any mismatch or wrong key type."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(raw_sig) != 64:
        return False
    sig = encode_dss_signature(
        int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    )
    try:
        key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_validity(
    cert: x509.Certificate, now: _dt.datetime, what: str, errors: list[str]
) -> None:
    if now < cert.not_valid_before_utc:
        errors.append(f"{what} {_cn(cert)!r} is not valid before {cert.not_valid_before_utc}")
    if now > cert.not_valid_after_utc:
        errors.append(f"{what} {_cn(cert)!r} expired at {cert.not_valid_after_utc}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return bool(bc.ca)


def verify_chain_to_root(
    chain: Sequence[x509.Certificate],
    *,
    root: x509.Certificate,
    now: _dt.datetime,
    what: str,
    errors: list[str],
) -> bool:
    """Leaf-first ``chain`` must chain to the pinned ``root``; append every problem found.

    The chain may end with a copy of the root: it must then carry the pinned
    root's public key (compared as SubjectPublicKeyInfo, not by name).
    """
    before = len(errors)
    certs = list(chain)
    if not certs:
        errors.append(f"{what}: empty certificate chain")
        return False
    if len(certs) > 1 and certs[-1].subject == certs[-1].issuer:
        if _spki(certs[-1]) != _spki(root):
            errors.append(
                f"{what}: chain root {_cn(certs[-1])!r} is not the pinned {_cn(root)!r} "
                "(public key differs)"
            )
            return False
        certs = certs[:-1]
    for i, cert in enumerate(certs):
        issuer = certs[i + 1] if i + 1 < len(certs) else root
        if not _issued_by(cert, issuer):
            errors.append(
                f"{what}: certificate {_cn(cert)!r} is not signed by {_cn(issuer)!r}"
                + (" (the pinned root)" if issuer is root else "")
            )
        if i > 0 and not _is_ca(cert):
            errors.append(f"{what}: intermediate {_cn(cert)!r} is not a CA certificate")
        _check_validity(cert, now, what + " certificate", errors)
    _check_validity(root, now, "pinned root", errors)
    return len(errors) == before


# -- collateral -------------------------------------------------------------------------------


def _parse_date(value: Any, what: str) -> _dt.datetime:
    try:
        out = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise EvidenceVerificationError([f"{what} is not an ISO date: {value!r}"]) from None
    if out.tzinfo is None:
        out = out.replace(tzinfo=_dt.timezone.utc)
    return out


def _check_window(body: Mapping[str, Any], now: _dt.datetime, what: str, errors: list[str]) -> None:
    try:
        issued = _parse_date(body.get("issueDate"), f"{what} issueDate")
        next_update = _parse_date(body.get("nextUpdate"), f"{what} nextUpdate")
    except EvidenceVerificationError as exc:
        errors.extend(exc.errors)
        return
    if now < issued:
        errors.append(f"{what} is not valid yet: issueDate {issued.isoformat()} is after now")
    if now > next_update:
        errors.append(f"{what} expired: nextUpdate {next_update.isoformat()} is before now")


def _signing_chain(
    shipped: Sequence[x509.Certificate],
    anchors: TrustAnchors,
    now: _dt.datetime,
    what: str,
    errors: list[str],
    root_crl: x509.CertificateRevocationList | None,
) -> list[x509.Certificate]:
    """TCB Signing certificates that chain to the root at ``now`` (shipped first, else pinned)."""
    candidates = [tuple(shipped)] if shipped else [(c,) for c in anchors.tcb_signing]
    problems: list[str] = []
    good: list[x509.Certificate] = []
    for chain in candidates:
        local: list[str] = []
        if verify_chain_to_root(chain, root=anchors.root, now=now, what=what, errors=local):
            good.append(chain[0])
        problems.extend(local)
    if not good:
        errors.extend(problems or [f"{what}: no TCB Signing certificate"])
    if root_crl is not None:
        for cert in good:
            _check_not_revoked(root_crl, cert, "TCB Signing certificate", errors)
    return good


def _verify_signed(
    item: SignedJson, signers: Sequence[x509.Certificate], what: str, errors: list[str]
) -> bool:
    message = item.text.encode("utf-8")
    if any(_ecdsa_ok(s.public_key(), item.signature, message) for s in signers):
        return True
    errors.append(f"{what} signature does not verify with the Intel TCB Signing certificate")
    return False


def _check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    now: _dt.datetime,
    what: str,
    errors: list[str],
) -> bool:
    ok = True
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        errors.append(f"{what} is not signed by {_cn(issuer)!r}")
        ok = False
    if now < crl.last_update_utc:
        errors.append(f"{what} is not valid yet: thisUpdate {crl.last_update_utc} is after now")
        ok = False
    next_update = crl.next_update_utc
    if next_update is None or now > next_update:
        errors.append(f"{what} expired: nextUpdate {next_update} is before now")
        ok = False
    return ok


def _check_not_revoked(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, what: str, errors: list[str]
) -> None:
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        errors.append(
            f"{what} {_cn(cert)!r} (serial {cert.serial_number:x}) is revoked by "
            f"the CRL of {_cn(crl, issuer=True)!r}"
        )


@dataclass(frozen=True)
class CollateralResult:
    status: str
    advisories: tuple[str, ...]
    details: Mapping[str, Any]


def verify_collateral(
    collateral: DcapCollateral,
    *,
    tee: str,
    quote: Quote,
    pck_chain: Sequence[x509.Certificate],
    pck: PckExtensions,
    anchors: TrustAnchors,
    now: _dt.datetime,
    errors: list[str],
) -> CollateralResult | None:
    """Check collateral against the quote and rate its TCB; append every problem found."""
    before = len(errors)
    leaf, pck_ca = pck_chain[0], pck_chain[1]

    # Revocation: root CRL covers the PCK CA and TCB Signing certs; PCK CRL covers the leaf.
    if collateral.root_ca_crl is None:
        errors.append("collateral lacks the Intel SGX Root CA CRL")
    elif _check_crl(collateral.root_ca_crl, anchors.root, now, "Root CA CRL", errors):
        _check_not_revoked(collateral.root_ca_crl, pck_ca, "PCK CA certificate", errors)
    pck_crls = [c for c in collateral.pck_crls if c.issuer == pck_ca.subject]
    if not pck_crls:
        errors.append(f"collateral lacks the CRL of {_cn(pck_ca)!r}")
    for crl in pck_crls:
        if _check_crl(crl, pck_ca, now, "PCK CRL", errors):
            _check_not_revoked(crl, leaf, "PCK certificate", errors)

    # TCB info: the one for this platform's FMSPC, signed by the TCB Signing cert.
    want_id = "TDX" if tee == "tdx" else "SGX"
    fmspc = pck.fmspc.hex()
    tcb_info: SignedJson | None = None
    seen: list[str] = []
    for item in collateral.tcb_infos:
        seen.append(str(item.body.get("fmspc", "?")).lower())
        if (
            str(item.body.get("fmspc", "")).lower() == fmspc
            and item.body.get("id", "SGX") == want_id
        ):
            tcb_info = item
    if not collateral.tcb_infos:
        errors.append("collateral lacks the TCB info")
    elif tcb_info is None:
        errors.append(
            f"FMSPC mismatch: PCK certificate FMSPC {fmspc}, {want_id} TCB info FMSPC {seen}"
        )

    platform: tcbmod.TcbMatch | None = None
    module: tcbmod.TcbMatch | None = None
    if tcb_info is not None:
        signers = _signing_chain(
            collateral.tcb_info_issuer_chain,
            anchors,
            now,
            "TCB info issuer chain",
            errors,
            collateral.root_ca_crl,
        )
        if signers and _verify_signed(tcb_info, signers, "TCB info", errors):
            body = tcb_info.body
            _check_window(body, now, "TCB info", errors)
            version = body.get("version")
            if version not in ((3,) if tee == "tdx" else (2, 3)):
                errors.append(f"TCB info version {version!r} is not supported for {want_id}")
            if str(body.get("pceId", "")).lower() != pck.pce_id.hex():
                errors.append(
                    f"PCE-ID mismatch: PCK certificate {pck.pce_id.hex()}, "
                    f"TCB info {body.get('pceId')}"
                )
            tee_svn = quote.body.tee_tcb_svn if isinstance(quote.body, TdReportBody) else None
            try:
                platform = tcbmod.match_platform_tcb(body, pck, tee_svn)
                if isinstance(quote.body, TdReportBody):
                    module = tcbmod.match_tdx_module(
                        body,
                        tee_tcb_svn=quote.body.tee_tcb_svn,
                        mr_signer_seam=quote.body.mr_signer_seam,
                        seam_attributes=quote.body.seam_attributes,
                    )
            except EvidenceVerificationError as exc:
                errors.extend(exc.errors)

    # QE identity: the QE that signed this quote must be Intel's, at a rated ISVSVN.
    want_qe = "TD_QE" if tee == "tdx" else "QE"
    qe_items = [q for q in collateral.qe_identities if q.body.get("id") == want_qe]
    qe: tcbmod.TcbMatch | None = None
    if not qe_items:
        errors.append(f"collateral lacks the {want_qe} identity")
    else:
        item = qe_items[0]
        signers = _signing_chain(
            collateral.qe_identity_issuer_chain,
            anchors,
            now,
            "QE identity issuer chain",
            errors,
            collateral.root_ca_crl,
        )
        if signers and _verify_signed(item, signers, "QE identity", errors):
            _check_window(item.body, now, "QE identity", errors)
            report = quote.certification.qe_report
            try:
                qe = tcbmod.match_qe_identity(
                    item.body,
                    mr_signer=report.mr_signer,
                    isv_prod_id=report.isv_prod_id,
                    misc_select=report.misc_select,
                    attributes=report.attributes,
                    isv_svn=report.isv_svn,
                )
            except EvidenceVerificationError as exc:
                errors.extend(exc.errors)

    if len(errors) != before or platform is None or qe is None:
        return None
    parts = [platform] + ([module] if module is not None else []) + [qe]
    advisories: list[str] = []
    for part in parts:
        advisories.extend(a for a in part.advisories if a not in advisories)
    assert tcb_info is not None
    details = {
        "platform_tcb_status": platform.status,
        "tdx_module_tcb_status": module.status if module is not None else None,
        "qe_tcb_status": qe.status,
        "tcb_date": platform.tcb_date,
        "tcb_evaluation_data_number": tcb_info.body.get("tcbEvaluationDataNumber"),
    }
    return CollateralResult(
        status=tcbmod.combine_statuses([p.status for p in parts]),
        advisories=tuple(advisories),
        details=details,
    )


# -- the quote --------------------------------------------------------------------------------


def verify_quote(
    quote: Quote,
    *,
    tee: str,
    collateral: Mapping[str, Any] | None,
    now: _dt.datetime,
    getter: CollateralGetter | None = None,
    anchors: TrustAnchors | None = None,
) -> VerifiedClaims:
    """Verify ``quote`` at ``now``; raise EvidenceVerificationError listing every failure."""
    if now.tzinfo is None:
        raise EvidenceVerificationError(["now must be timezone-aware"])
    anchors = anchors or intel_anchors()
    errors: list[str] = []
    cert = quote.certification

    # 1. PCK chain up to the pinned root.
    chain: tuple[x509.Certificate, ...] = ()
    try:
        chain = load_pem_chain(cert.pck_chain_pem)
    except EvidenceParseError as exc:
        errors.append(f"PCK chain: {exc}")
    chain_ok = len(chain) >= 2 and verify_chain_to_root(
        chain, root=anchors.root, now=now, what="PCK chain", errors=errors
    )
    if chain and len(chain) < 2:
        errors.append("PCK chain must hold the PCK certificate and its CA")
    pck_ca_kind: str | None = None
    if len(chain) >= 2:
        pck_ca_kind = PCK_CA_NAMES.get(_cn(chain[1]))
        if pck_ca_kind is None or _cn(chain[0], issuer=True) != _cn(chain[1]):
            errors.append(f"PCK chain: issuer {_cn(chain[1])!r} is not an Intel SGX PCK CA")

    # 2. QE report signed by the PCK key, and bound to the attestation key.
    if chain and not _ecdsa_ok(chain[0].public_key(), cert.qe_report_signature, cert.qe_report.raw):
        errors.append("QE report signature does not verify with the PCK certificate key")
    binding = hashlib.sha256(quote.attestation_key + cert.qe_auth_data).digest()
    if cert.qe_report.report_data[:32] != binding:
        errors.append(
            "QE report data does not bind the attestation key: "
            "SHA-256(attestation key || QE auth data) differs from report_data[:32]"
        )

    # 3. The quote signed by the attestation key.
    try:
        att_key = _p256_raw_key(quote.attestation_key)
    except ValueError:
        errors.append("attestation key is not a valid P-256 point")
    else:
        if not _ecdsa_ok(att_key, quote.signature, quote.signed_bytes):
            errors.append("quote signature does not verify with the attestation key")

    # 4. Platform facts from the PCK certificate.
    pck: PckExtensions | None = None
    if chain:
        try:
            pck = parse_pck_extensions(chain[0])
        except EvidenceParseError as exc:
            errors.append(str(exc))

    # 5. Collateral.
    result: CollateralResult | None = None
    if collateral is None and getter is not None and pck is not None and pck_ca_kind:
        try:
            collateral = fetch_collateral(getter, tee=tee, fmspc=pck.fmspc, pck_ca=pck_ca_kind)
        except (CctrainError, OSError, ValueError) as exc:
            errors.append(f"collateral cannot be fetched: {exc}")
    if collateral is not None:
        try:
            parsed = parse_collateral(collateral)
        except EvidenceParseError as exc:
            errors.append(f"collateral: {exc}")
        else:
            if chain_ok and pck is not None:
                result = verify_collateral(
                    parsed,
                    tee=tee,
                    quote=quote,
                    pck_chain=chain,
                    pck=pck,
                    anchors=anchors,
                    now=now,
                    errors=errors,
                )
            elif not chain_ok:
                errors.append("collateral not checked: the PCK chain does not verify")

    if errors:
        raise EvidenceVerificationError(errors)
    assert pck is not None
    return _claims(quote, tee=tee, pck=pck, result=result)


def _claims(
    quote: Quote, *, tee: str, pck: PckExtensions, result: CollateralResult | None
) -> VerifiedClaims:
    common: dict[str, Any] = {
        "quote_version": quote.version,
        "fmspc": pck.fmspc,
        "pce_id": pck.pce_id,
        "pck_tcb_components": list(pck.tcb_components),
        "pck_pce_svn": pck.pce_svn,
        "pck_cpu_svn": pck.cpu_svn,
        "qe_isv_svn": quote.certification.qe_report.isv_svn,
    }
    if result is not None:
        common.update(result.details)
    body = quote.body
    if tee == "tdx":
        assert isinstance(body, TdReportBody)
        extra = {
            "mrtd": body.mr_td,
            "rtmrs": list(body.rtmrs),
            "mr_config_id": body.mr_config_id,
            "mr_owner": body.mr_owner,
            "mr_owner_config": body.mr_owner_config,
            "td_attributes": body.td_attributes,
            "xfam": body.xfam,
            "tee_tcb_svn": body.tee_tcb_svn,
            "mr_seam": body.mr_seam,
            "mr_signer_seam": body.mr_signer_seam,
            "seam_attributes": body.seam_attributes,
            "body_type": quote.body_type,
            "tee_tcb_svn2": body.tee_tcb_svn2,
            "mr_servicetd": body.mr_servicetd,
            **common,
        }
        measurement, debug = body.mr_td, bool(body.td_attributes[0] & 0x01)
    else:
        assert isinstance(body, EnclaveReportBody)
        extra = {
            "mrenclave": body.mr_enclave,
            "mrsigner": body.mr_signer,
            "isv_prod_id": body.isv_prod_id,
            "isv_svn": body.isv_svn,
            "attributes": body.attributes,
            "misc_select": body.misc_select,
            "cpu_svn": body.cpu_svn,
            "config_id": body.config_id,
            "config_svn": body.config_svn,
            **common,
        }
        measurement, debug = body.mr_enclave, bool(body.attributes[0] & 0x02)
    return VerifiedClaims(
        platform=tee,
        measurement=measurement,
        report_data=body.report_data,
        debug=debug,
        signer="pck",
        chip_id=None,
        tcb_status=result.status if result is not None else None,
        advisories=result.advisories if result is not None else (),
        extra=extra,
    )
