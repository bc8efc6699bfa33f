"""Types shared by every attestation platform: parse → verify → validate.

A platform plug-in (``cctrain.attestation.<platform>``) provides three stages,
each its own module, and registers one :class:`Platform` object:

* ``parse(raw) -> report``: lengths and structure only; raises
  :class:`~cctrain.errors.EvidenceParseError`.
* ``verify(report, certificates=..., collateral=..., now=..., getter=...) ->
  VerifiedClaims``: signatures and chains up to the pinned vendor roots at the
  explicit time ``now``; raises :class:`~cctrain.errors.EvidenceVerificationError`
  listing every failure.  Only this stage creates :class:`VerifiedClaims`.
* ``validate(claims, reference) -> list[str]``: platform-specific reference
  values (for example TDX RTMRs, SGX MRSIGNER); returns every mismatch as
  ``"field: got X, want Y"``.  Checks common to all platforms (measurement
  allow-list, debug, report_data binding, TCB status) live in
  :mod:`cctrain.attestation.pipeline`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509

#: A caller-supplied function that fetches collateral or certificates by URL
#: (or key); nothing is fetched at verification time unless one is passed.
CollateralGetter = Callable[[str], bytes]

SIGNERS = ("vcek", "vlek", "pck", "device", "simulated", "cca-cpak", "psa-iak", "aws-nitro")


@dataclass(frozen=True)
class Evidence:
    """Raw evidence as it travels: the platform's report/quote and what verifies it."""

    platform: str
    report: bytes
    #: DER certificates not inside the report itself (VCEK/VLEK chain, GPU chain, ...).
    certificates: tuple[bytes, ...] = ()
    #: Collateral as a JSON-compatible mapping (Intel PCS TCB info, QE identity, CRLs).
    collateral: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class VerifiedClaims:
    """Claims of evidence whose signatures and chain verified.

    Only a platform's ``verify`` stage constructs this type; validation takes
    nothing else, so unverified bytes can never be validated by mistake.
    """

    platform: str
    measurement: bytes
    report_data: bytes
    debug: bool
    signer: str
    chip_id: bytes | None = None
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    #: Platform-specific verified fields (e.g. ``tcb``, ``rtmrs``, ``mrsigner``).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The nonce or challenge the evidence carries, where it is not ``report_data`` itself
    #: (Nitro's ``nonce``, a CCA realm or PSA challenge); None: it is ``report_data``.
    nonce: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            if isinstance(v, bytes):
                return v.hex()
            if isinstance(v, Mapping):
                return {k: enc(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [enc(x) for x in v]
            return v

        return {
            "platform": self.platform,
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "signer": self.signer,
            "chip_id": self.chip_id.hex() if self.chip_id is not None else None,
            "tcb_status": self.tcb_status,
            "advisories": list(self.advisories),
            "extra": enc(dict(self.extra)),
            "nonce": (self.nonce if self.nonce is not None else self.report_data).hex(),
        }


class Platform(Protocol):
    """What a platform plug-in registers with :func:`register_platform`."""

    name: str
    #: Reference-value keys a policy may set for this platform, beyond the common
    #: ``measurements``, ``accepted_tcb_statuses`` and ``accepted_advisories``.
    #: The policy validator rejects any other key.
    reference_keys: frozenset[str]

    def sniff(self, raw: bytes) -> bool:
        """True when ``raw`` looks like this platform's evidence (for ``--platform auto``)."""

    def parse(self, raw: bytes) -> Any:
        """Parse raw bytes into a typed report; raise EvidenceParseError."""

    def verify(
        self,
        report: Any,
        *,
        certificates: Sequence[x509.Certificate],
        collateral: Mapping[str, Any] | None,
        now: _dt.datetime,
        getter: CollateralGetter | None,
    ) -> VerifiedClaims:
        """Verify signatures/chain at ``now``; raise EvidenceVerificationError."""

    def validate(self, claims: VerifiedClaims, reference: Mapping[str, Any]) -> list[str]:
        """Platform-specific mismatches against the policy's reference values."""


class KeyAnchoredPlatform(Platform, Protocol):
    """A platform whose evidence chains to a public key, not a certificate (an Arm CCA
    platform's CPAK, a PSA device's IAK). It sets ``trust_keys = True`` and its ``verify``
    takes ``trust_keys``: the keys the caller trusts (``--key``, or the policy's reference
    value ``trust_keys``), as ``cryptography`` EC public keys."""

    trust_keys: bool


_REGISTRY: dict[str, Platform] = {}


def register_platform(platform: Platform) -> Platform:
    _REGISTRY[platform.name] = platform
    return platform


def get_platform(name: str) -> Platform:
    _load_builtin_platforms()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        from cctrain.errors import EvidenceParseError

        raise EvidenceParseError(f"unknown platform {name!r} (known: {known})") from None


def registered_platforms() -> list[str]:
    _load_builtin_platforms()
    return sorted(_REGISTRY)


_BUILTINS = (
    "simulated",
    "sev_snp",
    "dcap",
    "nvidia_gpu",
    "aws_nitro",
    "arm_cca",
    "arm_psa",
    "azure_vtpm",
)


def _load_builtin_platforms() -> None:
    import importlib

    for mod in _BUILTINS:
        try:
            importlib.import_module(f"cctrain.attestation.{mod}")
        except ModuleNotFoundError as exc:  # a platform not built yet
            if exc.name != f"cctrain.attestation.{mod}":
                raise


def utcnow() -> _dt.datetime:
    """The one place production code reads the clock for verification."""
    return _dt.datetime.now(_dt.timezone.utc)
