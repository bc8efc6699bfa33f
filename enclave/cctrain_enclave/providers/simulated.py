"""The simulated evidence provider: real protocol, never-trusted root.

Chosen only by an explicit ``--platform simulated``; never by ``auto``.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cctrain.attestation.base import Evidence
from cctrain.attestation.simulated import build_report, issue_chip_certificate
from cctrain.errors import NoSealingKeyError
from cctrain.measure import code_measurement

BANNER = (
    "\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    "!!  SIMULATED TEE. No hardware protects this process. Its evidence is  !!\n"
    "!!  signed under a root whose private key is PUBLIC. Local dev only.  !!\n"
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


#: Why the simulated platform started with ``--no-sealing-key`` has no ``sealing_key``.
SIMULATED_NO_SEALING_KEY = (
    "the simulated platform runs without a sealing key (--no-sealing-key), as TDX does: "
    "a trust domain cannot derive a key bound to its measurement. Keep enclave state under "
    'a consortium-held state key (policy: [state] key = "consortium")'
)


class SimulatedProvider:
    """Simulated 'hardware': a chip key and a platform secret kept in the state directory.

    ``sealing=False`` simulates a platform without a sealing key (TDX): :meth:`sealing_key`
    then raises :class:`~cctrain.errors.NoSealingKeyError` as the TDX providers do, so the
    code path a TDX enclave takes (a consortium-held state key) runs without TDX hardware.
    """

    platform = "simulated"

    def __init__(self, state_dir: Path, *, debug: bool = False, sealing: bool = True) -> None:
        self._dir = Path(state_dir) / "simulated-platform"
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._debug = debug
        self.sealing = sealing
        chip_path = self._dir / "chip.key"
        secret_path = self._dir / "platform-secret"
        if not chip_path.exists():
            _write_secret(chip_path, os.urandom(32))
        if sealing and not secret_path.exists():
            _write_secret(secret_path, os.urandom(32))
        self._chip_key = Ed25519PrivateKey.from_private_bytes(chip_path.read_bytes())
        self._secret = secret_path.read_bytes() if sealing else b""
        self._measurement = code_measurement()
        self._chip_cert_der = issue_chip_certificate(
            self._chip_key, now=_dt.datetime.now(_dt.timezone.utc)
        ).public_bytes(serialization.Encoding.DER)
        # The enclave logs BANNER once it has started on this provider (cctrain_enclave.app).

    @property
    def measurement(self) -> bytes:
        return self._measurement

    def get_evidence(self, report_data: bytes) -> Evidence:
        report = build_report(
            chip_key=self._chip_key,
            measurement=self._measurement,
            report_data=report_data,
            debug=self._debug,
            timestamp=int(time.time()),
        )
        return Evidence(platform="simulated", report=report, certificates=(self._chip_cert_der,))

    def sealing_key(self, label: bytes) -> bytes:
        if not self.sealing:
            raise NoSealingKeyError(SIMULATED_NO_SEALING_KEY)
        # Like SNP's derived keys: bound to the platform secret AND the measurement,
        # so different enclave code cannot unseal this code's state.
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=self._measurement,
            info=b"cctrain/simulated-sealing/v1\x00" + label,
        ).derive(self._secret)
