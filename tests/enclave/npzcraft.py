"""Take an NPZ that numpy wrote apart into its zip records and put it back together, with
deliberate faults: the tampering helpers of the strict-parser tests. numpy (``np.load``)
is used here only as the reference reader."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOCAL, CENTRAL, EOCD = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
ZIP64_EOCD, ZIP64_LOCATOR = b"PK\x06\x06", b"PK\x06\x07"


def savez(*, compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def np_load(data: bytes) -> dict[str, np.ndarray]:
    """What numpy reads from these bytes (the reference reader; tests only)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass
class Archive:
    """A small archive as numpy writes it: members (local record bytes) and directory entries."""

    locals: list[bytearray]
    centrals: list[bytearray]
    gaps: list[bytes] = field(default_factory=list)  # bytes after each member

    @classmethod
    def parse(cls, data: bytes) -> Archive:
        assert data[-22:-18] == EOCD, "expects no comment"
        n, cd_size, cd_off = struct.unpack_from("<HII", data, len(data) - 22 + 10)
        centrals, offsets, pos = [], [], cd_off
        for _ in range(n):
            nlen, xlen, clen = struct.unpack_from("<HHH", data, pos + 28)
            entry = bytearray(data[pos : pos + 46 + nlen + xlen + clen])
            offsets.append(struct.unpack_from("<I", entry, 42)[0])
            centrals.append(entry)
            pos += len(entry)
        bounds = [*offsets, cd_off]
        locals_ = [bytearray(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        return cls(locals_, centrals, [b""] * n)

    def build(
        self,
        *,
        prefix: bytes = b"",
        comment: bytes = b"",
        trailing: bytes = b"",
        zip64_end: bool = False,
        fix_offsets: bool = True,
        end_fields: dict[str, int] | None = None,
    ) -> bytes:
        out = bytearray(prefix)
        centrals = [bytearray(c) for c in self.centrals]
        for i, (rec, gap) in enumerate(zip(self.locals, self.gaps, strict=True)):
            if fix_offsets and i < len(centrals):
                struct.pack_into("<I", centrals[i], 42, len(out))
            out += rec + gap
        cd_off = len(out)
        for c in centrals:
            out += c
        cd_size = len(out) - cd_off
        fields: dict[str, Any] = {
            "n": len(centrals),
            "cd_size": cd_size,
            "cd_off": cd_off,
        }
        if zip64_end:
            z_at = len(out)
            out += ZIP64_EOCD + struct.pack(
                "<QHHIIQQQQ", 44, 45, 45, 0, 0, len(centrals), len(centrals), cd_size, cd_off
            )
            out += ZIP64_LOCATOR + struct.pack("<IQI", 0, z_at, 1)
            fields = {"n": 0xFFFF, "cd_size": 0xFFFFFFFF, "cd_off": 0xFFFFFFFF}
        fields.update(end_fields or {})
        out += EOCD + struct.pack(
            "<HHHHIIH",
            fields.get("disk", 0),
            0,
            fields["n"],
            fields["n"],
            fields["cd_size"],
            fields["cd_off"],
            fields.get("comment_len", len(comment)),
        )
        return bytes(out + comment + trailing)


def set_field(record: bytearray, offset: int, fmt: str, value: int) -> None:
    struct.pack_into(fmt, record, offset, value)


# Field offsets inside a local header and a central directory entry.
LOCAL_FIELDS = {"version": (4, "<H"), "flags": (6, "<H"), "method": (8, "<H"), "crc": (14, "<I"),
                "csize": (18, "<I"), "usize": (22, "<I")}  # fmt: skip
CENTRAL_FIELDS = {"version": (6, "<H"), "flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"),
                  "csize": (20, "<I"), "usize": (24, "<I"), "disk": (34, "<H"), "offset": (42, "<I")}  # fmt: skip
