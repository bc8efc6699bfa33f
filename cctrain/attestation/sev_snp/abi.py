"""SEV-SNP ABI constants: report layout, TCB layouts, product lines.

Offsets follow the AMD SEV-SNP Firmware ABI specification (ATTESTATION_REPORT
structure).  They live in one place so the parser, the verifier and the tests
agree on every byte.
"""

from __future__ import annotations

from dataclasses import dataclass

REPORT_SIZE = 0x4A0  # 1184 bytes
SIGNED_END = 0x2A0  # the signature covers report[0:0x2A0]
SIGNATURE_OFFSET = 0x2A0
ECDSA_COMPONENT_SIZE = 72  # r and s, little-endian, zero-padded
SIGNATURE_END = SIGNATURE_OFFSET + 2 * ECDSA_COMPONENT_SIZE

#: Report versions this parser understands.  v2: Milan/Genoa firmware before
#: CPUID fields; v3: adds CPUID family/model/stepping at 0x188; v5: adds the
#: launch/current mitigation vectors at 0x1F8.  Anything else is refused
#: rather than misread.
SUPPORTED_VERSIONS = frozenset({2, 3, 5})

#: SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only one defined.
SIG_ALGO_ECDSA_P384_SHA384 = 1

#: SIGNING_KEY values (KEY_INFO bits 2..4).
SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}

# Guest policy bits.
POLICY_DEBUG_BIT = 19
POLICY_RESERVED_ONE_BIT = 17  # the spec requires this bit to be 1
POLICY_FIRST_RESERVED_ZERO_BIT = 26  # bits 26..63 must be zero

#: Product lines with pinned AMD roots.
PRODUCTS = ("Milan", "Genoa", "Turin")

#: Length of the meaningful part of CHIP_ID (and of the VCEK hwID) per product:
#: Turin identifies a chip by 8 bytes, earlier parts by all 64.
CHIP_ID_SIZE = 64
TURIN_HWID_SIZE = 8


def product_from_cpuid(family: int, model: int) -> str | None:
    """Map the report's CPUID family/model (v3+) to an AMD product line.

    Family 19h models 0h-Fh are Milan, 10h-1Fh and A0h-AFh (Bergamo/Siena) are
    Genoa; family 1Ah models 0h-1Fh are Turin.  Unknown parts give None, so the
    verifier falls back to the certificate chain and says so.
    """
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


# TCB_VERSION byte positions (byte index within the little-endian u64).
_CLASSIC_LAYOUT = (
    ("bootloader", 0),
    ("tee", 1),
    ("spl4", 2),
    ("spl5", 3),
    ("spl6", 4),
    ("spl7", 5),
    ("snp", 6),
    ("microcode", 7),
)
_TURIN_LAYOUT = (
    ("fmc", 0),
    ("bootloader", 1),
    ("tee", 2),
    ("snp", 3),
    ("spl5", 4),
    ("spl6", 5),
    ("spl7", 6),
    ("microcode", 7),
)
#: The components a policy may name in ``min_tcb`` (the rest are reserved).
NAMED_COMPONENTS = {
    "classic": ("bootloader", "tee", "snp", "microcode"),
    "turin": ("fmc", "bootloader", "tee", "snp", "microcode"),
}


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION.  Turin moved the fields and added FMC, so the
    layout is part of the value: the same u64 means different things."""

    raw: int
    turin: bool

    @property
    def layout(self) -> tuple[tuple[str, int], ...]:
        return _TURIN_LAYOUT if self.turin else _CLASSIC_LAYOUT

    def component(self, name: str) -> int | None:
        for field_name, index in self.layout:
            if field_name == name:
                return (self.raw >> (8 * index)) & 0xFF
        return None

    def all_components(self) -> dict[str, int]:
        """Every byte by name, reserved ones included (for comparing to a VCEK)."""
        return {name: (self.raw >> (8 * index)) & 0xFF for name, index in self.layout}

    def named(self) -> dict[str, int]:
        """The meaningful components by name (what claims and policies use)."""
        names = NAMED_COMPONENTS["turin" if self.turin else "classic"]
        return {name: value for name, value in self.all_components().items() if name in names}

    @classmethod
    def compose(cls, parts: dict[str, int], *, turin: bool) -> TcbVersion:
        layout = _TURIN_LAYOUT if turin else _CLASSIC_LAYOUT
        raw = 0
        for name, index in layout:
            raw |= (parts.get(name, 0) & 0xFF) << (8 * index)
        return cls(raw=raw, turin=turin)
