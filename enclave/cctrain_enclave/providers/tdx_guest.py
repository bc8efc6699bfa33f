"""Intel TDX: quotes through configfs-tsm, TDREPORTs through ``/dev/tdx_guest``.

A TDREPORT (``TDX_CMD_GET_REPORT0``) is MAC'd with a key only this CPU can
check; it is not remote evidence.  The quote a verifier needs is made by the
host's quoting enclave, and current kernels (>= 6.7) fetch it through
configfs-tsm: that is where :meth:`TdxGuestProvider.get_evidence` goes.  The
out-of-tree ``TDX_CMD_GET_QUOTE`` ioctl was never merged upstream and is not
used.

TDX has no sealing key (see ``_common.TDX_NO_SEALING_KEY``): ``sealing_key`` raises
:class:`~cctrain.errors.NoSealingKeyError`, and state persists only under a consortium-held
state key (``[state] key = "consortium"``).

Structure and ioctl number mirror ``include/uapi/linux/tdx-guest.h``.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from cctrain.attestation.base import Evidence
from cctrain.errors import AttestationError, NoEvidenceProviderError, NoSealingKeyError

from ._common import (
    TDX_NO_SEALING_KEY,
    IoctlFn,
    check_echo,
    check_report_data,
    describe_oserror,
    iowr,
    system_ioctl,
)
from .configfs_tsm import ConfigfsTsmProvider, TsmFilesystem

DEVICE = "dev/tdx_guest"

TDX_REPORTDATA_LEN = 64
TDX_REPORT_LEN = 1024


class TdxReportReq(ctypes.Structure):
    """struct tdx_report_req: reportdata[64] in, tdreport[1024] out (1088 bytes)."""

    _fields_ = [
        ("reportdata", ctypes.c_uint8 * TDX_REPORTDATA_LEN),
        ("tdreport", ctypes.c_uint8 * TDX_REPORT_LEN),
    ]


TDX_CMD_GET_REPORT0 = iowr("T", 1, ctypes.sizeof(TdxReportReq))


def pack_tdreport_request(report_data: bytes) -> TdxReportReq:
    """A tdx_report_req with ``report_data`` and a zeroed output buffer."""
    data = check_report_data(report_data)
    req = TdxReportReq()
    ctypes.memmove(req.reportdata, data, len(data))
    return req


def parse_tdreport_response(req: TdxReportReq, report_data: bytes) -> bytes:
    """The TDREPORT the kernel wrote, checked to carry our report_data."""
    tdreport = bytes(req.tdreport)
    if not tdreport.strip(b"\x00"):
        raise AttestationError("TDX_CMD_GET_REPORT0 returned an all-zero TDREPORT")
    check_echo("tdreport", tdreport, report_data)
    return tdreport


class TdxGuestProvider:
    """TDX evidence: a DCAP quote from configfs-tsm whose provider is ``tdx_guest``."""

    platform = "tdx"

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        fs: TsmFilesystem | None = None,
        ioctl: IoctlFn | None = None,
    ) -> None:
        self.device = Path(root) / DEVICE
        self._ioctl = ioctl if ioctl is not None else system_ioctl
        try:
            tsm = ConfigfsTsmProvider(root, fs=fs)
        except NoEvidenceProviderError as exc:
            have_dev = "present" if self.device.exists() else "absent"
            raise NoEvidenceProviderError(
                f"TDX quotes come through configfs-tsm, which is unavailable: {exc}. "
                f"({self.device} is {have_dev}; it yields only a TDREPORT, which a remote "
                "verifier cannot check)"
            ) from None
        if tsm.platform != "tdx":
            raise NoEvidenceProviderError(
                f"configfs-tsm provider is {tsm.provider!r}, not 'tdx_guest': not a TDX guest"
            )
        self._tsm = tsm

    def get_evidence(self, report_data: bytes) -> Evidence:
        return self._tsm.get_evidence(report_data)

    def get_tdreport(self, report_data: bytes) -> bytes:
        """A local TDREPORT over ``report_data`` (for local checks, not for verifiers)."""
        data = check_report_data(report_data)
        req = pack_tdreport_request(data)
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NoEvidenceProviderError(
                f"{self.device} not found: the tdx-guest driver is not loaded"
            ) from None
        except OSError as exc:
            raise AttestationError(f"cannot open {self.device}: {describe_oserror(exc)}") from None
        try:
            self._ioctl(fd, TDX_CMD_GET_REPORT0, req)
        except OSError as exc:
            raise AttestationError(
                f"TDX_CMD_GET_REPORT0 on {self.device} failed: {describe_oserror(exc)}"
            ) from None
        finally:
            os.close(fd)
        return parse_tdreport_response(req, data)

    def sealing_key(self, label: bytes) -> bytes:
        raise NoSealingKeyError(TDX_NO_SEALING_KEY)


__all__ = [
    "TDX_CMD_GET_REPORT0",
    "TdxGuestProvider",
    "TdxReportReq",
    "pack_tdreport_request",
    "parse_tdreport_response",
]
