"""Verify Azure vTPM evidence: the SNP report, the runtime data, then the TPM quote.

The chain of trust: AMD ARK → ASK → VCEK signs the SNP report (checked by
:func:`cctrain.attestation.sev_snp.verify`, the same code as the ``sev-snp``
platform); its report_data is the hash of the HCL runtime data (checked there
too), which carries the vTPM attestation key HCLAkPub; HCLAkPub signs the
TPM quote (RSASSA-PKCS1-v1_5 / SHA-256), whose pcrDigest covers the PCR values
the evidence carries and whose extraData is the verifier's nonce.

Every check runs and every failure is listed in one
:class:`~cctrain.errors.EvidenceVerificationError`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cctrain.attestation import sev_snp
from cctrain.attestation.azure_vtpm.parse import AzureVtpmEvidence, rsa_from_jwk
from cctrain.attestation.azure_vtpm.tpm import (
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    TPM_HASH_ALGS,
    TPM_SIG_ALGS,
    alg_name,
)
from cctrain.attestation.base import CollateralGetter, VerifiedClaims
from cctrain.errors import EvidenceParseError, EvidenceVerificationError

PLATFORM = "azure-snp-vtpm"
#: cctrain's report_data binding is 64 bytes; on Azure it travels in extraData.
REPORT_DATA_SIZE = 64


def _check_signature(ev: AzureVtpmEvidence, errors: list[str]) -> None:
    sig = ev.signature
    ok = True
    if sig.sig_alg != TPM_ALG_RSASSA:
        errors.append(
            f"TPM quote signature: sigAlg is {alg_name(sig.sig_alg, TPM_SIG_ALGS)}, want "
            f"TPM_ALG_RSASSA {alg_name(TPM_ALG_RSASSA, TPM_SIG_ALGS)}"
        )
        ok = False
    if sig.hash_alg != TPM_ALG_SHA256:
        errors.append(
            f"TPM quote signature: hashAlg is {alg_name(sig.hash_alg)}, want "
            f"TPM_ALG_SHA256 {alg_name(TPM_ALG_SHA256)}"
        )
        ok = False
    if not ok:
        return
    try:
        ev.ak_pub.verify(sig.signature, ev.quote.raw, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        errors.append(
            "TPM quote signature does not verify with HCLAkPub (the attestation key in "
            "the HCL runtime data)"
        )


def _check_pcrs(ev: AzureVtpmEvidence, errors: list[str]) -> dict[int, str]:
    """pcrDigest == SHA-256(selected PCR values in selection order); the verified PCRs."""
    quote = ev.quote
    selected = quote.selected()
    banks = sorted({alg for alg, _ in selected if alg != TPM_ALG_SHA256})
    if banks:
        errors.append(
            f"TPM quote selects PCR banks {', '.join(alg_name(a) for a in banks)}; the "
            "evidence carries SHA-256 PCR values only"
        )
        return {}
    if len(selected) != len(ev.pcr_values):
        errors.append(
            f"TPM quote selects {len(selected)} PCRs, the evidence carries "
            f"{len(ev.pcr_values)} PCR values"
        )
        return {}
    if len(quote.pcr_digest) != TPM_HASH_ALGS[TPM_ALG_SHA256][1]:
        errors.append(f"TPM quote pcrDigest is {len(quote.pcr_digest)} bytes, want 32 (SHA-256)")
        return {}
    digest = hashlib.sha256(b"".join(ev.pcr_values)).digest()
    if digest != quote.pcr_digest:
        errors.append(
            f"PCR values do not match the quote: pcrDigest is {quote.pcr_digest.hex()}, "
            f"SHA-256 of the PCR values is {digest.hex()}"
        )
        return {}
    return {index: value.hex() for (_, index), value in zip(selected, ev.pcr_values, strict=True)}


def _spki_sha256(key: rsa.RSAPublicKey) -> str:
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _runtime_claims(ev: AzureVtpmEvidence) -> dict[str, Any]:
    """What the (now verified) runtime data says: key fingerprints, VM configuration."""
    out: dict[str, Any] = {"ak_pub_sha256": _spki_sha256(ev.ak_pub)}
    for k in ev.runtime.get("keys") or ():
        if isinstance(k, Mapping) and k.get("kid") == "HCLEkPub":
            try:
                out["ek_pub_sha256"] = _spki_sha256(rsa_from_jwk(k, "HCLEkPub"))
            except EvidenceParseError:
                pass
            break
    config = ev.runtime.get("vm-configuration")
    if isinstance(config, Mapping):
        out["vm_configuration"] = {
            str(k): v for k, v in config.items() if isinstance(v, (str, bool, int, float))
        }
    user_data = ev.runtime.get("user-data")
    if isinstance(user_data, str):
        out["user_data"] = user_data.lower()
    return out


def verify(
    report: AzureVtpmEvidence,
    *,
    certificates: Sequence[x509.Certificate] = (),
    collateral: Mapping[str, Any] | None = None,
    now: _dt.datetime,
    getter: CollateralGetter | None = None,
) -> VerifiedClaims:
    """Verify parsed Azure vTPM evidence at ``now``; claims, or every failure at once.

    ``certificates`` may carry the VCEK (and AMD intermediates) when the document
    does not; ``collateral`` is unused.
    """
    if not isinstance(report, AzureVtpmEvidence):
        raise EvidenceParseError(
            f"azure-snp-vtpm verify needs parsed evidence, got {type(report).__name__}"
        )
    ev = report
    errors: list[str] = []
    snp: VerifiedClaims | None = None
    try:
        # The SNP signature, AMD chain, TCB, chip and the runtime-data binding.
        snp = sev_snp.verify(
            ev.snp, certificates=certificates, collateral=collateral, now=now, getter=getter
        )
    except EvidenceVerificationError as exc:
        errors.extend(f"SNP: {e}" for e in exc.errors)
    _check_signature(ev, errors)
    pcrs = _check_pcrs(ev, errors)
    if errors or snp is None:
        raise EvidenceVerificationError(errors)

    quote = ev.quote
    snp_extra = {k: v for k, v in snp.extra.items() if k != "runtime_data"}
    snp_extra.update(measurement=snp.measurement, report_data=snp.report_data, chip_id=snp.chip_id)
    extra: dict[str, Any] = {
        "snp": snp_extra,
        "pcrs": pcrs,
        "tpm": {
            "qualified_signer": quote.qualified_signer.hex(),
            "clock": {
                "clock": quote.clock_info.clock,
                "reset_count": quote.clock_info.reset_count,
                "restart_count": quote.clock_info.restart_count,
                "safe": quote.clock_info.safe,
            },
            "firmware_version": quote.firmware_version,
            "pcr_selection": [
                {
                    "hash": TPM_HASH_ALGS.get(s.hash_alg, (f"0x{s.hash_alg:04x}",))[0],
                    "pcrs": list(s.pcrs),
                }  # fmt: skip
                for s in quote.pcr_selection
            ],
            "sig_alg": "rsassa-pkcs1v15-sha256",
        },
        "runtime": _runtime_claims(ev),
        "evidence_format": ev.format,
    }
    nonce = quote.extra_data
    return VerifiedClaims(
        platform=PLATFORM,
        measurement=snp.measurement,
        report_data=nonce if len(nonce) == REPORT_DATA_SIZE else b"",
        debug=snp.debug,
        signer=snp.signer,
        chip_id=snp.chip_id,
        tcb_status=snp.tcb_status,
        advisories=snp.advisories,
        extra=extra,
        nonce=nonce,
    )
