"""The simulated TEE platform: the same protocol, a never-trusted root.

With no TEE hardware, cctrain still runs the whole protocol: the enclave
produces evidence in a real, fixed binary format, signed by a per-host
"chip" key that is certified by the **simulated vendor root**.  That root's
private key is derived from a public string, so *anyone* can forge simulated
evidence: it proves nothing.  Production verification refuses it
(:func:`cctrain.attestation.pipeline.verify_evidence` needs
``allow_simulated=True``, which the policy and the caller must both grant) and
every accepted use is logged as a loud warning.

Report layout (all integers little-endian), 232 bytes::

    0x00  8   magic "CCSIMRPT"
    0x08  4   version (1)
    0x0C  4   flags (bit 0: debug)
    0x10  48  measurement (SHA-384 of the enclave code, see ``cctrain measure``)
    0x40  64  report_data
    0x80  32  chip_id (SHA-256 of the chip public key)
    0xA0  8   timestamp (seconds since the epoch)
    0xA8  64  Ed25519 signature by the chip key over bytes 0x00..0xA8
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from cctrain.attestation.base import CollateralGetter, VerifiedClaims, register_platform
from cctrain.errors import EvidenceParseError, EvidenceVerificationError

MAGIC = b"CCSIMRPT"
VERSION = 1
REPORT_SIZE = 232
SIGNED_SIZE = 0xA8
FLAG_DEBUG = 1

_ROOT_SEED_TEXT = b"cctrain simulated vendor root v1 -- THIS KEY IS PUBLIC, NOT A SECRET"


def simulated_root_private_key() -> Ed25519PrivateKey:
    """The simulated vendor root key. Public by construction: never trust it."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(_ROOT_SEED_TEXT).digest())


def simulated_root_public_bytes() -> bytes:
    return simulated_root_private_key().public_key().public_bytes_raw()


def issue_chip_certificate(chip_key: Ed25519PrivateKey, *, now: _dt.datetime) -> x509.Certificate:
    """Certificate for a simulated chip key, signed by the simulated root."""
    root = simulated_root_private_key()
    chip_pub = chip_key.public_key().public_bytes_raw()
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cctrain SIMULATED TEE"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "simulated chip " + chip_pub[:8].hex()),
                ]
            )
        )
        .issuer_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cctrain SIMULATED TEE"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "simulated vendor root (INSECURE)"),
                ]
            )
        )
        .public_key(chip_key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(chip_pub).digest()[:16], "big") >> 1)
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=3650))
        .sign(root, None)
    )


@dataclass(frozen=True)
class SimulatedReport:
    version: int
    flags: int
    measurement: bytes
    report_data: bytes
    chip_id: bytes
    timestamp: int
    signature: bytes
    signed_bytes: bytes


def build_report(
    *,
    chip_key: Ed25519PrivateKey,
    measurement: bytes,
    report_data: bytes,
    debug: bool,
    timestamp: int,
) -> bytes:
    if len(measurement) != 48 or len(report_data) != 64:
        raise ValueError("measurement must be 48 bytes and report_data 64 bytes")
    chip_id = hashlib.sha256(chip_key.public_key().public_bytes_raw()).digest()
    body = (
        MAGIC
        + struct.pack("<II", VERSION, FLAG_DEBUG if debug else 0)
        + measurement
        + report_data
        + chip_id
        + struct.pack("<Q", timestamp)
    )
    assert len(body) == SIGNED_SIZE
    return body + chip_key.sign(body)


def parse_report(raw: bytes) -> SimulatedReport:
    if len(raw) != REPORT_SIZE:
        raise EvidenceParseError(
            f"simulated report: length is {len(raw)} bytes, want exactly {REPORT_SIZE}"
        )
    if raw[:8] != MAGIC:
        raise EvidenceParseError("simulated report: bad magic (not a cctrain simulated report)")
    version, flags = struct.unpack_from("<II", raw, 8)
    if version != VERSION:
        raise EvidenceParseError(f"simulated report: version {version} unsupported, want {VERSION}")
    if flags & ~FLAG_DEBUG:
        raise EvidenceParseError(f"simulated report: unknown flag bits 0x{flags:x}")
    (timestamp,) = struct.unpack_from("<Q", raw, 0xA0)
    return SimulatedReport(
        version=version,
        flags=flags,
        measurement=raw[0x10:0x40],
        report_data=raw[0x40:0x80],
        chip_id=raw[0x80:0xA0],
        timestamp=timestamp,
        signature=raw[SIGNED_SIZE:],
        signed_bytes=raw[:SIGNED_SIZE],
    )


class _SimulatedPlatform:
    name = "simulated"
    reference_keys: frozenset[str] = frozenset()

    def sniff(self, raw: bytes) -> bool:
        return raw[:8] == MAGIC

    def parse(self, raw: bytes) -> SimulatedReport:
        return parse_report(raw)

    def verify(
        self,
        report: SimulatedReport,
        *,
        certificates: Sequence[x509.Certificate],
        collateral: Mapping[str, Any] | None,
        now: _dt.datetime,
        getter: CollateralGetter | None,
    ) -> VerifiedClaims:
        del collateral, getter
        errors: list[str] = []
        if len(certificates) != 1:
            raise EvidenceVerificationError(
                [f"simulated evidence needs exactly one chip certificate, got {len(certificates)}"]
            )
        chip_cert = certificates[0]
        root_pub = Ed25519PublicKey.from_public_bytes(simulated_root_public_bytes())
        try:
            root_pub.verify(chip_cert.signature, chip_cert.tbs_certificate_bytes)
        except InvalidSignature:
            errors.append(
                "chip certificate is not signed by the simulated vendor root (untrusted root)"
            )
        if not (chip_cert.not_valid_before_utc <= now <= chip_cert.not_valid_after_utc):
            errors.append(
                f"chip certificate not valid at {now.isoformat()} "
                f"(valid {chip_cert.not_valid_before_utc.isoformat()} .. "
                f"{chip_cert.not_valid_after_utc.isoformat()})"
            )
        chip_key = chip_cert.public_key()
        if not isinstance(chip_key, Ed25519PublicKey):
            errors.append("chip certificate key is not Ed25519")
        else:
            chip_raw = chip_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            if hashlib.sha256(chip_raw).digest() != report.chip_id:
                errors.append("report chip_id does not match the chip certificate")
            try:
                chip_key.verify(report.signature, report.signed_bytes)
            except InvalidSignature:
                errors.append("report signature does not verify with the chip key")
        if errors:
            raise EvidenceVerificationError(errors)
        return VerifiedClaims(
            platform=self.name,
            measurement=report.measurement,
            report_data=report.report_data,
            debug=bool(report.flags & FLAG_DEBUG),
            signer="simulated",
            chip_id=report.chip_id,
            extra={"timestamp": report.timestamp, "version": report.version},
        )

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        return []


PLATFORM = register_platform(_SimulatedPlatform())
