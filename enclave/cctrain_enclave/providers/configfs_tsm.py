"""Evidence through Linux configfs-tsm (``/sys/kernel/config/tsm/report``, Linux >= 6.7).

configfs-tsm is the kernel's one interface for SEV-SNP reports, TDX quotes and Arm CCA
realm tokens (ABI: ``Documentation/ABI/testing/configfs-tsm``; the CCA driver,
``drivers/virt/coco/arm-cca-guest``, registers as ``arm_cca_guest``, takes a 32..64-byte
challenge as ``inblob`` and returns the whole CCA token as ``outblob``).  Each request gets
its own freshly made report entry, so concurrent requesters never share ``inblob``;
``generation`` is still read before and after, because the ABI's contract is
that a writer we did not expect shows up there.

File access goes through :class:`TsmFilesystem` so tests can stand in for the
kernel's side effects (attributes appearing on ``mkdir``, ``outblob`` computed
on read) while the provider's own sequence of operations stays the real one.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cctrain.attestation.base import Evidence
from cctrain.errors import AttestationError, NoEvidenceProviderError, NoSealingKeyError

from ._common import (
    CCA_NO_SEALING_KEY,
    TDX_NO_SEALING_KEY,
    check_echo,
    check_report_data,
    describe_oserror,
)

log = logging.getLogger("cctrain.enclave")

REPORT_DIR = "sys/kernel/config/tsm/report"

#: ``provider`` attribute value -> cctrain platform name.
TSM_PLATFORMS = {"sev_guest": "sev-snp", "tdx_guest": "tdx", "arm_cca_guest": "arm-cca"}


class TsmFilesystem(Protocol):
    """The four file operations configfs-tsm needs."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class OsFilesystem:
    """The real thing: plain syscalls, one ``write`` per attribute as configfs expects."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")


@dataclass(frozen=True)
class TsmReport:
    """What one configfs-tsm report entry produced."""

    provider: str
    outblob: bytes
    #: SEV-SNP certificate table, or b"" when the TSM supplies none.
    auxblob: bytes
    generation: int


def _parse_generation(raw: bytes, path: Path) -> int:
    text = raw.decode("ascii", "replace").strip()
    if not text.isdigit():
        raise AttestationError(f"{path} holds {text[:32]!r}, not a generation number")
    return int(text)


class ConfigfsTsm:
    """Low-level client of one configfs-tsm ``report`` directory."""

    def __init__(self, root: Path = Path("/"), *, fs: TsmFilesystem | None = None) -> None:
        self.report_dir = Path(root) / REPORT_DIR
        self._fs: TsmFilesystem = fs if fs is not None else OsFilesystem()

    def available(self) -> bool:
        return self.report_dir.is_dir()

    def _make_entry(self) -> Path:
        if not self.available():
            raise NoEvidenceProviderError(
                f"{self.report_dir} not found: configfs-tsm needs Linux >= 6.7 with "
                "CONFIG_TSM_REPORTS and configfs mounted (mount -t configfs none "
                "/sys/kernel/config)"
            )
        entry = self.report_dir / f"cctrain-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._fs.mkdir(entry)
        except FileExistsError:
            raise AttestationError(f"report entry {entry} already exists") from None
        except PermissionError:
            raise AttestationError(
                f"permission denied creating {entry}: run the enclave as root"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
                raise NoEvidenceProviderError(
                    f"configfs-tsm at {self.report_dir} has no TSM driver registered "
                    f"({describe_oserror(exc)}): not a confidential guest, or sev-guest / "
                    "tdx-guest / arm-cca-guest is not loaded"
                ) from None
            raise AttestationError(f"cannot create {entry}: {describe_oserror(exc)}") from None
        return entry

    def _remove_entry(self, entry: Path) -> None:
        try:
            self._fs.rmdir(entry)
        except OSError as exc:  # a leftover entry holds no secret; do not mask the result
            log.warning("could not remove configfs-tsm entry %s: %s", entry, describe_oserror(exc))

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return self._fs.read(path)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise AttestationError(
                f"reading {what} from {path} failed: {describe_oserror(exc)}"
            ) from None

    def _read_required(self, path: Path, what: str) -> bytes:
        try:
            return self._fs.read(path)
        except OSError as exc:
            raise AttestationError(
                f"reading {what} from {path} failed: {describe_oserror(exc)}"
            ) from None

    def _write(self, path: Path, data: bytes, what: str) -> None:
        try:
            self._fs.write(path, data)
        except OSError as exc:
            raise AttestationError(
                f"writing {what} to {path} failed: {describe_oserror(exc)}"
            ) from None

    def provider(self) -> str:
        """The TSM's ``provider`` (``sev_guest``, ``tdx_guest``, ...); asks no firmware."""
        entry = self._make_entry()
        try:
            raw = self._read_required(entry / "provider", "the TSM provider")
        finally:
            self._remove_entry(entry)
        return raw.decode("ascii", "replace").strip()

    def report(self, inblob: bytes, *, privlevel: int | None = None) -> TsmReport:
        """Make an entry, write ``inblob`` (and ``privlevel``), read the results, remove it."""
        entry = self._make_entry()
        try:
            provider = self._read_required(entry / "provider", "the TSM provider")
            before = _parse_generation(
                self._read_required(entry / "generation", "the generation"), entry / "generation"
            )
            writes = 0
            if privlevel is not None:
                self._write(entry / "privlevel", f"{privlevel}\n".encode(), "privlevel")
                writes += 1
            self._write(entry / "inblob", inblob, "inblob")
            writes += 1
            outblob = self._read_required(entry / "outblob", "the report (outblob)")
            auxblob = self._read(entry / "auxblob", "auxblob")
            after = _parse_generation(
                self._read_required(entry / "generation", "the generation"), entry / "generation"
            )
        finally:
            self._remove_entry(entry)
        if after != before + writes:
            raise AttestationError(
                f"configfs-tsm generation went from {before} to {after} across {writes} "
                f"write(s) at {entry}: another writer changed the request; retry"
            )
        if not outblob:
            raise AttestationError(f"configfs-tsm returned an empty outblob at {entry}")
        return TsmReport(
            provider=provider.decode("ascii", "replace").strip(),
            outblob=outblob,
            auxblob=auxblob,
            generation=after,
        )


def platform_of(provider: str) -> str:
    """The cctrain platform name for a TSM ``provider`` value."""
    try:
        return TSM_PLATFORMS[provider]
    except KeyError:
        known = ", ".join(sorted(TSM_PLATFORMS))
        raise AttestationError(
            f"configfs-tsm provider {provider!r} is not supported (supported: {known})"
        ) from None


class ConfigfsTsmProvider:
    """SEV-SNP, TDX or Arm CCA evidence through configfs-tsm; the platform is probed at start.

    Sealing keys do not come through configfs-tsm: on SEV-SNP they come from
    ``/dev/sev-guest`` (SNP_GET_DERIVED_KEY); TDX and CCA realms (RMM 1.0) have none.
    """

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        privlevel: int | None = None,
        fs: TsmFilesystem | None = None,
    ) -> None:
        self._root = Path(root)
        self._privlevel = privlevel
        self.tsm = ConfigfsTsm(self._root, fs=fs)
        self.provider = self.tsm.provider()
        self.platform = platform_of(self.provider)
        if privlevel is not None and self.platform != "sev-snp":
            raise AttestationError(f"privlevel applies to SEV-SNP only, not {self.platform}")

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        rep = self.tsm.report(data, privlevel=self._privlevel)
        if rep.provider != self.provider:
            raise AttestationError(
                f"configfs-tsm provider changed from {self.provider!r} to {rep.provider!r}"
            )
        check_echo(self.platform, rep.outblob, data)
        certificates: tuple[bytes, ...] = ()
        if self.platform == "sev-snp" and rep.auxblob:
            from .sev_guest import certificates_from_table

            certificates = certificates_from_table(rep.auxblob)
        # A TDX quote carries its PCK chain inside (certification data type 5); a CCA token
        # chains to the platform's CPAK, which the verifier must already trust.
        return Evidence(platform=self.platform, report=rep.outblob, certificates=certificates)

    def sealing_key(self, label: bytes) -> bytes:
        if self.platform == "tdx":
            raise NoSealingKeyError(TDX_NO_SEALING_KEY)
        if self.platform == "arm-cca":
            raise NoSealingKeyError(CCA_NO_SEALING_KEY)
        from .sev_guest import SevGuestProvider

        sev = SevGuestProvider(self._root, vmpl=self._privlevel or 0)
        if not sev.available():
            raise NoEvidenceProviderError(
                f"SEV-SNP sealing keys come from {sev.device} (SNP_GET_DERIVED_KEY), which is "
                "not present; configfs-tsm provides reports only"
            )
        return sev.sealing_key(label)


__all__ = [
    "REPORT_DIR",
    "ConfigfsTsm",
    "ConfigfsTsmProvider",
    "OsFilesystem",
    "TsmFilesystem",
    "TsmReport",
    "platform_of",
]
