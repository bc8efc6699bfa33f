"""Verify a parsed Nitro attestation document: certificate chain to the pinned AWS root,
then the COSE signature.

What is checked, every failure collected into one EvidenceVerificationError:

* ``cabundle[0]`` is byte for byte the AWS Nitro Enclaves Root-G1 shipped in
  ``cctrain/attestation/roots/aws_nitro_root_g1.pem``, itself pinned here by the SHA-256 of
  its DER (the fingerprint AWS publishes);
* the chain pinned root <- cabundle[1] <- ... <- cabundle[n-1] <- certificate links
  signature by signature (ECDSA-SHA384), every issuer a CA allowed to sign certificates
  (basic constraints, path length, key usage), no unknown critical extension;
* every certificate, the root included, is valid at ``now`` (an argument: a Nitro leaf
  lives about three hours, so a document verifies only near its own ``timestamp``);
* the leaf key is P-384 and may sign; the COSE_Sign1 ES384 signature verifies with it.

Claims (what other modules rely on):

* ``measurement`` = PCR0 (the enclave image file, EIF); ``debug`` = PCR0, PCR1 and PCR2
  all zero, which is what the NSM reports for an enclave started in debug mode;
* ``report_data`` = ``user_data`` when it is exactly 64 bytes: cctrain's enclave puts the
  64-byte binding of DESIGN.md (:func:`cctrain.attestation.binding.report_data_for`)
  there. Any other ``user_data`` (absent, 32 bytes, a TLS SPKI...) gives ``b""``, so the
  report_data check of every policy fails: such a document binds nothing cctrain knows;
* ``nonce`` = the document's ``nonce`` field (None when absent or null);
* ``signer`` = ``"aws-nitro"``; no chip id, no TCB status (AWS publishes none);
* ``extra``: ``pcrs`` (index -> hex), ``module_id``, ``timestamp`` (ms), ``digest``,
  ``public_key``, ``user_data``, ``nonce`` (hex or None), and for a document carried in
  a certificate ``carrier_spki_sha256`` and ``user_data_is_carrier_spki``.

Revocation is not checked: AWS publishes CRLs for the intermediates online only, and this
verifier is offline.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.resources
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from cctrain.attestation.aws_nitro.parse import REPORT_DATA_LEN, NitroDocument
from cctrain.attestation.base import VerifiedClaims
from cctrain.errors import EvidenceParseError, EvidenceVerificationError

PLATFORM = "aws-nitro"
SIGNER = "aws-nitro"
ROOT_FILE = "aws_nitro_root_g1.pem"
#: SHA-256 of the DER of AWS Nitro Enclaves Root-G1, as AWS publishes it with
#: https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip
ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
_KNOWN_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}


class NitroClaims(VerifiedClaims):
    """VerifiedClaims whose JSON ``nonce`` is null when the document has none (a Nitro
    nonce is its own field, never ``report_data``)."""

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["nonce"] = self.nonce.hex() if self.nonce is not None else None
        return out


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@lru_cache(maxsize=1)
def pinned_root() -> x509.Certificate:
    """The AWS Nitro Enclaves Root-G1 shipped with the package, checked against the pin."""
    pem = (importlib.resources.files("cctrain.attestation") / "roots" / ROOT_FILE).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    got = hashlib.sha256(_der(cert)).hexdigest()
    if got != ROOT_G1_SHA256:
        raise EvidenceVerificationError(
            [f"packaged {ROOT_FILE} has fingerprint {got}, not AWS Root-G1's {ROOT_G1_SHA256}"]
        )
    return cert


def _name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
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


def _check_issued_by(child: x509.Certificate, issuer: x509.Certificate, errors: list[str]) -> None:
    if child.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        errors.append(f"certificate {_name(child)!r} is not signed with ECDSA-SHA384")
        return
    problem = _link_problem(_der(child), _der(issuer))
    if problem is not None:
        errors.append(problem)


@lru_cache(maxsize=512)
def _link_problem(child_der: bytes, issuer_der: bytes) -> str | None:
    """Whether ``issuer`` signed ``child`` (None) or why not, by their exact bytes: AWS's
    regional and zonal intermediates recur across documents for days, so a long-running
    verifier checks each link's signature once. Validity at ``now`` is never cached."""
    child = x509.load_der_x509_certificate(child_der)
    issuer = x509.load_der_x509_certificate(issuer_der)
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return f"certificate {_name(child)!r}: signature by {_name(issuer)!r} is invalid"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"certificate {_name(child)!r} is not issued by {_name(issuer)!r}: {exc}"
    return None


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


def _check_leaf(leaf: x509.Certificate, errors: list[str]) -> ec.EllipticCurvePublicKey | None:
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            errors.append(f"leaf certificate {_name(leaf)!r} is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            errors.append(f"leaf certificate {_name(leaf)!r} may not sign (key usage)")
    except x509.ExtensionNotFound:
        pass
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        errors.append(f"leaf certificate key is not ECDSA P-384 ({type(key).__name__})")
        return None
    return key


def verify_chain(doc: NitroDocument, *, now: _dt.datetime, errors: list[str]) -> None:
    """pinned root <- cabundle[1..] <- certificate; append every failure to ``errors``."""
    root = pinned_root()
    if doc.cabundle_der[0] != _der(root):
        errors.append(
            f"cabundle[0] ({_name(doc.cabundle[0])!r}, sha256 "
            f"{hashlib.sha256(doc.cabundle_der[0]).hexdigest()}) is not the pinned AWS Nitro "
            f"Enclaves Root-G1 (sha256 {ROOT_G1_SHA256})"
        )
    # Root first, leaf last: each certificate is issued by the one before it.
    chain = [root, *doc.cabundle[1:], doc.certificate]
    for cert in chain:
        _check_critical(cert, errors)
        _check_validity(cert, now, errors)
    issuers = len(chain) - 1
    for i in range(issuers):
        _check_issued_by(chain[i + 1], chain[i], errors)
        _check_ca(chain[i], issuers - 1 - i, errors)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify(
    doc: NitroDocument,
    *,
    certificates: Sequence[x509.Certificate] = (),
    now: _dt.datetime,
) -> VerifiedClaims:
    """Verify ``doc`` at ``now``; return its claims or raise EvidenceVerificationError."""
    if not isinstance(doc, NitroDocument):
        raise EvidenceParseError("not a parsed Nitro document (use aws_nitro.parse)")
    if now.tzinfo is None:
        raise EvidenceVerificationError(["now must be timezone-aware (UTC)"])
    if certificates:
        raise EvidenceVerificationError(
            ["a Nitro document carries its own certificates; --cert is not used for aws-nitro"]
        )
    errors: list[str] = []
    verify_chain(doc, now=now, errors=errors)
    key = _check_leaf(doc.certificate, errors)
    if key is not None:
        why = doc.sign1.verify(key)
        if why is not None:
            errors.append(f"document signature: {why} with the leaf certificate key")
    if errors:
        raise EvidenceVerificationError(errors)

    zero = bytes(len(doc.pcrs[0]))
    debug = all(doc.pcrs[i] == zero for i in (0, 1, 2))
    user_data = doc.user_data
    report_data = user_data if user_data is not None and len(user_data) == REPORT_DATA_LEN else b""
    extra: dict[str, Any] = {
        "pcrs": {i: v.hex() for i, v in doc.pcrs.items()},
        "module_id": doc.module_id,
        "timestamp": doc.timestamp,
        "digest": doc.digest,
        "public_key": doc.public_key.hex() if doc.public_key is not None else None,
        "user_data": user_data.hex() if user_data is not None else None,
        "nonce": doc.nonce.hex() if doc.nonce is not None else None,
    }
    if doc.carrier is not None:
        spki = _spki(doc.carrier)
        extra["carrier_spki_sha256"] = hashlib.sha256(spki).hexdigest()
        extra["user_data_is_carrier_spki"] = user_data == spki
    return NitroClaims(
        platform=PLATFORM,
        measurement=doc.pcrs[0],
        report_data=report_data,
        debug=debug,
        signer=SIGNER,
        extra=extra,
        nonce=doc.nonce,
    )
