"""Helpers shared by the hardware evidence providers.

Kept apart so that every provider checks report data, derives sealing keys and
describes OS errors the same way; none of this touches a device.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cctrain.attestation.base import Evidence
from cctrain.errors import AttestationError

#: Every platform carries exactly 64 bytes of caller-chosen data in its report.
REPORT_DATA_LEN = 64

#: Domain tag for sealing keys: a hardware key is never used directly, only
#: through HKDF with this tag, so cctrain's keys cannot collide with other uses
#: of the same hardware key (e.g. Gramine's encrypted-files mount).
SEALING_KEY_INFO = b"cctrain/sealing-key/v1\x00"

#: Why TDX has no ``sealing_key``; shared by every TDX code path.
TDX_NO_SEALING_KEY = (
    "TDX has no hardware sealing key: a trust domain cannot derive a key bound to its "
    "measurement (there is no TDX equivalent of SGX EGETKEY or SEV-SNP MSG_KEY_REQ). "
    "Keep enclave state on TDX under a consortium-held state key (policy: [state] key = "
    '"consortium"); a key released by an attested key-release service (a KBS/KMS that '
    "checks this TD's quote) is not supported"
)


#: Why an Arm CCA realm has no ``sealing_key``.
CCA_NO_SEALING_KEY = (
    "An Arm CCA realm has no hardware sealing key: RMM 1.0 offers a realm no key derived "
    "from its measurement (RSI has attestation tokens, not sealing). Keep enclave state on "
    'CCA under a consortium-held state key (policy: [state] key = "consortium")'
)


def check_report_data(report_data: bytes) -> bytes:
    """Return ``report_data`` as bytes if it is exactly 64 bytes; otherwise refuse.

    Padding or truncating silently would bind evidence to something other than
    what the caller hashed, so a wrong length is an error.
    """
    if not isinstance(report_data, (bytes, bytearray, memoryview)):
        raise AttestationError(f"report_data must be bytes, got {type(report_data).__name__}")
    data = bytes(report_data)
    if len(data) != REPORT_DATA_LEN:
        raise AttestationError(f"report_data must be exactly 64 bytes, got {len(data)}")
    return data


def derive_sealing_key(hardware_key: bytes, *, platform: str, label: bytes) -> bytes:
    """A 32-byte key for ``label`` from a hardware-bound key, by HKDF-SHA256.

    The platform and label are length-prefixed in ``info`` so distinct
    (platform, label) pairs can never produce the same input.
    """
    if not isinstance(label, (bytes, bytearray)):
        raise AttestationError(f"sealing key label must be bytes, got {type(label).__name__}")
    p = platform.encode("ascii")
    info = (
        SEALING_KEY_INFO
        + struct.pack(">H", len(p))
        + p
        + struct.pack(">I", len(label))
        + bytes(label)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(hardware_key)


def describe_oserror(exc: OSError) -> str:
    """``"EIO (Input/output error)"``: the errno name first, for searchable logs."""
    code = exc.errno
    if code is None:
        return str(exc)
    name = errno.errorcode.get(code, f"errno {code}")
    return f"{name} ({os.strerror(code)})"


# Offsets of the 64-byte report_data field in each platform's evidence, from the
# public specifications (checked against the real vectors in ../shared):
#   SEV-SNP ATTESTATION_REPORT (SNP ABI spec, Table 22): REPORT_DATA at 0x50.
#   SGX quote v3: 48-byte header, then the 384-byte report body with REPORT_DATA
#     at body offset 320 -> 368.
#   TDX quote v4: 48-byte header, TD report body with REPORTDATA at 520 -> 568.
#   TDX quote v5: 48-byte header, u16 body type, u32 body size, body -> 574.
#   TDREPORT (TDX module spec, REPORTMACSTRUCT): REPORTDATA at 128.
SNP_REPORT_DATA_OFFSET = 0x50
SGX_QUOTE_V3_REPORT_DATA_OFFSET = 368
TDX_QUOTE_V4_REPORT_DATA_OFFSET = 568
TDX_QUOTE_V5_REPORT_DATA_OFFSET = 574
TDREPORT_REPORT_DATA_OFFSET = 128
_QUOTE_REPORT_DATA_OFFSETS: dict[str, dict[int, int]] = {
    "sgx": {3: SGX_QUOTE_V3_REPORT_DATA_OFFSET},
    "tdx": {4: TDX_QUOTE_V4_REPORT_DATA_OFFSET, 5: TDX_QUOTE_V5_REPORT_DATA_OFFSET},
}


def report_data_in(platform: str, blob: bytes) -> bytes:
    """The report_data field of evidence ``blob`` from ``platform``.

    Used only to check that the platform echoed what we asked for (catching a
    concurrent writer or a stale answer); full parsing happens in the verifier.
    """
    if platform == "sev-snp":
        offset = SNP_REPORT_DATA_OFFSET
    elif platform in ("tdx", "sgx"):
        if len(blob) < 2:
            raise AttestationError(f"{platform} quote too short ({len(blob)} bytes)")
        (version,) = struct.unpack_from("<H", blob, 0)
        wanted = _QUOTE_REPORT_DATA_OFFSETS[platform]
        if version not in wanted:
            known = ", ".join(str(v) for v in sorted(wanted))
            raise AttestationError(
                f"{platform} quote has version {version}; this provider understands {known}"
            )
        offset = wanted[version]
    elif platform == "tdreport":
        offset = TDREPORT_REPORT_DATA_OFFSET
    elif platform == "arm-cca":
        # The realm challenge inside the (unverified) token; the verifier checks it for real.
        from cctrain.attestation.arm_cca.parse import parse as parse_cca

        return parse_cca(blob).realm.challenge
    else:
        raise AttestationError(f"no report_data layout known for platform {platform!r}")
    end = offset + REPORT_DATA_LEN
    if len(blob) < end:
        raise AttestationError(
            f"{platform} evidence too short: {len(blob)} bytes, report_data ends at {end}"
        )
    return blob[offset:end]


def check_echo(platform: str, blob: bytes, report_data: bytes) -> None:
    """Refuse evidence whose report_data is not the one we wrote."""
    got = report_data_in(platform, blob)
    if got != report_data:
        raise AttestationError(
            f"{platform} evidence carries report_data {got[:8].hex()}... but "
            f"{report_data[:8].hex()}... was requested: another writer raced this request "
            "or the interface returned a stale report"
        )


# ---------------------------------------------------------------------------
# ioctl numbers: asm-generic/ioctl.h, the encoding x86-64 uses.
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE, _IOC_READ = 1, 2


def iowr(ioc_type: str, nr: int, size: int) -> int:
    """``_IOWR(type, nr, size)``: the request number of a read-write ioctl."""
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        ((_IOC_READ | _IOC_WRITE) << _IOC_DIRSHIFT)
        | (ord(ioc_type) << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


#: ``ioctl(fd, request, arg)``; ``arg`` is mutated in place, as the kernel does.
IoctlFn = Callable[[int, int, Any], Any]


def system_ioctl(fd: int, request: int, arg: Any) -> Any:
    """The real ioctl(2); ``arg`` is a ctypes structure the kernel reads and writes."""
    return fcntl.ioctl(fd, request, arg, True)


#: report_data of the report an enclave asks for to learn its own launch measurement.
OWN_MEASUREMENT_PROBE = hashlib.sha512(b"cctrain/own-measurement/v1").digest()


def measurement_of(evidence: Evidence) -> bytes:
    """The launch measurement field of a report (parsed, not verified: the platform just
    produced it for this very enclave)."""
    if evidence.platform == "simulated":
        from cctrain.attestation.simulated import parse_report

        return parse_report(evidence.report).measurement
    if evidence.platform == "sev-snp":
        from cctrain.attestation.sev_snp.parse import parse_report as parse_snp

        return parse_snp(evidence.report).measurement
    if evidence.platform in ("tdx", "sgx"):
        from cctrain.attestation.dcap.parse import EnclaveReportBody, parse_quote

        body = parse_quote(evidence.report, tee=evidence.platform).body
        return body.mr_enclave if isinstance(body, EnclaveReportBody) else body.mr_td
    if evidence.platform == "arm-cca":
        from cctrain.attestation.arm_cca.parse import parse as parse_cca

        return parse_cca(evidence.report).realm.rim
    if evidence.platform == "aws-nitro":
        from cctrain.attestation.aws_nitro.parse import parse_document

        return parse_document(evidence.report).pcrs[0]
    raise AttestationError(f"no measurement field known for platform {evidence.platform!r}")


def own_measurement(provider: Any) -> bytes:
    """This enclave's launch measurement, from a report its platform produces for it."""
    return measurement_of(provider.get_evidence(OWN_MEASUREMENT_PROBE))
