"""How the enclave obtains evidence and sealing keys from the platform it runs on."""

from __future__ import annotations

from typing import Protocol

from cctrain.attestation.base import Evidence


class EvidenceProvider(Protocol):
    """A TEE interface: produces evidence over 64 bytes of report data, and sealing keys."""

    #: "sev-snp" | "tdx" | "sgx" | "simulated"
    platform: str

    def get_evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report_data field equals ``report_data`` (64 bytes)."""

    def sealing_key(self, label: bytes) -> bytes:
        """A 32-byte key bound to this enclave's identity (measurement), for data at rest."""
