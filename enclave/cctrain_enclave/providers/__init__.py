"""Evidence providers: how the enclave gets evidence and sealing keys from its TEE.

One module per kernel interface (configfs-tsm, ``/dev/sev-guest``,
``/dev/tdx_guest``, Gramine's ``/dev/attestation``) plus the simulated
platform; :func:`detect_provider` picks one.  Every provider implements
:class:`~cctrain_enclave.providers.base.EvidenceProvider`.
"""

from __future__ import annotations

from .base import EvidenceProvider
from .detect import PLATFORMS, detect_provider

__all__ = ["PLATFORMS", "EvidenceProvider", "detect_provider"]
