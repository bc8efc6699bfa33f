"""AWS Nitro Enclaves evidence through the Nitro Secure Module, ``/dev/nsm``.

The NSM answers one ioctl that carries a CBOR request and returns a CBOR response. The
structure and request number mirror the kernel's ``include/uapi/linux/nsm.h`` (Linux
>= 6.8; the older out-of-tree driver's ``struct nsm_message`` of two ``struct iovec`` has
the same 32-byte layout on 64-bit Linux, hence the same request number)::

    struct nsm_iovec { __u64 addr; __u64 len; };
    struct nsm_raw   { struct nsm_iovec request; struct nsm_iovec response; };
    #define NSM_IOCTL_RAW _IOWR(0x0A, 0x0, struct nsm_raw)

``response.len`` is in/out: the caller gives the buffer size (at most
``NSM_RESPONSE_MAX_SIZE``), the kernel writes back the response length. The raw ioctl
needs ``CAP_SYS_ADMIN``. The messages are those of AWS's ``aws-nitro-enclaves-nsm-api``
(serde's externally tagged enums)::

    request:  {"Attestation": {"user_data": bstr, "nonce": null, "public_key": null}}
    response: {"Attestation": {"document": bstr}}  or  {"Error": "<ErrorCode>"}

cctrain's 64-byte report_data travels as ``user_data`` (the verifier takes a 64-byte
``user_data`` as report_data, see ``cctrain.attestation.aws_nitro.verify``); the
verifier's nonce is already inside report_data, so the NSM ``nonce`` stays null.

Nitro has no sealing key: the NSM derives no key bound to the enclave's measurement
(AWS's pattern is KMS with an attestation-conditioned key policy, which cctrain does not
use). ``sealing_key`` raises :class:`~cctrain.errors.NoSealingKeyError`; state persists
only under a consortium-held state key (``[state] key = "consortium"``).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from pathlib import Path

import cbor2

from cctrain.attestation.base import Evidence
from cctrain.attestation.cose import loads_strict
from cctrain.errors import (
    AttestationError,
    EvidenceParseError,
    NoEvidenceProviderError,
    NoSealingKeyError,
)

from ._common import IoctlFn, check_report_data, describe_oserror, iowr, system_ioctl

DEVICE = "dev/nsm"

NSM_MAGIC = 0x0A
NSM_REQUEST_MAX_SIZE = 0x1000
NSM_RESPONSE_MAX_SIZE = 0x3000


class NsmIovec(ctypes.Structure):
    """struct nsm_iovec: addr u64, len u64 (16 bytes)."""

    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class NsmRaw(ctypes.Structure):
    """struct nsm_raw (32 bytes): the request and response buffers, by address."""

    _fields_ = [("request", NsmIovec), ("response", NsmIovec)]


NSM_IOCTL_RAW = iowr(chr(NSM_MAGIC), 0x0, ctypes.sizeof(NsmRaw))
#: The out-of-tree driver's name for the same request.
NSM_IOCTL_REQUEST = NSM_IOCTL_RAW

NITRO_NO_SEALING_KEY = (
    "AWS Nitro Enclaves have no sealing key: the Nitro Secure Module derives no key bound "
    "to the enclave's measurement (PCRs). Keep enclave state on Nitro under a "
    'consortium-held state key (policy: [state] key = "consortium")'
)


def encode_attestation_request(user_data: bytes) -> bytes:
    """The CBOR NSM request for an attestation document over ``user_data``."""
    request = {"Attestation": {"user_data": bytes(user_data), "nonce": None, "public_key": None}}
    data = bytes(cbor2.dumps(request))
    if len(data) > NSM_REQUEST_MAX_SIZE:  # pragma: no cover - 64 bytes of user_data
        raise AttestationError(f"NSM request is {len(data)} bytes, over {NSM_REQUEST_MAX_SIZE}")
    return data


def parse_attestation_response(data: bytes) -> bytes:
    """The attestation document inside an NSM response; refuse an error or anything else."""
    try:
        response = loads_strict(data, "NSM response")
    except EvidenceParseError as exc:
        raise AttestationError(str(exc)) from None
    if not isinstance(response, Mapping) or len(response) != 1:
        raise AttestationError("NSM response is not a one-entry map")
    (kind, body), *_ = response.items()
    if kind == "Error":
        raise AttestationError(f"the NSM refused the attestation request: {body!r}")
    if kind != "Attestation":
        raise AttestationError(f"NSM answered {kind!r} to an Attestation request")
    if not isinstance(body, Mapping) or set(body) != {"document"}:
        raise AttestationError("NSM Attestation response is not {'document': bstr}")
    document = body["document"]
    if not isinstance(document, bytes) or not document:
        raise AttestationError("NSM Attestation response: document is not a byte string")
    return document


def check_user_data(document: bytes, report_data: bytes) -> None:
    """Refuse a document whose user_data is not the report_data we asked for."""
    from cctrain.attestation.aws_nitro.parse import parse_document

    try:
        got = parse_document(document).user_data
    except EvidenceParseError as exc:
        raise AttestationError(f"the NSM returned an unparseable document: {exc}") from None
    if got != report_data:
        shown = got[:8].hex() if got is not None else "nothing"
        raise AttestationError(
            f"aws-nitro document carries user_data {shown}... but {report_data[:8].hex()}... "
            "was requested"
        )


def _open_device(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoEvidenceProviderError(
            f"{path} not found: not inside an AWS Nitro Enclave, or the nsm driver is not "
            "loaded (modprobe nsm)"
        ) from None
    except PermissionError:
        raise AttestationError(
            f"permission denied opening {path}: the NSM ioctl needs root (CAP_SYS_ADMIN)"
        ) from None
    except OSError as exc:
        raise AttestationError(f"cannot open {path}: {describe_oserror(exc)}") from None


class NitroNsmProvider:
    """Nitro attestation documents via NSM_IOCTL_RAW; no sealing key."""

    platform = "aws-nitro"

    def __init__(self, root: Path = Path("/"), *, ioctl: IoctlFn | None = None) -> None:
        self.device = Path(root) / DEVICE
        self._ioctl = ioctl if ioctl is not None else system_ioctl

    def available(self) -> bool:
        return self.device.exists()

    def request(self, message: bytes) -> bytes:
        """One raw NSM round trip: CBOR request in, CBOR response out."""
        req = (ctypes.c_uint8 * len(message)).from_buffer_copy(message)
        resp = (ctypes.c_uint8 * NSM_RESPONSE_MAX_SIZE)()
        arg = NsmRaw()
        arg.request.addr = ctypes.addressof(req)
        arg.request.len = len(message)
        arg.response.addr = ctypes.addressof(resp)
        arg.response.len = NSM_RESPONSE_MAX_SIZE
        fd = _open_device(self.device)
        try:
            self._ioctl(fd, NSM_IOCTL_RAW, arg)
        except OSError as exc:
            raise AttestationError(
                f"NSM_IOCTL_RAW on {self.device} failed: {describe_oserror(exc)}"
            ) from None
        finally:
            os.close(fd)
        if not 0 < arg.response.len <= NSM_RESPONSE_MAX_SIZE:
            raise AttestationError(
                f"NSM response length {arg.response.len} is outside 1..{NSM_RESPONSE_MAX_SIZE}"
            )
        return bytes(resp[: arg.response.len])

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        document = parse_attestation_response(self.request(encode_attestation_request(data)))
        check_user_data(document, data)
        return Evidence(platform=self.platform, report=document)

    def sealing_key(self, label: bytes) -> bytes:
        raise NoSealingKeyError(NITRO_NO_SEALING_KEY)


__all__ = [
    "NITRO_NO_SEALING_KEY",
    "NSM_IOCTL_RAW",
    "NSM_IOCTL_REQUEST",
    "NitroNsmProvider",
    "NsmIovec",
    "NsmRaw",
    "encode_attestation_request",
    "parse_attestation_response",
]
