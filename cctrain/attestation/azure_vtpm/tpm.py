"""TPM 2.0 structures of a vTPM quote, parsed strictly with :mod:`struct`.

TPM structures are big-endian (TPM 2.0 Part 2).  A quote is a ``TPMS_ATTEST``
(the signed message) and a ``TPMT_SIGNATURE``.  Only the quote form is
accepted: ``magic`` must be ``TPM_GENERATED_VALUE`` and ``type``
``TPM_ST_ATTEST_QUOTE``; every length must fit and nothing may trail.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cctrain.errors import EvidenceParseError

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_RSASSA = 0x0014
TPM_ALG_SHA256 = 0x000B
#: Hash algorithms by TPM_ALG_ID, with their digest sizes (TPM 2.0 Part 2, Table 9).
TPM_HASH_ALGS = {0x0004: ("sha1", 20), 0x000B: ("sha256", 32), 0x000C: ("sha384", 48),
                 0x000D: ("sha512", 64), 0x0012: ("sm3_256", 32)}  # fmt: skip
TPM_SIG_ALGS = {0x0014: "RSASSA", 0x0016: "RSAPSS", 0x0018: "ECDSA", 0x001A: "ECDAA",
                0x001B: "SM2", 0x001C: "ECSCHNORR", 0x0005: "HMAC", 0x0010: "NULL"}  # fmt: skip
#: Bounds a real TPM never exceeds (HASH_COUNT, PCR_SELECT_MAX): no quote is larger.
MAX_PCR_BANKS = 16
MAX_PCR_SELECT = 32
MAX_NAME_SIZE = 2 + 64  # nameAlg + the largest digest
MAX_DATA_SIZE = 2 + 64  # TPM2B_DATA: sizeof(TPMT_HA)
MAX_QUOTE_SIZE = 4096


def alg_name(alg: int, table: dict[int, str] | None = None) -> str:
    if table is None:
        known = TPM_HASH_ALGS.get(alg)
        return f"0x{alg:04x} ({known[0].upper()})" if known else f"0x{alg:04x}"
    return f"0x{alg:04x} ({table[alg]})" if alg in table else f"0x{alg:04x}"


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a hash bank and the PCR indices it selects."""

    hash_alg: int
    size_of_select: int
    pcrs: tuple[int, ...]  # ascending, as a TPM digests them


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class QuoteAttest:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE; ``raw`` is what the AK signed."""

    raw: bytes
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_selection: tuple[PcrSelection, ...]
    pcr_digest: bytes

    def selected(self) -> list[tuple[int, int]]:
        """(hash_alg, pcr index) in selection order: the order of the PCR digest."""
        return [(s.hash_alg, i) for s in self.pcr_selection for i in s.pcrs]


@dataclass(frozen=True)
class TpmSignature:
    """A TPMT_SIGNATURE of an RSA scheme: sigAlg, hashAlg and the signature bytes."""

    sig_alg: int
    hash_alg: int
    signature: bytes


class _Reader:
    def __init__(self, raw: bytes, what: str) -> None:
        self.raw, self.off, self.what = raw, 0, what

    def take(self, n: int, field: str) -> bytes:
        if self.off + n > len(self.raw):
            raise EvidenceParseError(
                f"{self.what} is truncated: {field} needs {n} bytes at offset {self.off}, "
                f"{len(self.raw) - self.off} left"
            )
        out = self.raw[self.off : self.off + n]
        self.off += n
        return out

    def unpack(self, fmt: str, field: str) -> tuple[int, ...]:
        values: tuple[int, ...] = struct.unpack(fmt, self.take(struct.calcsize(fmt), field))
        return values

    def u8(self, field: str) -> int:
        return self.unpack(">B", field)[0]

    def u16(self, field: str) -> int:
        return self.unpack(">H", field)[0]

    def u32(self, field: str) -> int:
        return self.unpack(">I", field)[0]

    def u64(self, field: str) -> int:
        return self.unpack(">Q", field)[0]

    def tpm2b(self, field: str, limit: int) -> bytes:
        size = self.u16(f"{field}.size")
        if size > limit:
            raise EvidenceParseError(f"{self.what}: {field} is {size} bytes, at most {limit}")
        return self.take(size, field)

    def end(self) -> None:
        if self.off != len(self.raw):
            raise EvidenceParseError(
                f"{self.what} has {len(self.raw) - self.off} trailing bytes after offset {self.off}"
            )


def _pcr_selection(r: _Reader) -> tuple[PcrSelection, ...]:
    count = r.u32("TPML_PCR_SELECTION.count")
    if count > MAX_PCR_BANKS:
        raise EvidenceParseError(f"{r.what}: {count} PCR selections, at most {MAX_PCR_BANKS}")
    out: list[PcrSelection] = []
    seen: set[int] = set()
    for n in range(count):
        hash_alg = r.u16(f"pcrSelections[{n}].hash")
        size = r.u8(f"pcrSelections[{n}].sizeofSelect")
        if size > MAX_PCR_SELECT:
            raise EvidenceParseError(
                f"{r.what}: pcrSelections[{n}].sizeofSelect {size}, at most {MAX_PCR_SELECT}"
            )
        bitmap = r.take(size, f"pcrSelections[{n}].pcrSelect")
        if hash_alg in seen:
            raise EvidenceParseError(f"{r.what}: hash bank {alg_name(hash_alg)} selected twice")
        seen.add(hash_alg)
        pcrs = tuple(i for i in range(8 * size) if bitmap[i // 8] >> (i % 8) & 1)
        out.append(PcrSelection(hash_alg, size, pcrs))
    return tuple(out)


def parse_quote_attest(raw: bytes) -> QuoteAttest:
    """Parse the TPMS_ATTEST of a TPM2_Quote; raise EvidenceParseError on any flaw."""
    if len(raw) > MAX_QUOTE_SIZE:
        raise EvidenceParseError(f"TPMS_ATTEST is {len(raw)} bytes, limit {MAX_QUOTE_SIZE}")
    r = _Reader(raw, "TPMS_ATTEST")
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise EvidenceParseError(
            f"TPMS_ATTEST magic is 0x{magic:08x}, not TPM_GENERATED_VALUE "
            f"0x{TPM_GENERATED_VALUE:08x} (not produced by a TPM)"
        )
    st = r.u16("type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise EvidenceParseError(
            f"TPMS_ATTEST type is 0x{st:04x}, not TPM_ST_ATTEST_QUOTE 0x{TPM_ST_ATTEST_QUOTE:04x}"
        )
    signer = r.tpm2b("qualifiedSigner", MAX_NAME_SIZE)
    extra = r.tpm2b("extraData", MAX_DATA_SIZE)
    clock, reset, restart, safe = r.unpack(">QIIB", "clockInfo")
    if safe not in (0, 1):
        raise EvidenceParseError(f"TPMS_ATTEST clockInfo.safe is {safe}, not a TPMI_YES_NO")
    firmware = r.u64("firmwareVersion")
    selection = _pcr_selection(r)
    digest = r.tpm2b("pcrDigest", 64)
    r.end()
    return QuoteAttest(
        raw=raw,
        qualified_signer=signer,
        extra_data=extra,
        clock_info=ClockInfo(clock, reset, restart, bool(safe)),
        firmware_version=firmware,
        pcr_selection=selection,
        pcr_digest=digest,
    )


def parse_signature(raw: bytes, key_bytes: int) -> TpmSignature:
    """A quote signature: the bare RSA signature (``key_bytes`` long, as trustee ships it,
    scheme RSASSA/SHA-256 implied) or a marshalled TPMT_SIGNATURE of an RSA scheme."""
    if len(raw) == key_bytes:
        return TpmSignature(TPM_ALG_RSASSA, TPM_ALG_SHA256, raw)
    r = _Reader(raw, "TPMT_SIGNATURE")
    sig_alg = r.u16("sigAlg")
    hash_alg = r.u16("hash")
    if sig_alg not in (TPM_ALG_RSASSA, 0x0016):  # RSASSA, RSAPSS: TPMS_SIGNATURE_RSA
        # Another scheme's layout: keep its bytes; verify refuses the scheme by name.
        return TpmSignature(sig_alg, hash_alg, raw[4:])
    sig = r.tpm2b("signature", 1024)
    r.end()
    return TpmSignature(sig_alg, hash_alg, sig)
