"""The names ``cctrain-enclave serve --platform`` accepts.

Apart from :mod:`cctrain_enclave.providers` (which imports every provider and the attestation
stack) so that the CLI can offer the choice without loading them: every ``cctrain`` command
builds its option list, the party commands included.
"""

from __future__ import annotations

PLATFORMS = ("auto", "sev-snp", "tdx", "sgx", "arm-cca", "aws-nitro", "simulated")

__all__ = ["PLATFORMS"]
