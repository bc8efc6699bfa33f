"""Intel SGX evidence and sealing keys inside Gramine, via ``/dev/attestation``.

Gramine exposes DCAP attestation as pseudo-files: write 64 bytes to
``user_report_data``, read a quote (v3) from ``quote``.  The pair is
process-global, so requests are serialised here and the quote is checked to
carry the report data we wrote.  The MRENCLAVE-bound sealing key
(``keys/_sgx_mrenclave``, 16 bytes from SGX EGETKEY) is never used directly:
it goes through HKDF with a cctrain label, keeping it apart from Gramine's own
use of the same key for encrypted-file mounts.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cctrain.attestation.base import Evidence
from cctrain.errors import AttestationError, NoEvidenceProviderError

from ._common import check_echo, check_report_data, derive_sealing_key, describe_oserror

ATTESTATION_DIR = "dev/attestation"
#: The key bound to this exact enclave build (MRENCLAVE); an MRSIGNER key would
#: let any enclave from the same signer unseal the state.
SEALING_KEY_FILE = "keys/_sgx_mrenclave"
SGX_KEY_LEN = 16

_LOCK = threading.Lock()


class GramineProvider:
    """SGX DCAP quotes and MRENCLAVE sealing keys from Gramine's ``/dev/attestation``."""

    platform = "sgx"

    def __init__(self, root: Path = Path("/")) -> None:
        self.dir = Path(root) / ATTESTATION_DIR
        type_file = self.dir / "attestation_type"
        try:
            kind = type_file.read_bytes().decode("ascii", "replace").strip()
        except FileNotFoundError:
            raise NoEvidenceProviderError(
                f"{type_file} not found: not running inside Gramine-SGX"
            ) from None
        except OSError as exc:
            raise AttestationError(f"cannot read {type_file}: {describe_oserror(exc)}") from None
        if kind != "dcap":
            hint = {
                "none": 'the manifest sets sgx.remote_attestation = "none"; set it to "dcap"',
                "epid": "EPID attestation is retired by Intel; rebuild with "
                'sgx.remote_attestation = "dcap"',
            }.get(kind, 'set sgx.remote_attestation = "dcap" in the manifest')
            raise AttestationError(
                f"Gramine attestation_type is {kind!r}, cctrain needs 'dcap': {hint}"
            )

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        with _LOCK:
            try:
                (self.dir / "user_report_data").write_bytes(data)
            except OSError as exc:
                raise AttestationError(
                    f"writing {self.dir / 'user_report_data'} failed: {describe_oserror(exc)}"
                ) from None
            try:
                quote = (self.dir / "quote").read_bytes()
            except OSError as exc:
                raise AttestationError(
                    f"reading {self.dir / 'quote'} failed: {describe_oserror(exc)} "
                    "(is the AESM service / DCAP quote provider library reachable?)"
                ) from None
        if not quote:
            raise AttestationError(f"{self.dir / 'quote'} returned an empty quote")
        check_echo("sgx", quote, data)
        # The PCK chain is inside the quote (certification data type 5).
        return Evidence(platform="sgx", report=quote)

    def sealing_key(self, label: bytes) -> bytes:
        path = self.dir / SEALING_KEY_FILE
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            raise NoEvidenceProviderError(
                f"{path} not found: Gramine older than 1.5 does not expose sealing keys"
            ) from None
        except OSError as exc:
            raise AttestationError(f"cannot read {path}: {describe_oserror(exc)}") from None
        if len(key) != SGX_KEY_LEN:
            raise AttestationError(
                f"{path} holds {len(key)} bytes; an SGX sealing key is {SGX_KEY_LEN}"
            )
        return derive_sealing_key(key, platform=self.platform, label=label)


__all__ = ["GramineProvider"]
