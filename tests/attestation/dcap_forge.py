"""Test helpers for DCAP: re-serialise quotes and re-sign them under a TEST PKI.

Real Intel keys cannot sign a CRL or a changed TCB info, so the checks that
need such objects (PCK revocation, FMSPC mismatch with a validly signed TCB
info) run against a real quote whose PCK chain, QE report signature and quote
signature are re-made by a throw-away test root.  The verifier under test runs
unchanged; only its trust anchors are the test root (``TrustAnchors``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cctrain.attestation.dcap.parse import Quote
from cctrain.attestation.dcap.pck import SGX_EXTENSION_OID
from cctrain.attestation.dcap.verify import TrustAnchors

NOT_BEFORE = dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc)
NOT_AFTER = dt.datetime(2045, 1, 1, tzinfo=dt.timezone.utc)


def serialize_quote(
    quote: Quote,
    *,
    header: bytes | None = None,
    body: bytes | None = None,
    signature: bytes | None = None,
    attestation_key: bytes | None = None,
    qe_report: bytes | None = None,
    qe_report_signature: bytes | None = None,
    qe_auth_data: bytes | None = None,
    pck_chain_pem: bytes | None = None,
    outer_cert_type: int = 6,
    inner_cert_type: int = 5,
) -> bytes:
    """Bytes of ``quote`` with any part replaced, lengths recomputed (no trailing padding)."""
    cert = quote.certification
    header = quote.header.raw if header is None else header
    body = quote.body.raw if body is None else body
    signature = quote.signature if signature is None else signature
    att_key = quote.attestation_key if attestation_key is None else attestation_key
    qe_report = cert.qe_report.raw if qe_report is None else qe_report
    qe_sig = cert.qe_report_signature if qe_report_signature is None else qe_report_signature
    auth = cert.qe_auth_data if qe_auth_data is None else qe_auth_data
    pem = cert.pck_chain_pem if pck_chain_pem is None else pck_chain_pem
    qe_part = qe_report + qe_sig + struct.pack("<H", len(auth)) + auth
    chain_part = struct.pack("<HI", inner_cert_type, len(pem)) + pem
    if quote.version == 3:
        sig_data = signature + att_key + qe_part + chain_part
    else:
        inner = qe_part + chain_part
        sig_data = signature + att_key + struct.pack("<HI", outer_cert_type, len(inner)) + inner
    if quote.version == 5:
        signed = header + struct.pack("<HI", quote.body_type, len(body)) + body
    else:
        signed = header + body
    return signed + struct.pack("<I", len(sig_data)) + sig_data


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as Intel encodes it: r || s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cctrain TEST PKI (not Intel)"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    extension: x509.ExtensionType | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        b = b.add_extension(extension, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class ForgePki:
    """A throw-away root, PCK CA and TCB Signing certificate named like Intel's."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_signing: x509.Certificate

    @classmethod
    def create(cls, pck_ca_name: str = "Intel SGX PCK Platform CA") -> ForgePki:
        root_key = ec.generate_private_key(ec.SECP256R1())
        pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        tcb_key = ec.generate_private_key(ec.SECP256R1())
        root = _cert(
            "Intel SGX Root CA", root_key, "Intel SGX Root CA", root_key, ca=True, serial=1
        )
        pck_ca = _cert(pck_ca_name, pck_ca_key, "Intel SGX Root CA", root_key, ca=True, serial=2)
        tcb = _cert(
            "Intel SGX TCB Signing", tcb_key, "Intel SGX Root CA", root_key, ca=False, serial=3
        )
        return cls(root_key, root, pck_ca_key, pck_ca, tcb_key, tcb)

    @property
    def anchors(self) -> TrustAnchors:
        return TrustAnchors(root=self.root, tcb_signing=(self.tcb_signing,))

    def crl(
        self, *, issuer: str, revoked: tuple[int, ...] = (), this: dt.datetime, nxt: dt.datetime
    ) -> str:
        """A CRL (hex DER) by the root or the PCK CA, listing ``revoked`` serials."""
        if issuer == "root":
            name, key = self.root.subject, self.root_key
        else:
            name, key = self.pck_ca.subject, self.pck_ca_key
        b = x509.CertificateRevocationListBuilder().issuer_name(name)
        b = b.last_update(this).next_update(nxt)
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this).build()
            )
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()

    def sign_json(self, text: str) -> str:
        return raw_signature(self.tcb_key, text.encode()).hex()


@dataclass(frozen=True)
class Forged:
    raw: bytes
    pck_leaf: x509.Certificate


def resign_quote(
    quote: Quote, real_leaf: x509.Certificate, pki: ForgePki, *, serial: int = 77
) -> Forged:
    """``quote`` re-certified by ``pki``: new PCK leaf (real SGX extension), QE sig, att key."""
    ext = real_leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(
        "Intel SGX PCK Certificate",
        leaf_key,
        str(pki.pck_ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
        pki.pck_ca_key,
        ca=False,
        serial=serial,
        extension=ext.value,
    )
    att_key = ec.generate_private_key(ec.SECP256R1())
    att_raw = att_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    auth = quote.certification.qe_auth_data
    qe = bytearray(quote.certification.qe_report.raw)
    qe[320:352] = hashlib.sha256(att_raw + auth).digest()
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, pki.pck_ca, pki.root))
    unsigned = serialize_quote(
        quote,
        attestation_key=att_raw,
        qe_report=bytes(qe),
        qe_report_signature=raw_signature(leaf_key, bytes(qe)),
        pck_chain_pem=pem,
    )
    signed_len = len(quote.signed_bytes)
    signature = raw_signature(att_key, unsigned[:signed_len])
    return Forged(
        raw=unsigned[: signed_len + 4] + signature + unsigned[signed_len + 4 + 64 :], pck_leaf=leaf
    )


def resign_collateral(collateral: dict[str, Any], pki: ForgePki, **texts: str) -> dict[str, Any]:
    """Copy of a dcap-qvl collateral bundle with TCB info / QE identity re-signed by ``pki``.

    ``texts`` may replace ``tcb_info`` or ``qe_identity`` text before signing.
    Issuer chains are dropped (the test anchors' TCB Signing cert is used).
    """
    out = {k: v for k, v in collateral.items() if not k.endswith("issuer_chain")}
    for part in ("tcb_info", "qe_identity"):
        text = texts.get(part, collateral[part])
        out[part] = text
        out[f"{part}_signature"] = pki.sign_json(text)
    return out
