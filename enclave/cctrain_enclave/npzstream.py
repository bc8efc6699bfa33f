"""Validate an NPZ while it streams in, so the enclave needs no second pass over the shard.

A push parser fed the decrypted plaintext in order.  It understands exactly what
``numpy.savez`` writes (local headers with zip64 extras, stored members
``features.npy`` and ``labels.npy``, then the central directory) and computes the same :class:`~cctrain_enclave.shards.ShardSummary` as
:func:`~cctrain_enclave.shards.summarize_npz_stream`, checking each member's CRC.
At the end it cross-checks the central directory (what ``np.load`` will read later)
against the local headers it validated.

It is an optimisation only: on anything it does not recognise it gives up
(``summary()`` returns None) and the enclave runs the ordinary validation pass,
whose verdict and error messages are authoritative.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from cctrain_enclave.shards import NPZ_MEMBERS, ShardSummary, finite_for_training

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_ZIP64_EOCD = b"PK\x06\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_MAX_TAIL = 1 << 16
_BLOCK = 8 << 20


class _GiveUp(Exception):
    pass


@dataclass
class _Member:
    name: str
    offset: int
    method: int
    crc: int
    compressed: int
    size: int


class NpzStreamValidator:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # stream offset of self._buf[0]
        self._state = "local"
        self._members: list[_Member] = []
        self._cur: _Member | None = None
        self._left = 0  # compressed bytes left in the current member
        self._inflate: Any = None
        self._crc = 0
        self._seen = 0  # uncompressed bytes of the current member
        self._npy_head = bytearray()
        self._dtype: np.dtype[Any] | None = None
        self._shape: tuple[int, ...] = ()
        self._carry = b""
        self._found: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        self._finite = True
        self._lo: int | None = None
        self._hi: int | None = None
        self._tail_at = 0
        self._failed = False

    # -- feeding
    def feed(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._buf += data
            self._run()
        except (_GiveUp, ValueError, struct.error, zlib.error, OverflowError):
            self._failed = True
            self._buf = bytearray()

    def _consume(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._pos += n
        return out

    def _run(self) -> None:
        while True:
            if self._state == "local":
                if len(self._buf) < 4:
                    return
                sig = bytes(self._buf[:4])
                if sig == _CENTRAL:
                    self._state, self._tail_at = "tail", self._pos
                    continue
                if sig != _LOCAL or not self._local_header():
                    if sig != _LOCAL:
                        raise _GiveUp
                    return
            elif self._state == "data":
                if not self._buf:
                    return
                take = min(self._left, len(self._buf))
                chunk = self._consume(take)
                self._left -= take
                self._member_bytes(self._inflate.decompress(chunk) if self._inflate else chunk)
                if self._left == 0:
                    self._end_member()
                    self._state = "local"
            else:  # tail: central directory and end records, checked in summary()
                if len(self._buf) > _MAX_TAIL:
                    raise _GiveUp
                return

    def _local_header(self) -> bool:
        if len(self._buf) < 30:
            return False
        (_, _ver, flags, method, _t, _d, crc, csize, usize, nlen, xlen) = struct.unpack_from(
            "<4sHHHHHIIIHH", self._buf
        )
        if len(self._buf) < 30 + nlen + xlen:
            return False
        offset = self._pos
        head = self._consume(30 + nlen + xlen)
        name = head[30 : 30 + nlen].decode("utf-8")
        extra = head[30 + nlen :]
        if flags & 0x0009 or method != 0 or name not in NPZ_MEMBERS:
            # Encrypted, data descriptor, unknown member, or compressed: a deflate stream can
            # expand far beyond what it declares, so compressed shards take the ordinary pass,
            # which bounds every member by the schema before reading it.
            raise _GiveUp
        if name in self._found or any(m.name == name for m in self._members):
            raise _GiveUp
        usize, csize = _zip64_sizes(extra, usize, csize)
        self._cur = _Member(name, offset, method, crc, csize, usize)
        self._left = csize
        self._inflate = zlib.decompressobj(-15) if method == 8 else None
        self._crc, self._seen = 0, 0
        self._npy_head, self._dtype, self._carry = bytearray(), None, b""
        self._state = "data"
        if csize == 0:
            self._end_member()
            self._state = "local"
        return True

    def _member_bytes(self, data: bytes) -> None:
        if not data:
            return
        self._crc = zlib.crc32(data, self._crc)
        self._seen += len(data)
        if self._dtype is None:
            self._npy_head += data
            data = self._parse_npy_header()
            if self._dtype is None:
                return
        self._array_bytes(data)

    def _parse_npy_header(self) -> bytes:
        from numpy.lib import format as npf

        head = bytes(self._npy_head)
        if len(head) < 10:
            return b""
        major = head[6]
        hlen_size = 2 if major == 1 else 4
        if len(head) < 8 + hlen_size:
            return b""
        (hlen,) = struct.unpack_from("<H" if hlen_size == 2 else "<I", head, 8)
        end = 8 + hlen_size + hlen
        if len(head) < end:
            if len(head) > 1 << 20:
                raise _GiveUp
            return b""
        fh = io.BytesIO(head[:end])
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = npf.read_array_header_1_0(fh)
        else:
            shape, _fortran, dtype = npf.read_array_header_2_0(fh)
        if dtype.hasobject or dtype.itemsize == 0:
            raise _GiveUp  # the ordinary pass reports it
        self._dtype, self._shape = dtype, tuple(shape)
        self._expect = math.prod(self._shape) * dtype.itemsize
        self._got = 0
        return head[end:]

    def _array_bytes(self, data: bytes) -> None:
        assert self._dtype is not None and self._cur is not None
        if self._carry:
            data = self._carry + data
        item = self._dtype.itemsize
        usable = len(data) - len(data) % item
        self._carry = data[usable:]
        self._got += usable
        if self._got > self._expect:
            raise _GiveUp
        for start in range(0, usable, _BLOCK):
            a = np.frombuffer(
                data, dtype=self._dtype, count=min(_BLOCK, usable - start) // item, offset=start
            )
            if self._cur.name == "features.npy":
                self._finite = self._finite and finite_for_training(a)
            elif (
                self._cur.name == "labels.npy" and np.issubdtype(self._dtype, np.integer) and a.size
            ):
                lo, hi = int(a.min()), int(a.max())
                self._lo = lo if self._lo is None else min(self._lo, lo)
                self._hi = hi if self._hi is None else max(self._hi, hi)

    def _end_member(self) -> None:
        cur = self._cur
        assert cur is not None
        if self._inflate is not None:
            self._member_bytes(self._inflate.flush())
            if not self._inflate.eof:
                raise _GiveUp
        if (
            self._dtype is None
            or self._carry
            or self._got != self._expect
            or self._seen != cur.size
            or (self._crc & 0xFFFFFFFF) != cur.crc
        ):
            raise _GiveUp
        self._found[cur.name] = (self._shape, self._dtype)
        self._members.append(cur)
        self._cur = None

    # -- result
    def summary(self) -> ShardSummary | None:
        """The summary if the whole stream was understood and is consistent, else None."""
        if self._failed or self._state != "tail" or set(self._found) != NPZ_MEMBERS:
            return None
        try:
            if not self._central_directory_matches(bytes(self._buf)):
                return None
        except (_GiveUp, ValueError, struct.error):
            return None
        (fshape, fdtype), (yshape, ydtype) = self._found["features.npy"], self._found["labels.npy"]
        return ShardSummary(fshape, fdtype, yshape, ydtype, self._lo, self._hi, self._finite)

    def _central_directory_matches(self, tail: bytes) -> bool:
        """The central directory names the same members, at the same offsets, sizes and CRCs."""
        pos = 0
        entries: list[_Member] = []
        while tail[pos : pos + 4] == _CENTRAL:
            (_, _vm, _vn, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen, _disk, _ia, _ea,
             off) = struct.unpack_from("<4sHHHHHHIIIHHHHHII", tail, pos)  # fmt: skip
            name = tail[pos + 46 : pos + 46 + nlen].decode("utf-8")
            extra = tail[pos + 46 + nlen : pos + 46 + nlen + xlen]
            usize, csize, off = _zip64_sizes(extra, usize, csize, off)
            entries.append(_Member(name, off, method, crc, csize, usize))
            if flags & 0x0009:
                return False
            pos += 46 + nlen + xlen + clen
        if tail[pos : pos + 4] == _ZIP64_EOCD:
            (size,) = struct.unpack_from("<Q", tail, pos + 4)
            pos += 12 + size
            if tail[pos : pos + 4] != _ZIP64_LOCATOR:
                return False
            pos += 20
        if tail[pos : pos + 4] != _EOCD:
            return False
        (_, _disk, _cd_disk, n_here, n_total, _cd_size, cd_off, clen) = struct.unpack_from(
            "<4sHHHHIIH", tail, pos
        )
        if pos + 22 + clen != len(tail):
            return False  # bytes after the archive
        if cd_off not in (0xFFFFFFFF, self._tail_at) or n_total not in (0xFFFF, len(entries)):
            return False
        return sorted(
            (e.name, e.offset, e.method, e.crc, e.compressed, e.size) for e in entries
        ) == sorted(
            (m.name, m.offset, m.method, m.crc, m.compressed, m.size) for m in self._members
        )


def _zip64_sizes(extra: bytes, usize: int, csize: int, offset: int | None = None) -> Any:
    """Resolve 0xFFFFFFFF sizes (and offset) from the zip64 extra field, in its fixed order."""
    need = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF]
    pos = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + hlen]
        if hid == 0x0001:
            vals = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if need[0]:
                usize = vals.pop(0)
            if need[1]:
                csize = vals.pop(0)
            if need[2]:
                offset = vals.pop(0)
            break
        pos += 4 + hlen
    else:
        if any(need):
            raise _GiveUp
    if offset is None:
        return usize, csize
    return usize, csize, offset
