"""TCB level matching for Intel TCB info (v2/v3) and QE identity (v2): pure functions.

Follows Intel's QVL rules: TCB levels are ordered newest first, and the first
level whose every component is at or below the platform's (PCK certificate
SGX components and PCESVN; for TDX also the quote's TEE_TCB_SVN) gives the
status.  TDX modules with a major version (TEE_TCB_SVN[1] > 0) are rated by the
matching ``tdxModuleIdentities`` entry instead of TEE_TCB_SVN[0..1].  Statuses
of platform, TDX module and QE combine conservatively (:func:`combine_statuses`).

Problems raise :class:`~cctrain.errors.EvidenceVerificationError` with one
message; the verifier collects them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cctrain.attestation.dcap.pck import PckExtensions
from cctrain.errors import EvidenceVerificationError

UP_TO_DATE = "UpToDate"
SW_HARDENING_NEEDED = "SWHardeningNeeded"
CONFIGURATION_NEEDED = "ConfigurationNeeded"
CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE = "OutOfDate"
OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
REVOKED = "Revoked"

TCB_STATUSES = frozenset(
    {
        UP_TO_DATE,
        SW_HARDENING_NEEDED,
        CONFIGURATION_NEEDED,
        CONFIGURATION_AND_SW_HARDENING_NEEDED,
        OUT_OF_DATE,
        OUT_OF_DATE_CONFIGURATION_NEEDED,
        REVOKED,
    }
)


@dataclass(frozen=True)
class TcbMatch:
    status: str
    advisories: tuple[str, ...] = ()
    tcb_date: str | None = None


def _fail(message: str) -> EvidenceVerificationError:
    return EvidenceVerificationError([message])


def _status(level: Mapping[str, Any], what: str) -> str:
    status = level.get("tcbStatus")
    if status not in TCB_STATUSES:
        raise _fail(f"{what}: unknown tcbStatus {status!r}")
    return str(status)


def _advisories(level: Mapping[str, Any]) -> tuple[str, ...]:
    ids = level.get("advisoryIDs") or ()
    return tuple(str(a) for a in ids)


def _svns(tcb: Mapping[str, Any], key: str, v2_prefix: str) -> list[int]:
    """16 component SVNs of a TCB level: v3 ``{key: [{svn}]}`` or v2 ``{prefix01svn: n}``."""
    if key in tcb:
        comps = tcb[key]
        if not isinstance(comps, list) or len(comps) != 16:
            raise _fail(f"TCB info: {key} must list 16 components")
        return [int(c["svn"]) for c in comps]
    return [int(tcb[f"{v2_prefix}{i:02d}svn"]) for i in range(1, 17)]


def match_platform_tcb(
    tcb_info: Mapping[str, Any], pck: PckExtensions, tee_tcb_svn: bytes | None
) -> TcbMatch:
    """Status of the first TCB level the platform meets, or an error when none matches."""
    levels = tcb_info.get("tcbLevels")
    if not isinstance(levels, list) or not levels:
        raise _fail("TCB info has no tcbLevels")
    tdx = tee_tcb_svn is not None
    # With a TDX module major version, TEE_TCB_SVN[0..1] are rated by the module identity.
    tdx_start = 2 if tdx and tee_tcb_svn is not None and tee_tcb_svn[1] > 0 else 0
    try:
        for level in levels:
            tcb = level["tcb"]
            sgx = _svns(tcb, "sgxtcbcomponents", "sgxtcbcomp")
            if any(p < want for p, want in zip(pck.tcb_components, sgx, strict=True)):
                continue
            if pck.pce_svn < int(tcb["pcesvn"]):
                continue
            if tee_tcb_svn is not None:
                want_tdx = _svns(tcb, "tdxtcbcomponents", "tdxtcbcomp")
                if any(tee_tcb_svn[i] < want_tdx[i] for i in range(tdx_start, 16)):
                    continue
            return TcbMatch(
                status=_status(level, "TCB info"),
                advisories=_advisories(level),
                tcb_date=str(level.get("tcbDate")) if level.get("tcbDate") else None,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"TCB info: malformed TCB level ({exc!r})") from None
    tee = f", TEE_TCB_SVN {tee_tcb_svn.hex()}" if tee_tcb_svn is not None else ""
    raise _fail(
        "TCB level not supported: no matching TCB level in TCB info for PCK components "
        f"{list(pck.tcb_components)}, PCESVN {pck.pce_svn}{tee}"
    )


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise _fail(f"{what} is not hex") from None


def _masked_equal(got: bytes, want: bytes, mask: bytes) -> bool:
    if not (len(got) == len(want) == len(mask)):
        return False
    return all((g & m) == (w & m) for g, w, m in zip(got, want, mask, strict=True))


def match_tdx_module(
    tcb_info: Mapping[str, Any],
    *,
    tee_tcb_svn: bytes,
    mr_signer_seam: bytes,
    seam_attributes: bytes,
) -> TcbMatch | None:
    """Check the TDX module signer/attributes; rate a versioned module by its identity.

    Returns None for a module without major version (TEE_TCB_SVN[1] == 0): it is
    rated with the platform's TCB level.
    """
    major, isv_svn = tee_tcb_svn[1], tee_tcb_svn[0]
    if major == 0:
        module = tcb_info.get("tdxModule")
        if not isinstance(module, Mapping):
            raise _fail("TCB info lacks tdxModule")
        _check_module_identity(module, "tdxModule", mr_signer_seam, seam_attributes)
        return None
    ident_id = f"TDX_{major:02X}"
    for ident in tcb_info.get("tdxModuleIdentities") or ():
        if str(ident.get("id", "")).upper() != ident_id:
            continue
        _check_module_identity(ident, ident_id, mr_signer_seam, seam_attributes)
        for level in ident.get("tcbLevels") or ():
            try:
                want = int(level["tcb"]["isvsvn"])
            except (KeyError, TypeError, ValueError):
                raise _fail(f"TCB info: malformed {ident_id} TCB level") from None
            if isv_svn >= want:
                return TcbMatch(
                    status=_status(level, f"TDX module {ident_id}"),
                    advisories=_advisories(level),
                    tcb_date=str(level.get("tcbDate")) if level.get("tcbDate") else None,
                )
        raise _fail(f"TDX module {ident_id}: ISVSVN {isv_svn} is below every TCB level")
    raise _fail(f"TDX module identity {ident_id} is not in the TCB info")


def _check_module_identity(
    ident: Mapping[str, Any], what: str, mr_signer_seam: bytes, seam_attributes: bytes
) -> None:
    if _hex(ident.get("mrsigner", ""), f"{what} mrsigner") != mr_signer_seam:
        raise _fail(f"{what}: MRSIGNERSEAM {mr_signer_seam.hex()} is not {ident.get('mrsigner')}")
    want = _hex(ident.get("attributes", ""), f"{what} attributes")
    mask = _hex(ident.get("attributesMask", ""), f"{what} attributesMask")
    if not _masked_equal(seam_attributes, want, mask):
        raise _fail(f"{what}: SEAMATTRIBUTES {seam_attributes.hex()} do not match under the mask")


def match_qe_identity(
    identity: Mapping[str, Any],
    *,
    mr_signer: bytes,
    isv_prod_id: int,
    misc_select: int,
    attributes: bytes,
    isv_svn: int,
) -> TcbMatch:
    """Check the QE report against the QE identity and rate its ISVSVN."""
    problems: list[str] = []
    want_signer = _hex(identity.get("mrsigner", ""), "QE identity mrsigner")
    if want_signer != mr_signer:
        problems.append(f"QE MRSIGNER {mr_signer.hex()} is not {want_signer.hex()}")
    if identity.get("isvprodid") != isv_prod_id:
        problems.append(f"QE ISVPRODID {isv_prod_id} is not {identity.get('isvprodid')}")
    misc = _hex(identity.get("miscselect", ""), "QE identity miscselect")
    misc_mask = _hex(identity.get("miscselectMask", ""), "QE identity miscselectMask")
    if not _masked_equal(misc_select.to_bytes(4, "big"), misc, misc_mask):
        problems.append(f"QE MISCSELECT {misc_select:08x} does not match under the mask")
    attr = _hex(identity.get("attributes", ""), "QE identity attributes")
    attr_mask = _hex(identity.get("attributesMask", ""), "QE identity attributesMask")
    if not _masked_equal(attributes, attr, attr_mask):
        problems.append(f"QE ATTRIBUTES {attributes.hex()} do not match under the mask")
    if problems:
        raise EvidenceVerificationError(problems)
    for level in identity.get("tcbLevels") or ():
        try:
            want = int(level["tcb"]["isvsvn"])
        except (KeyError, TypeError, ValueError):
            raise _fail("QE identity: malformed TCB level") from None
        if isv_svn >= want:
            return TcbMatch(
                status=_status(level, "QE identity"),
                advisories=_advisories(level),
                tcb_date=str(level.get("tcbDate")) if level.get("tcbDate") else None,
            )
    raise _fail(f"QE ISVSVN {isv_svn} is below every QE identity TCB level")


def combine_statuses(statuses: Sequence[str]) -> str:
    """The most cautious status implied by all of ``statuses`` together.

    An out-of-date QE or TDX module makes the platform out of date; a needed
    configuration or SW hardening anywhere stays visible in the result.
    """
    if REVOKED in statuses:
        return REVOKED
    outdated = any(s in (OUT_OF_DATE, OUT_OF_DATE_CONFIGURATION_NEEDED) for s in statuses)
    config = any(
        s
        in (
            CONFIGURATION_NEEDED,
            CONFIGURATION_AND_SW_HARDENING_NEEDED,
            OUT_OF_DATE_CONFIGURATION_NEEDED,
        )
        for s in statuses
    )
    hardening = any(
        s in (SW_HARDENING_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED) for s in statuses
    )
    if outdated:
        return OUT_OF_DATE_CONFIGURATION_NEEDED if config else OUT_OF_DATE
    if config:
        return CONFIGURATION_AND_SW_HARDENING_NEEDED if hardening else CONFIGURATION_NEEDED
    return SW_HARDENING_NEEDED if hardening else UP_TO_DATE
