"""Pick the evidence provider for ``cctrain-enclave serve --platform ...``.

``auto`` tries the hardware interfaces in this order and returns the first that
works:

1. configfs-tsm (``/sys/kernel/config/tsm/report``): the kernel's common
   interface for SEV-SNP and TDX; which one is read from its ``provider``.
2. ``/dev/sev-guest``: SEV-SNP on kernels without configfs-tsm.
3. ``/dev/tdx_guest``: noted only; without configfs-tsm it cannot produce a quote.
4. Gramine's ``/dev/attestation``: SGX.
5. ``/dev/nsm``: an AWS Nitro Enclave.

``auto`` never returns the simulated provider: a host with no TEE fails loudly
instead of silently running unprotected.  ``simulated`` must be named.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cctrain.errors import AttestationError, NoEvidenceProviderError
from cctrain_enclave.platforms import PLATFORMS

from .base import EvidenceProvider
from .configfs_tsm import ConfigfsTsm, ConfigfsTsmProvider, platform_of
from .gramine import ATTESTATION_DIR, GramineProvider
from .nitro_nsm import DEVICE as NSM_DEVICE
from .nitro_nsm import NitroNsmProvider
from .sev_guest import DEVICE as SEV_DEVICE
from .sev_guest import SevGuestProvider
from .tdx_guest import DEVICE as TDX_DEVICE
from .tdx_guest import TdxGuestProvider

log = logging.getLogger("cctrain.enclave")


def searched_paths(root: Path = Path("/")) -> tuple[Path, ...]:
    """Every path ``auto`` looks at, in order (for error messages and docs)."""
    root = Path(root)
    return (
        ConfigfsTsm(root).report_dir,
        root / SEV_DEVICE,
        root / TDX_DEVICE,
        root / ATTESTATION_DIR / "attestation_type",
        root / NSM_DEVICE,
    )


def _configfs_platform(root: Path, notes: list[str]) -> str | None:
    """The platform configfs-tsm serves here, or None (with the reason in ``notes``)."""
    tsm = ConfigfsTsm(root)
    if not tsm.available():
        return None
    try:
        return platform_of(tsm.provider())
    except AttestationError as exc:  # includes NoEvidenceProviderError
        notes.append(f"configfs-tsm: {exc}")
        return None


def _sev_snp(root: Path, notes: list[str]) -> EvidenceProvider | None:
    via_tsm = _configfs_platform(root, notes)
    if via_tsm == "sev-snp":
        return ConfigfsTsmProvider(root)
    if via_tsm is not None:
        notes.append(f"configfs-tsm serves {via_tsm!r} here, not 'sev-snp'")
    sev = SevGuestProvider(root)
    if sev.available():
        return sev
    return None


def _auto(root: Path) -> EvidenceProvider:
    notes: list[str] = []
    via_tsm = _configfs_platform(root, notes)
    if via_tsm == "sev-snp":
        return ConfigfsTsmProvider(root)
    if via_tsm == "tdx":
        return TdxGuestProvider(root)
    if via_tsm == "arm-cca":
        return ConfigfsTsmProvider(root)
    sev = SevGuestProvider(root)
    if sev.available():
        return sev
    if (root / TDX_DEVICE).exists():
        notes.append(
            f"{root / TDX_DEVICE} is present, but it yields only a TDREPORT; TDX quotes "
            "need configfs-tsm (Linux >= 6.7, CONFIG_TSM_REPORTS, configfs mounted)"
        )
    if (root / ATTESTATION_DIR / "attestation_type").exists():
        # Inside Gramine for sure: a wrong attestation_type is the real problem, say so.
        return GramineProvider(root)
    if (root / NSM_DEVICE).exists():
        return NitroNsmProvider(root)
    raise _nothing_found(root, notes)


def _nothing_found(
    root: Path, notes: list[str], wanted: str = "any TEE"
) -> NoEvidenceProviderError:
    looked = "\n  - ".join(str(p) for p in searched_paths(root))
    extra = "".join(f"\n  note: {n}" for n in notes)
    return NoEvidenceProviderError(
        f"no evidence interface for {wanted} found; looked at:\n  - {looked}{extra}\n"
        "Without a TEE, run the local development mode explicitly with --platform simulated "
        "(its evidence is never trusted by production verifiers)."
    )


def detect_provider(
    platform: str = "auto",
    *,
    root: Path = Path("/"),
    state_dir: Path | None = None,
) -> EvidenceProvider:
    """The evidence provider for ``platform`` on this host.

    ``root`` lets tests point at a fake tree; ``state_dir`` is needed only by
    the simulated provider, which keeps its simulated chip key there.
    """
    provider = _select(platform, Path(root), state_dir)
    log.info(
        "evidence provider: platform %s via %s (requested %r)",
        provider.platform,
        type(provider).__name__,
        platform,
    )
    return provider


def _select(platform: str, root: Path, state_dir: Path | None) -> EvidenceProvider:
    if platform == "auto":
        return _auto(root)
    if platform == "sev-snp":
        notes: list[str] = []
        provider = _sev_snp(root, notes)
        if provider is None:
            raise _nothing_found(root, notes, "SEV-SNP")
        return provider
    if platform == "tdx":
        return TdxGuestProvider(root)
    if platform == "sgx":
        return GramineProvider(root)
    if platform == "arm-cca":
        cca = ConfigfsTsmProvider(root)
        if cca.platform != "arm-cca":
            raise AttestationError(
                f"configfs-tsm provider is {cca.provider!r}, not 'arm_cca_guest': not a CCA realm"
            )
        return cca
    if platform == "aws-nitro":
        nitro = NitroNsmProvider(root)
        if not nitro.available():
            raise _nothing_found(root, [], "AWS Nitro Enclaves")
        return nitro
    if platform == "simulated":
        if state_dir is None:
            raise AttestationError(
                "the simulated platform needs a state directory (state_dir) to keep its "
                "simulated chip key"
            )
        from cctrain_enclave.providers.simulated import SimulatedProvider

        return SimulatedProvider(state_dir)
    raise AttestationError(f"unknown platform {platform!r}; choose one of: {', '.join(PLATFORMS)}")


__all__ = ["PLATFORMS", "detect_provider", "searched_paths"]
