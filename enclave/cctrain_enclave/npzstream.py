"""The one NPZ parser: a strict push parser, fed the decrypted plaintext in order.

It is the only code that reads NPZ structure. At ingest it is fed each chunk as it is
decrypted and keeps only a constant amount (a few headers, one inflate window, one
block of values); at training the same code is fed the same committed bytes again and
writes the values into arrays the caller allocated (rows come from the receipt). So what
the enclave validated and signed a receipt for is exactly what it trains on.

It accepts exactly what ``numpy.savez`` and ``numpy.savez_compressed`` write to a file,
and nothing a zip reader could read two ways::

    local header + data   (features.npy and labels.npy, in either order, nothing else)
    local header + data
    central directory     (one entry per member, in the same order, matching it field by field)
    [zip64 end record + zip64 locator]
    end record            (no archive comment), then the end of the shard

Every byte belongs to exactly one of these records: no prefix, no gap, no overlap, no
trailing data, no comment (the hiding place of a second end record), no data descriptor,
no encryption. Members are stored or deflated; a deflated member is inflated only up to the
size its headers declare, which must be what its npy header declares and within the schema's
bound (no zip bombs). npy headers must be in numpy's own layout with a plain numeric dtype
(never objects: nothing is ever unpickled); ``fortran_order`` is honoured. Under a
``data.labels.vocabulary`` the labels are fixed-width unicode (``<U``/``>U``, at most
:data:`~cctrain.policy.MAX_LABEL_CHARS` characters): each is matched by its code points
(never decoded) against the vocabulary and streamed as its index.

Errors are :class:`~cctrain.errors.ShardError` naming structure only (members, offsets,
sizes, fields), never a value of the data.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cctrain.errors import ShardError
from cctrain.policy import MAX_LABEL_CHARS
from cctrain_enclave.shards import (
    NPZ_MEMBERS,
    LatchingParser,
    ShardArrays,
    ShardSummary,
    feature_shape,
    finite_for_training,
)

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_ZIP64_EOCD = b"PK\x06\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_LOCAL_FIXED, _CENTRAL_FIXED, _EOCD_SIZE, _ZIP64_EOCD_SIZE, _LOCATOR_SIZE = 30, 46, 22, 56, 20
_U32, _U16 = 0xFFFFFFFF, 0xFFFF
_ZIP64_EXTRA = 0x0001
#: Flags that change nothing about how a member reads: deflate's speed hint (bits 1-2) and
#: "the name is UTF-8" (bit 11). Encryption (0, 6), data descriptors (3), patches (5) and a
#: masked directory (13) are refused.
_HARMLESS_FLAGS = 0x0806
_STORED, _DEFLATED = 0, 8
#: Zip 4.5 is what zip64 and deflate need; a higher "version needed" is a feature we lack.
_MAX_VERSION_NEEDED = 45
_MAX_NAME, _MAX_EXTRA = 64, 64
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 4096
#: Values are checked and copied in blocks of at most this many bytes (bounded memory).
_BLOCK = 1 << 20
#: Compressed input handed to zlib at a time, so its unconsumed tail stays small.
_INFLATE_IN = 64 << 10
_MAX_ITEMSIZE = 8

# numpy's own header layout (numpy.lib.format): keys sorted, repr values, space padding.
_NUMBER = r"(?:0|[1-9][0-9]{0,17})"
_NPY_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[^'\\]{1,8})', 'fortran_order': (?P<fortran>True|False), "
    rf"'shape': \((?P<shape>|{_NUMBER},|{_NUMBER}(?:, {_NUMBER}){{1,31}})\), \}} *\n"
)
_DESCR = re.compile(r"(?P<order>[<>|])(?P<kind>[biuf])(?P<size>[1248])")
#: Fixed-width unicode (UCS-4 code points, NUL-padded): text labels under a vocabulary.
_TEXT_DESCR = re.compile(r"(?P<order>[<>])U(?P<chars>[1-9][0-9]{0,2})")


def _name(raw: bytes) -> str:
    """A member name as it can appear in an error: structure, shown with repr."""
    return raw.decode("utf-8", "replace")


def _fail(msg: str) -> ShardError:
    return ShardError(f"not a valid npz shard: {msg}")


@dataclass(frozen=True)
class _Member:
    name: str
    raw_name: bytes
    offset: int
    flags: int
    method: int
    crc: int
    csize: int
    usize: int


def member_bound(name: str, schema: Mapping[str, Any]) -> int:
    """The most bytes a member may declare (and inflate to) under the schema."""
    per_row = math.prod(feature_shape(schema)) if name == "features.npy" else 1
    item = _MAX_ITEMSIZE
    if name == "labels.npy" and "vocabulary" in schema["labels"]:
        item = 4 * MAX_LABEL_CHARS
    return int(schema["max_rows"]) * per_row * item + _MAX_NPY_HEADER + 16


class Vocabulary:
    """Text labels to their indices, compared as code points: a value is never decoded (a
    hostile array may hold any 32-bit values) and never quoted."""

    def __init__(self, labels: Any) -> None:
        self._labels = [str(v) for v in labels]
        self._tables: dict[int, dict[bytes, int]] = {}

    def _table(self, width: int) -> dict[bytes, int]:
        """Each label that fits ``width`` characters, as NUL-padded little-endian UCS-4."""
        if width not in self._tables:
            self._tables[width] = {
                np.array(v, dtype=f"<U{width}").tobytes(): i
                for i, v in enumerate(self._labels)
                if len(v) <= width
            }
        return self._tables[width]

    def indices(self, data: memoryview, dtype: np.dtype[Any]) -> np.ndarray | None:
        """The index of every label in ``data`` (values of ``dtype``, ``<U``/``>U``), or None
        when one is not in the vocabulary."""
        width = dtype.itemsize // 4
        points = np.frombuffer(data, dtype=np.dtype("u4").newbyteorder(dtype.byteorder))
        rows = np.ascontiguousarray(points.astype("<u4").reshape(-1, width))
        unique, inverse = np.unique(rows.view(f"V{4 * width}").ravel(), return_inverse=True)
        table = self._table(width)
        ids = np.array([table.get(u.tobytes(), -1) for u in unique], dtype=np.int64)
        if (ids < 0).any():
            return None
        return ids[inverse.ravel()]


class _Fill:
    """Writes a member's values, in the order they stream, into the caller's array."""

    def __init__(self, dest: np.ndarray, fortran: bool) -> None:
        # A Fortran-order array streams as the C-order enumeration of its transpose, which
        # ``.flat`` walks (in C, without a copy) when the view is not contiguous.
        self.view = dest.T if fortran else dest
        self.flat = self.view.reshape(-1) if self.view.flags.c_contiguous else self.view.flat

    def write(self, start: int, values: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # refused afterwards as not finite
            self.flat[start : start + values.size] = values


class _MemberReader:
    """One member's bytes: inflate (bounded), CRC, npy header, values."""

    def __init__(
        self,
        member: _Member,
        dest: np.ndarray | None,
        rows: int | None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        self.m = member
        self.dest = dest
        self.rows = rows
        self.vocabulary = vocabulary  # labels.npy under data.labels.vocabulary
        self.inflater = zlib.decompressobj(-15) if member.method == _DEFLATED else None
        self.crc = 0
        self.plain = 0  # uncompressed bytes seen
        self.head = bytearray()
        self.header_end: int | None = None  # npy header length, once parsed
        self.dtype: np.dtype[Any] | None = None
        self.shape: tuple[int, ...] = ()
        self.count = 0  # values expected
        self.done = 0  # values seen
        self.carry = b""
        self.fill: _Fill | None = None
        self.finite = True
        self.lo: int | None = None
        self.hi: int | None = None

    # -- compressed side
    def take(self, data: memoryview) -> None:
        if self.inflater is None:
            self._plain(data)
            return
        d = self.inflater
        for start in range(0, len(data), _INFLATE_IN):
            piece: Any = data[start : start + _INFLATE_IN]
            while True:
                if d.eof:
                    if len(piece) or d.unused_data:
                        raise _fail(
                            f"member {self.m.name!r}: its deflate stream ends before its "
                            f"{self.m.csize} compressed bytes do"
                        )
                    break
                # Never inflate more than the declared size (+1 byte to notice an excess).
                limit = min(_BLOCK, self.m.usize - self.plain + 1)
                try:
                    out = d.decompress(piece, limit)
                except zlib.error:
                    raise _fail(f"member {self.m.name!r} is not a valid deflate stream") from None
                if out:
                    self._plain(memoryview(out))
                piece = d.unconsumed_tail
                if not piece and len(out) < limit:
                    break

    def end(self) -> None:
        m = self.m
        if self.inflater is not None and not (self.inflater.eof and not self.inflater.unused_data):
            raise _fail(f"member {m.name!r}: its deflate stream is truncated")
        if self.header_end is None:
            raise _fail(f"member {m.name!r} is too short for an npy header")
        if self.plain != m.usize or self.done != self.count or self.carry:
            raise _fail(
                f"member {m.name!r} holds {self.plain} bytes, its headers declare {m.usize}"
            )
        if self.crc != m.crc:
            raise _fail(f"member {m.name!r} fails its CRC-32 check")

    # -- uncompressed side
    def _plain(self, data: memoryview) -> None:
        if not len(data):
            return
        self.crc = zlib.crc32(data, self.crc)
        self.plain += len(data)
        if self.plain > self.m.usize:
            raise _fail(
                f"member {self.m.name!r} holds more than the {self.m.usize} bytes it declares"
            )
        if self.header_end is None:
            data = self._npy_header(data)
            if self.header_end is None:
                return
        self._values(data)

    def _npy_header(self, data: memoryview) -> memoryview:
        want = 12 if len(self.head) < 12 else self._header_total()
        while True:
            take = want - len(self.head)
            self.head += data[:take]
            data = data[take:]
            if len(self.head) < want:
                return data
            if want == 12:
                want = self._header_total()
                if len(self.head) < want:
                    continue
            self._parse_npy_header(bytes(self.head))
            return data

    def _header_total(self) -> int:
        head, name = bytes(self.head), self.m.name
        if head[:6] != _NPY_MAGIC:
            raise _fail(f"member {name!r} is not an npy array (no npy magic)")
        if (head[6], head[7]) not in ((1, 0), (2, 0), (3, 0)):
            raise _fail(f"member {name!r} has npy format version {head[6]}.{head[7]}")
        total: int = (
            10 + struct.unpack_from("<H", head, 8)[0]
            if head[6] == 1
            else 12 + struct.unpack_from("<I", head, 8)[0]
        )
        if total > _MAX_NPY_HEADER:
            raise _fail(f"member {name!r} has an npy header of {total} bytes")
        return total

    def _parse_npy_header(self, head: bytes) -> None:
        name = self.m.name
        start = 10 if head[6] == 1 else 12
        try:
            text = head[start:].decode("ascii")
        except UnicodeDecodeError:
            text = ""
        match = _NPY_HEADER.fullmatch(text)
        if match is None:
            raise _fail(f"member {name!r}: its npy header is not in the layout numpy writes")
        descr = match["descr"]
        if descr.lstrip("<>|=").startswith("O"):
            raise _fail(f"member {name!r} holds Python objects (pickle is never allowed)")
        d = _DESCR.fullmatch(descr)
        unicode = _TEXT_DESCR.fullmatch(descr)
        if unicode is not None:
            self._check_text(descr, int(unicode["chars"]))
        elif (
            d is None
            or (d["order"] == "|") != (d["size"] == "1")
            or (d["kind"] == "b" and d["size"] != "1")
            or (d["kind"] == "f" and d["size"] == "1")
        ):
            raise _fail(f"member {name!r} has dtype {descr!r}: only plain numbers are accepted")
        dtype = np.dtype(descr)
        shape = tuple(int(v) for v in match["shape"].split(",") if v.strip())
        count = math.prod(shape)
        if len(head) + count * dtype.itemsize != self.m.usize:
            raise _fail(
                f"member {name!r}: its npy header declares {count * dtype.itemsize} bytes of "
                f"values, its zip headers {self.m.usize - len(head)}"
            )
        self.dtype, self.shape, self.count = dtype, shape, count
        self.header_end = len(head)
        if self.dest is not None:
            self._check_destination()
            self.fill = _Fill(self.dest, match["fortran"] == "True")

    def _check_text(self, descr: str, chars: int) -> None:
        name = self.m.name
        if self.vocabulary is None:
            raise _fail(
                f"member {name!r} has dtype {descr!r}: only plain numbers are accepted "
                "(text only as the labels of a data.labels.vocabulary)"
            )
        if chars > MAX_LABEL_CHARS:
            raise _fail(
                f"member {name!r} holds text {chars} characters wide, more than the "
                f"{MAX_LABEL_CHARS} a label may have"
            )

    def _check_destination(self) -> None:
        """At training the arrays were sized from the receipt: the member must fit exactly."""
        assert self.dest is not None and self.dtype is not None
        if self.shape != tuple(self.dest.shape):
            raise ShardError(
                f"npz member {self.m.name!r} has shape {self.shape}, the receipt's "
                f"{self.rows} rows want {tuple(self.dest.shape)}"
            )
        if self.dtype.kind not in "iuf" and not (
            self.dtype.kind == "U" and self.vocabulary is not None
        ):
            raise ShardError(f"npz member {self.m.name!r} has dtype {self.dtype}")

    def _values(self, data: memoryview) -> None:
        assert self.dtype is not None
        item = self.dtype.itemsize
        if self.carry:
            need = item - len(self.carry)
            self.carry += bytes(data[:need])
            data = data[need:]
            if len(self.carry) < item:
                return
            self._block(memoryview(self.carry))
            self.carry = b""
        usable = len(data) - len(data) % item
        step = _BLOCK - _BLOCK % item
        for start in range(0, usable, step):
            self._block(data[start : min(usable, start + step)])
        self.carry = bytes(data[usable:])

    def _block(self, data: memoryview) -> None:
        assert self.dtype is not None
        values: np.ndarray = np.frombuffer(data, dtype=self.dtype)
        if self.done + values.size > self.count:
            raise _fail(f"member {self.m.name!r} has data beyond its array")
        if self.dtype.kind == "U":
            assert self.vocabulary is not None  # checked with the npy header
            ids = self.vocabulary.indices(data, self.dtype)
            if ids is None:
                raise ShardError(
                    f"npz member {self.m.name!r} holds a label that is not in "
                    "data.labels.vocabulary"
                )
            values = ids
        if self.m.name == "features.npy" or self.dtype.kind == "f":
            # Features, or regression targets (a classification refuses float labels).
            self.finite = self.finite and finite_for_training(values)
        elif values.size:
            lo, hi = int(values.min()), int(values.max())
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        if self.fill is not None:
            self.fill.write(self.done, values)
        self.done += values.size


class NpzParser(LatchingParser):
    """Feed the plaintext in order with :meth:`feed`, then call :meth:`finish`.

    With ``out`` (training) the members' values are written into ``out.features`` and
    ``out.labels``, whose shapes (rows from the receipt) the members must have exactly; the
    caller may use them only after :meth:`finish` returned and the plaintext commitment
    matched. Once it has refused, every later call raises the same error.
    """

    def __init__(self, schema: Mapping[str, Any], *, out: ShardArrays | None = None) -> None:
        self._bounds = {n: member_bound(n, schema) for n in NPZ_MEMBERS}
        vocabulary = schema["labels"].get("vocabulary")
        self._vocabulary = Vocabulary(vocabulary) if vocabulary else None
        self._out = out
        self._at = 0  # stream offset of the next byte not yet consumed
        self._record_at = 0  # stream offset of the record being gathered
        self._hold = bytearray()
        self._want = 4
        self._state = "signature"
        self._phase = "members"  # members → directory → locator → end → done
        self._members: list[_Member] = []
        self._readers: dict[str, _MemberReader] = {}
        self._reader: _MemberReader | None = None
        self._left = 0  # compressed bytes left in the current member
        self._entries = 0  # central directory entries checked
        self._cd_start = 0
        self._zip64_at: int | None = None

    # -- input (feed and finish: LatchingParser)
    def _feed(self, mv: memoryview) -> None:
        pos, n = 0, len(mv)
        while pos < n:
            if self._state == "data":
                assert self._reader is not None
                take = min(self._left, n - pos)
                self._reader.take(mv[pos : pos + take])
                pos += take
                self._at += take
                self._left -= take
                if self._left == 0:
                    self._end_member()
                continue
            if self._state == "done":
                raise _fail(
                    f"{n - pos}+ bytes of trailing data after the end record at offset "
                    f"{self._record_at}"
                )
            take = min(self._want - len(self._hold), n - pos)
            self._hold += mv[pos : pos + take]
            pos += take
            self._at += take
            if len(self._hold) == self._want:
                self._record()

    def _finish(self) -> ShardSummary:
        if self._state != "done":
            if self._at == 0:
                raise ShardError("npz shard is empty")
            raise _fail(f"it ends at offset {self._at}, inside a record or before its end record")
        f, y = self._readers["features.npy"], self._readers["labels.npy"]
        assert f.dtype is not None and y.dtype is not None
        return ShardSummary(f.shape, f.dtype, y.shape, y.dtype, y.lo, y.hi, f.finite, y.finite)

    # -- records
    def _record(self) -> None:
        rec = bytes(self._hold)
        state = self._state
        if state == "signature":
            self._signature(rec)
        elif state == "local":
            nlen, xlen = struct.unpack_from("<HH", rec, 26)
            if nlen > _MAX_NAME or xlen > _MAX_EXTRA:
                raise _fail(
                    f"the member at offset {self._record_at} has a {nlen}-byte name and a "
                    f"{xlen}-byte extra field (numpy.savez writes neither)"
                )
            self._state, self._want = "local+", _LOCAL_FIXED + nlen + xlen
            if nlen + xlen == 0:
                self._record()
        elif state == "local+":
            self._local_header(rec)
        elif state == "central":
            nlen, xlen, clen = struct.unpack_from("<HHH", rec, 28)
            if clen:
                raise _fail(f"central directory entry {self._entries + 1} has a file comment")
            if nlen > _MAX_NAME or xlen > _MAX_EXTRA:
                raise _fail(
                    f"central directory entry {self._entries + 1} has a {nlen}-byte name and a "
                    f"{xlen}-byte extra field"
                )
            self._state, self._want = "central+", _CENTRAL_FIXED + nlen + xlen
            if nlen + xlen == 0:
                self._record()
        elif state == "central+":
            self._central_entry(rec)
        elif state == "zip64-end":
            self._zip64_end(rec)
        elif state == "locator":
            self._locator(rec)
        else:
            assert state == "end"
            self._end_record(rec)

    def _next_record(self) -> None:
        self._hold.clear()
        self._record_at = self._at
        self._state, self._want = "signature", 4

    def _signature(self, sig: bytes) -> None:
        phase, at = self._phase, self._record_at
        expected = {
            "members": (_LOCAL, _CENTRAL),
            "directory": (_CENTRAL, _ZIP64_EOCD, _EOCD),
            "locator": (_ZIP64_LOCATOR,),
            "end": (_EOCD,),
        }[phase]
        if sig not in expected or (at == 0 and sig != _LOCAL):
            if at == 0:
                raise _fail("it does not start with a zip member (a prefix, or not a zip archive)")
            raise _fail(f"unexpected bytes at offset {at} (a gap, or a record out of place)")
        if sig == _LOCAL:
            self._state, self._want = "local", _LOCAL_FIXED
            return
        if phase == "members":
            self._end_of_members()
        if sig == _CENTRAL:
            self._state, self._want = "central", _CENTRAL_FIXED
        elif sig == _ZIP64_EOCD:
            self._state, self._want = "zip64-end", _ZIP64_EOCD_SIZE
        elif sig == _ZIP64_LOCATOR:
            self._state, self._want = "locator", _LOCATOR_SIZE
        else:
            self._state, self._want = "end", _EOCD_SIZE

    def _end_of_members(self) -> None:
        names = sorted(m.name for m in self._members)
        if set(names) != NPZ_MEMBERS:
            raise _fail(f"npz must contain exactly 'features' and 'labels', got {names}")
        self._phase = "directory"
        self._cd_start = self._record_at

    def _local_header(self, rec: bytes) -> None:
        (_, version, flags, method, _time, _date, crc, csize, usize, nlen, _xlen) = (
            struct.unpack_from("<4sHHHHHIIIHH", rec)
        )
        raw_name = rec[_LOCAL_FIXED : _LOCAL_FIXED + nlen]
        name, at = _name(raw_name), self._record_at
        if name not in NPZ_MEMBERS:
            raise _fail(f"npz must contain exactly 'features' and 'labels', found member {name!r}")
        if any(m.name == name for m in self._members):
            raise _fail(f"member {name!r} appears twice")
        self._member_flags(name, version, flags, method)
        zip64 = _zip64_field(rec[_LOCAL_FIXED + nlen :], f"the local header of {name!r}")
        if zip64 is None:
            if _U32 in (csize, usize):
                raise _fail(f"the local header of {name!r} has zip64 sizes but no zip64 field")
        else:
            if len(zip64) != 2:
                raise _fail(f"the local header of {name!r} has a zip64 field of the wrong size")
            usize = _resolve(usize, zip64[0], name)
            csize = _resolve(csize, zip64[1], name)
        if method == _STORED and csize != usize:
            raise _fail(f"stored member {name!r} declares {csize} bytes stored for {usize}")
        if usize > self._bounds[name]:
            raise _fail(
                f"member {name!r} declares {usize} bytes, over the schema bound "
                f"{self._bounds[name]}"
            )
        member = _Member(name, raw_name, at, flags, method, crc, csize, usize)
        self._members.append(member)
        dest = None
        if self._out is not None:
            dest = self._out.features if name == "features.npy" else self._out.labels
        self._reader = _MemberReader(
            member,
            dest,
            self._out.rows if self._out else None,
            self._vocabulary if name == "labels.npy" else None,
        )
        self._readers[name] = self._reader
        self._hold.clear()
        self._state, self._left = "data", csize
        if csize == 0:
            self._end_member()

    @staticmethod
    def _member_flags(name: str, version: int, flags: int, method: int) -> None:
        if flags & 0x0041:
            raise _fail(f"member {name!r} is encrypted")
        if flags & 0x0008:
            raise _fail(f"member {name!r} uses a data descriptor (sizes after its data)")
        if flags & ~_HARMLESS_FLAGS:
            raise _fail(f"member {name!r} sets zip flags {flags:#06x}")
        if method not in (_STORED, _DEFLATED):
            raise _fail(
                f"member {name!r} uses compression method {method} (only stored and deflate)"
            )
        if version > _MAX_VERSION_NEEDED:
            raise _fail(f"member {name!r} needs zip version {version / 10:.1f}")

    def _end_member(self) -> None:
        assert self._reader is not None
        self._reader.end()
        self._reader = None
        self._next_record()

    def _central_entry(self, rec: bytes) -> None:
        (_, _made_by, version, flags, method, _time, _date, crc, csize, usize, nlen, _xlen,
         _clen, disk, _iattr, _eattr, offset) = struct.unpack_from("<4sHHHHHHIIIHHHHHII", rec)  # fmt: skip
        i = self._entries
        self._entries += 1
        if i >= len(self._members):
            raise _fail(
                f"the central directory lists more than the {len(self._members)} members "
                "the archive holds"
            )
        m = self._members[i]
        raw_name = rec[_CENTRAL_FIXED : _CENTRAL_FIXED + nlen]
        what = f"central directory entry {i + 1}"
        if disk:
            raise _fail(f"{what} is on disk {disk} (multi-disk archives are refused)")
        self._member_flags(_name(raw_name), version, flags, method)
        # The zip64 field holds exactly the values whose 32-bit fields are 0xFFFFFFFF.
        wanted = [v == _U32 for v in (usize, csize, offset)]
        zip64 = _zip64_field(rec[_CENTRAL_FIXED + nlen :], what) or ()
        if len(zip64) != sum(wanted):
            raise _fail(f"{what} has a zip64 field that does not fit its 32-bit fields")
        values = iter(zip64)
        usize, csize, offset = (
            next(values) if w else v for v, w in zip((usize, csize, offset), wanted, strict=True)
        )
        mismatches = [
            f"{field} {got!r}, local header {want!r}"
            for field, got, want in (
                ("name", _name(raw_name), m.name),
                ("offset", offset, m.offset),
                ("flags", flags, m.flags),
                ("method", method, m.method),
                ("crc", crc, m.crc),
                ("compressed size", csize, m.csize),
                ("size", usize, m.usize),
            )
            if got != want
        ]
        if raw_name != m.raw_name and not mismatches:
            mismatches.append("name bytes differ from the local header's")
        if mismatches:
            raise _fail(f"{what} does not match its local header: " + "; ".join(mismatches))
        self._next_record()

    def _directory_checks(self, entries: int) -> None:
        if self._entries != len(self._members):
            raise _fail(
                f"the central directory lists {self._entries} of the {len(self._members)} members"
            )
        if entries != len(self._members):
            raise _fail(
                f"the end record counts {entries} members, the archive holds {len(self._members)}"
            )

    def _zip64_end(self, rec: bytes) -> None:
        (_, size, _made_by, _version, disk, cd_disk, n_here, n_total, cd_size, cd_offset) = (
            struct.unpack_from("<4sQHHIIQQQQ", rec)
        )
        if size != _ZIP64_EOCD_SIZE - 12:
            raise _fail("the zip64 end record has extensible data")
        if disk or cd_disk:
            raise _fail("the zip64 end record names another disk (multi-disk archives are refused)")
        self._directory_checks(n_total)
        if n_here != n_total:
            raise _fail("the zip64 end record counts members on this disk differently")
        self._check_directory_span(cd_size, cd_offset, "the zip64 end record")
        self._zip64_at = self._record_at
        self._phase = "locator"
        self._next_record()

    def _locator(self, rec: bytes) -> None:
        (_, disk, offset, disks) = struct.unpack_from("<4sIQI", rec)
        if disk or disks != 1 or offset != self._zip64_at:
            raise _fail("the zip64 locator does not point at the zip64 end record on one disk")
        self._phase = "end"
        self._next_record()

    def _check_directory_span(self, size: int, offset: int, what: str, zip64: bool = False) -> None:
        actual_size, actual_offset = self._cd_end() - self._cd_start, self._cd_start
        size_ok = size == actual_size or (zip64 and size == _U32)
        offset_ok = offset == actual_offset or (zip64 and offset == _U32)
        if not (size_ok and offset_ok):
            raise _fail(
                f"{what} places the central directory at offset {offset} ({size} bytes); it is "
                f"at {actual_offset} ({actual_size} bytes)"
            )

    def _cd_end(self) -> int:
        return self._zip64_at if self._zip64_at is not None else self._record_at

    def _end_record(self, rec: bytes) -> None:
        (_, disk, cd_disk, n_here, n_total, cd_size, cd_offset, comment) = struct.unpack_from(
            "<4sHHHHIIH", rec
        )
        if comment:
            raise _fail(
                f"the archive has a {comment}-byte comment (refused: a comment can hide a "
                "second directory)"
            )
        if disk or cd_disk:
            raise _fail("the end record names another disk (multi-disk archives are refused)")
        zip64 = self._zip64_at is not None
        if not zip64:
            self._directory_checks(n_total)
        for n in (n_here, n_total):
            if n != len(self._members) and not (zip64 and n == _U16):
                raise _fail(
                    f"the end record counts {n} members, the archive holds {len(self._members)}"
                )
        self._check_directory_span(cd_size, cd_offset, "the end record", zip64)
        self._hold.clear()
        self._state = "done"
        self._phase = "done"


def _zip64_field(extra: bytes, what: str) -> tuple[int, ...] | None:
    """The values of the only extra field allowed (zip64), or None when there is none."""
    if not extra:
        return None
    if len(extra) < 4:
        raise _fail(f"{what} has a malformed extra field")
    field_id, size = struct.unpack_from("<HH", extra)
    if field_id != _ZIP64_EXTRA or size + 4 != len(extra) or size % 8 or not size:
        raise _fail(f"{what} has an extra field other than one zip64 field")
    return struct.unpack_from(f"<{size // 8}Q", extra, 4)


def _resolve(short: int, long: int, name: str) -> int:
    if short not in (_U32, long):
        raise _fail(f"the local header of {name!r} disagrees with its zip64 field")
    return long
