"""The one Parquet parser: named, typed, flat columns, read one row group at a time.

Parquet's structure is at the end of the file (the footer: schema, row groups, where each
column chunk lies), so no push parser can judge a shard as its chunks stream in. This one
does it in two steps over the same committed bytes:

* :meth:`~ParquetParser.feed` (each decrypted chunk, in order, as for every format) keeps
  only each piece's length and SHA-256 (32 bytes per chunk), checks the leading magic at
  once, and keeps the last 8 bytes (footer length and magic);
* :meth:`~ParquetParser.finish` reads the file by random access through the attached
  :class:`~cctrain_enclave.shards.PieceSource` (the store's decrypting reader: every piece
  is read from the stored ciphertext, authenticated, and its SHA-256 compared with the one
  recorded in the committed pass), so every byte it reads is a byte of the plaintext the
  commitment covers, and a host that swaps stored chunks between the two steps is caught.

Memory: the digest table, the footer (at most :data:`MAX_FOOTER` bytes), one piece or two,
and one decoded row group, which the policy bounds (``data.parquet.max_row_group_bytes``):
a row group larger than that, by the footer's row count or by the sizes its page headers
declare (which are what Arrow allocates to decompress), is refused before Arrow decodes it.

What it accepts: a file starting and ending with ``PAR1`` (no encrypted footer), every column
chunk in this file and within its data region, pages that tile each column chunk exactly,
flat columns (no lists, structs or maps; a column may be declared nullable but must hold no
null), distinct column names. The label is ``data.parquet.label_column``, the features
``data.parquet.feature_columns`` in that order (or every other column, in the file's order);
other columns are refused unless ``ignore_extra_columns`` (they are then never read).
Features: integer or floating-point columns, refused unless finite in float32; labels: an
integer column (``num_classes``), a string column (``vocabulary``; matched by Arrow against
the vocabulary, never decoded here) or a float32/float64 column (regression). Arrow
(pyarrow, pinned in the ``enclave`` extra) decodes pages; the structure around them is
checked here first.

Errors are :class:`~cctrain.errors.ShardError` naming structure (row groups, columns, types,
sizes), never a value of the data; Arrow's own messages are not passed on (they can quote
values), only what failed.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import io
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from cctrain.errors import ShardError
from cctrain_enclave.columns import feature_positions, repeated_name_problems
from cctrain_enclave.shards import (
    TEXT_LABELS,
    LatchingParser,
    PieceSource,
    ShardArrays,
    ShardChangedError,
    ShardSummary,
    feature_shape,
    finite_for_training,
    label_kind,
)

_MAGIC = b"PAR1"
_ENCRYPTED_MAGIC = b"PARE"
#: The largest footer read (schema + row group metadata; Arrow's thrift limits follow it).
MAX_FOOTER = 16 << 20
MAX_ROW_GROUPS = 65536
MAX_COLUMNS = 4096
#: A page header is parsed from at most this many bytes (statistics included).
_MAX_PAGE_HEADER = 64 << 10
#: Bytes per decoded value, the most Arrow holds per cell of a numeric column (and the
#: indices of a text column); the bound on a row group counts rows with it.
_CELL = 8


def _fail(msg: str) -> ShardError:
    return ShardError(f"not a valid parquet shard: {msg}")


# --------------------------------------------------------------------------- the pieces


class _PieceFile(io.RawIOBase):
    """The committed plaintext as a seekable file over its pieces, each checked against the
    digest recorded when it was fed; holds one piece at a time."""

    def __init__(self, source: PieceSource, ends: list[int], digests: bytes) -> None:
        super().__init__()
        self._source, self._ends, self._digests = source, ends, digests
        self._size = ends[-1] if ends else 0
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        #: The first failure raised to Arrow (re-raised whatever Arrow makes of it).
        self.failure: ShardError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _piece(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        try:
            data = self._source.piece(index)
        except ShardError as exc:
            self.failure = self.failure or exc
            raise
        start = self._ends[index - 1] if index else 0
        digest = self._digests[32 * index : 32 * index + 32]
        if len(data) != self._ends[index] - start or not hmac.compare_digest(
            hashlib.sha256(data).digest(), digest
        ):
            self.failure = self.failure or ShardChangedError(
                "its stored bytes changed between the committed pass and the read of its "
                "structure (altered at rest)"
            )
            raise self.failure
        self._cached = (index, data)
        return data

    def _copy(self, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset`` (less at the end of the file); the bytes copied."""
        end = min(offset + len(view), self._size)
        done = 0
        while offset < end:
            i = bisect.bisect_right(self._ends, offset)
            start = self._ends[i - 1] if i else 0
            piece = self._piece(i)
            take = min(end, self._ends[i]) - offset
            view[done : done + take] = piece[offset - start : offset - start + take]
            offset += take
            done += take
        return done

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end)."""
        out = bytearray(max(0, min(size, self._size - offset)))
        self._copy(offset, memoryview(out))
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        done = self._copy(self._pos, memoryview(buffer).cast("B"))
        self._pos += done
        return done


# --------------------------------------------------------------------------- thrift

#: What to keep of a Thrift struct: field id → ``"int"``, ``"bytes"``, ``"present"`` (kept as
#: True, value skipped), ``("list", spec)`` or a nested struct spec; other fields are skipped.
Spec = Mapping[int, Any]

_BOOL_TRUE, _BOOL_FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY = 1, 2, 3, 4, 5, 6, 7, 8
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12
_MAX_DEPTH = 16


class _Thrift:
    """Thrift's compact protocol, read strictly and selectively (only the fields a
    :data:`Spec` names are decoded). Every read is bounded by the buffer (IndexError:
    truncated) and every element consumes at least one byte, so no count in the input can
    make it loop longer than the input is long.

    The footer and the page headers are read here rather than through pyarrow's metadata
    accessors: on some hostile footers those throw a C++ exception that pyarrow does not
    catch, and the process aborts (found by this module's tests: a flipped footer byte that
    breaks a column's size statistics aborts ``RowGroupMetaData.column()``)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        result = shift = 0
        for _ in range(10):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
        raise ValueError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def _count(self, n: int) -> int:
        if n > len(self.data) - self.pos:
            raise IndexError("a container longer than the input")
        return n

    def value(self, kind: int, spec: Any, depth: int, *, in_container: bool = False) -> Any:
        """One value of ``kind``: decoded when ``spec`` asks for it, else skipped (None)."""
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deep")
        if kind in (_BOOL_TRUE, _BOOL_FALSE):
            # In a struct the value is the type; in a list or map it is one byte.
            value = self.byte() == 1 if in_container else kind == _BOOL_TRUE
            return _want(spec, "int", kind, value)
        if kind == _I8:
            return _want(spec, "int", kind, struct.unpack("b", bytes([self.byte()]))[0])
        if kind in (_I16, _I32, _I64):
            return _want(spec, "int", kind, self.zigzag())
        if kind == _DOUBLE:
            self.pos += 8
            if self.pos > len(self.data):
                raise IndexError("truncated")
            return _want(spec, None, kind, None)
        if kind == _BINARY:
            size = self._count(self.varint())
            data = self.data[self.pos : self.pos + size]
            self.pos += size
            return _want(spec, "bytes", kind, data)
        if kind in (_LIST, _SET):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self._count(self.varint())
            if not (isinstance(spec, tuple) and spec[0] == "list"):
                for _ in range(size):  # skipped: nothing kept per element
                    self.value(elem, None, depth + 1, in_container=True)
                return _want(spec, "list", kind, None)
            items = [self.value(elem, spec[1], depth + 1, in_container=True) for _ in range(size)]
            return _want(spec, "list", kind, items)
        if kind == _MAP:
            size = self._count(self.varint())
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.value(kv >> 4, None, depth + 1, in_container=True)
                    self.value(kv & 0x0F, None, depth + 1, in_container=True)
            return _want(spec, None, kind, None)
        if kind == _STRUCT:
            fields = self.struct(spec if isinstance(spec, Mapping) else {}, depth + 1)
            return _want(spec, "struct", kind, fields)
        raise ValueError(f"unknown thrift type {kind}")

    def struct(self, spec: Spec, depth: int = 0) -> dict[int, Any]:
        """A struct's fields that ``spec`` names (by id), decoded."""
        last = 0
        out: dict[int, Any] = {}
        while True:
            head = self.byte()
            if head == 0:
                return out
            kind, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            value = self.value(kind, spec.get(fid), depth)
            if fid in spec:
                out[fid] = value


def _want(spec: Any, got: str | None, kind: int, value: Any) -> Any:
    """``value`` if ``spec`` asks for what it is, None when it asks for nothing."""
    if spec is None:
        return None
    if spec == "present":
        return True
    wanted = spec if isinstance(spec, str) else "list" if isinstance(spec, tuple) else "struct"
    if wanted != got:
        raise ValueError(f"a field of thrift type {kind} where {wanted} belongs")
    return value


def _page_header(data: bytes) -> tuple[int, int, int]:
    """(header length, uncompressed size, compressed size) of the page header at ``data``."""
    t = _Thrift(data)
    fields = t.struct({2: "int", 3: "int"})
    if 2 not in fields or 3 not in fields:
        raise ValueError("a page header without its sizes")
    return t.pos, fields[2], fields[3]


# parquet.thrift: FileMetaData, RowGroup, ColumnChunk, ColumnMetaData (the fields read).
_COLUMN_META: Spec = {3: ("list", "bytes"), 4: "int", 5: "int", 6: "int", 7: "int",
                      9: "int", 11: "int"}  # fmt: skip
_COLUMN_CHUNK: Spec = {1: "bytes", 3: _COLUMN_META, 8: "present", 9: "present"}
_ROW_GROUP: Spec = {1: ("list", _COLUMN_CHUNK), 3: "int"}
_FILE: Spec = {3: "int", 4: ("list", _ROW_GROUP), 8: "present"}


class _Chunk:
    """Where a column chunk lies, and what it declares (from the footer)."""

    def __init__(self, fields: Mapping[int, Any], where: str) -> None:
        meta = fields.get(3)
        if fields.get(8) or fields.get(9):
            raise _fail(f"{where} is encrypted (Parquet modular encryption is refused)")
        if fields.get(1):
            raise _fail(f"{where} lies in another file")
        if not isinstance(meta, Mapping) or not {5, 7, 9} <= set(meta):
            raise _fail(f"{where} has no column metadata")
        self.num_values = int(meta[5])
        self.length = int(meta[7])
        # Where the chunk starts, as Arrow computes it: the dictionary page when it comes
        # first, else the first data page.
        start = int(meta[9])
        dictionary = int(meta.get(11) or 0)
        if 0 < dictionary < start:
            start = dictionary
        self.start = start


class _Layout:
    """The footer's row groups: rows, and each column chunk's place."""

    def __init__(self, footer: bytes) -> None:
        try:
            fields = _Thrift(footer).struct(_FILE)
        except (IndexError, ValueError, struct.error):
            raise _fail("its footer does not parse") from None
        if fields.get(8):
            raise _fail("its columns are encrypted (Parquet modular encryption is refused)")
        self.num_rows = int(fields.get(3, -1))
        groups = fields.get(4) or []
        if len(groups) > MAX_ROW_GROUPS:
            raise _fail(f"{len(groups)} row groups, at most {MAX_ROW_GROUPS}")
        self.groups: list[tuple[int, list[_Chunk]]] = []
        for g, rg in enumerate(groups):
            if not isinstance(rg, Mapping) or 3 not in rg:
                raise _fail(f"row group {g} has no row count")
            chunks = [
                _Chunk(c if isinstance(c, Mapping) else {}, f"row group {g}, column {i}")
                for i, c in enumerate(rg.get(1) or [])
            ]
            self.groups.append((int(rg[3]), chunks))


# --------------------------------------------------------------------------- the parser


class ParquetParser(LatchingParser):
    """Feed the plaintext in order with :meth:`feed`, :meth:`attach` the pieces, then call
    :meth:`finish`, which reads the file (and, with ``out``, writes its rows there)."""

    random_access = True

    def __init__(self, schema: Mapping[str, Any], *, out: ShardArrays | None = None) -> None:
        opts = schema.get("parquet") or {}
        self._label: str = str(opts.get("label_column", "label"))
        wanted = opts.get("feature_columns")
        self._wanted: tuple[str, ...] | None = tuple(wanted) if wanted else None
        self._ignore_extra = bool(opts.get("ignore_extra_columns", False))
        self._max_group = int(opts.get("max_row_group_bytes", 128 << 20))
        self._shape = feature_shape(schema)
        self._width = math.prod(self._shape)
        self._dtype = np.dtype(schema["features"]["dtype"])
        self._max_rows = int(schema["max_rows"])
        self._kind = label_kind(schema)
        self._vocabulary = list(schema["labels"].get("vocabulary") or ())
        self._out = out
        self._ends: list[int] = []
        self._digests = bytearray()
        self._head = b""
        self._tail = b""
        self._source: PieceSource | None = None
        if len(self._shape) != 1:  # the policy refuses this; still, refuse the shard
            self._error = ShardError("parquet shards need 1-D features; use npz for shaped ones")

    # -- input (feed and finish: LatchingParser)
    def _feed(self, data: memoryview) -> None:
        if not len(data):
            return
        size = self._ends[-1] if self._ends else 0
        self._ends.append(size + len(data))
        self._digests += hashlib.sha256(data).digest()
        if len(self._head) < 4:
            self._head += bytes(data[: 4 - len(self._head)])
            if len(self._head) == 4 and self._head != _MAGIC:
                raise _fail("it does not start with the Parquet magic 'PAR1'")
        self._tail = (self._tail + bytes(data[-8:]))[-8:]

    def attach(self, source: PieceSource) -> None:
        self._source = source

    def _finish(self) -> ShardSummary:
        size = self._ends[-1] if self._ends else 0
        if size == 0:
            raise ShardError("parquet shard is empty")
        if size < 12 or len(self._head) < 4:
            raise _fail(f"{size} bytes: too short for a Parquet file")
        if self._tail[4:] == _ENCRYPTED_MAGIC:
            raise _fail("its footer is encrypted (Parquet modular encryption is refused)")
        if self._tail[4:] != _MAGIC:
            raise _fail("it does not end with the Parquet magic 'PAR1' (truncated?)")
        (footer,) = struct.unpack("<I", self._tail[:4])
        if not 0 < footer <= size - 12 or footer > MAX_FOOTER:
            raise _fail(
                f"its footer length field says {footer} bytes, for a {size}-byte file "
                f"(at most {MAX_FOOTER})"
            )
        if self._source is None:
            raise ShardError("parquet shard: no random access to its bytes (internal)")
        reader = _PieceFile(self._source, self._ends, bytes(self._digests))
        try:
            return self._read(reader, data_end=size - 8 - footer, footer=footer)
        except ShardError:
            raise
        except Exception as exc:  # noqa: BLE001 - Arrow may raise anything on a hostile file
            if reader.failure is not None:
                raise reader.failure from None
            raise _fail(f"Arrow could not read it ({type(exc).__name__})") from None

    # -- the file
    def _read(self, reader: _PieceFile, *, data_end: int, footer: int) -> ShardSummary:
        import pyarrow as pa
        import pyarrow.parquet as pq

        layout = _Layout(reader.read_at(data_end, footer))
        source = pa.PythonFile(reader, mode="r")
        try:
            pf = pq.ParquetFile(
                source,
                read_dictionary=[self._label] if self._kind == "vocabulary" else None,
                pre_buffer=False,
                thrift_string_size_limit=MAX_FOOTER,
                thrift_container_size_limit=1 << 20,
            )
        except Exception as exc:  # noqa: BLE001
            if reader.failure is not None:
                raise reader.failure from None
            raise _fail(f"its footer does not parse ({type(exc).__name__})") from None
        meta = pf.metadata  # only its plain counts: see _Thrift on why
        if meta.num_row_groups != len(layout.groups) or meta.num_rows != layout.num_rows:
            raise _fail("Arrow reads its footer differently (internal)")
        names, labels_dtype = self._columns(pf)
        at = {n: i for i, n in enumerate(pf.schema_arrow.names)}
        label_at, feature_at = at[self._label], [at[n] for n in names]
        total = 0
        lo: int | None = None
        hi: int | None = None
        finite = labels_finite = True
        for g, (rows, chunks) in enumerate(layout.groups):
            if len(chunks) != len(pf.schema):
                raise _fail(
                    f"row group {g} has {len(chunks)} column chunks for {len(pf.schema)} columns"
                )
            self._check_row_group(reader, rows, chunks, g, [label_at, *feature_at], data_end)
            start = total
            total += rows
            if total > self._max_rows:
                raise ShardError(f"parquet shard has more than max_rows = {self._max_rows} rows")
            if self._out is not None and total > self._out.rows:
                raise ShardError(f"parquet shard has more rows than its receipt's {self._out.rows}")
            if rows == 0:
                continue
            try:
                table = pf.read_row_group(g, columns=[self._label, *names], use_threads=False)
            except Exception as exc:  # noqa: BLE001
                if reader.failure is not None:
                    raise reader.failure from None
                raise _fail(
                    f"Arrow could not decode row group {g} ({type(exc).__name__})"
                ) from None
            if table.num_rows != rows:
                raise _fail(
                    f"row group {g} decodes to {table.num_rows} rows, its footer says {rows}"
                )
            x = self._features(table, names, g)
            y = self._labels(table, g)
            finite = finite and finite_for_training(x)
            if self._kind == "target":
                labels_finite = labels_finite and finite_for_training(y)
            else:
                lo = int(y.min()) if lo is None else min(lo, int(y.min()))
                hi = int(y.max()) if hi is None else max(hi, int(y.max()))
            if self._out is not None:
                with np.errstate(over="ignore", invalid="ignore"):  # refused as not finite
                    self._out.features[start:total] = x
                    self._out.labels[start:total] = y
            del table, x, y
        if total != layout.num_rows:
            raise _fail(f"its row groups hold {total} rows, its footer says {layout.num_rows}")
        if self._out is not None and total != self._out.rows:
            raise ShardError(f"parquet shard has {total} rows, its receipt {self._out.rows}")
        return ShardSummary(
            features_shape=(total, *self._shape),
            features_dtype=self._dtype,
            labels_shape=(total,),
            labels_dtype=labels_dtype,
            label_min=lo,
            label_max=hi,
            finite=finite,
            labels_finite=labels_finite,
        )

    # -- the schema
    def _columns(self, pf: Any) -> tuple[list[str], np.dtype[Any]]:
        """The feature columns' names (in the policy's order, or the file's) and the labels'
        dtype, once every column read is checked."""
        import pyarrow as pa

        arrow = pf.schema_arrow
        names: list[str] = list(arrow.names)
        if len(names) > MAX_COLUMNS:
            raise _fail(f"{len(names)} columns, at most {MAX_COLUMNS}")
        problems = repeated_name_problems(names)
        if len(pf.schema) != len(names):
            problems.append(
                f"has nested columns ({len(pf.schema)} leaf columns for {len(names)} "
                "fields): only flat columns are accepted"
            )
        label = self._label
        at, column_problems = feature_positions(
            names,
            label=label,
            wanted=self._wanted,
            ignore_extra=self._ignore_extra,
            width=self._width,
            table="data.parquet",
        )
        problems += column_problems
        features = [names[i] for i in at]
        if problems:
            raise ShardError("parquet schema " + "; ".join(problems))
        for i, name in enumerate(names):
            if name != label and name not in features:
                continue  # ignored: never read
            column = pf.schema.column(i)
            if column.max_repetition_level != 0 or column.max_definition_level > 1:
                problems.append(f"column {name!r} is nested or repeated")
                continue
            kind = arrow.field(name).type
            if name == label:
                problems += self._label_type_problems(name, kind, pa)
            elif pa.types.is_dictionary(kind):
                problems.append(
                    f"column {name!r} is a dictionary (categorical) column: features are numbers"
                )
            elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                problems.append(f"column {name!r} has type {kind}: features are numbers")
        if problems:
            raise ShardError("parquet schema " + "; ".join(problems))
        label_type = arrow.field(label).type
        if self._kind == "vocabulary":
            return features, TEXT_LABELS
        return features, np.dtype(label_type.to_pandas_dtype())

    def _label_type_problems(self, name: str, kind: Any, pa: Any) -> list[str]:
        if self._kind == "vocabulary":
            # Read as a dictionary (see _labels), whatever the writer declared.
            value = kind.value_type if pa.types.is_dictionary(kind) else kind
            if not (pa.types.is_string(value) or pa.types.is_large_string(value)):
                return [f"label column {name!r} has type {kind}, want strings (a vocabulary)"]
            return []
        if pa.types.is_dictionary(kind):
            return [f"label column {name!r} is a dictionary (categorical) column"]
        if self._kind == "target":
            if not (pa.types.is_float32(kind) or pa.types.is_float64(kind)):
                return [
                    f"label column {name!r} has type {kind}, want float or double "
                    "(regression targets)"
                ]
            return []
        if not pa.types.is_integer(kind):
            return [f"label column {name!r} has type {kind}, want integers (class indices)"]
        return []

    # -- a row group, before Arrow decodes it
    def _check_row_group(
        self,
        reader: _PieceFile,
        rows: int,
        chunks: list[_Chunk],
        g: int,
        columns: list[int],
        data_end: int,
    ) -> None:
        """What Arrow would allocate for row group ``g``'s columns ``columns``, bounded."""
        if rows < 0:
            raise _fail(f"row group {g} has {rows} rows")
        if rows > self._max_rows:
            raise ShardError(f"parquet shard has more than max_rows = {self._max_rows} rows")
        decoded = rows * _CELL * len(columns)
        declared = stored = 0
        for c in columns:
            chunk = chunks[c]
            where = f"row group {g}, column {c}"
            if chunk.num_values != rows:
                raise _fail(f"{where} has {chunk.num_values} values for {rows} rows")
            start, length = chunk.start, chunk.length
            if not (4 <= start and 0 <= length and start + length <= data_end):
                raise _fail(
                    f"{where} is placed at [{start}, {start + length}), outside the data "
                    f"region [4, {data_end})"
                )
            stored += length
            if stored <= self._max_group:
                declared += self._scan_pages(reader, start, length, rows, where)
        if max(decoded, declared, stored) > self._max_group:
            raise ShardError(
                f"parquet row group {g} is too large: {rows} rows, {stored} bytes stored and "
                f"{declared} declared by its pages for the columns read, over "
                f"data.parquet.max_row_group_bytes = {self._max_group} (write smaller row "
                "groups)"
            )

    def _scan_pages(
        self, reader: _PieceFile, start: int, length: int, rows: int, where: str
    ) -> int:
        """The uncompressed sizes the pages of one column chunk declare, summed; the pages
        must tile the chunk exactly."""
        pos, end, total, pages = start, start + length, 0, 0
        while pos < end:
            pages += 1
            if pages > rows + 2:  # a dictionary page, and data pages of at least one value
                raise _fail(f"{where} has more pages than values")
            size, uncompressed, compressed = self._page_header_at(reader, pos, end, where)
            if uncompressed < 0 or compressed < 0:
                raise _fail(f"{where}: a page header at offset {pos} declares a negative size")
            total += uncompressed
            if total > self._max_group:
                break  # refused by the caller, with the row group's numbers
            pos += size + compressed
        if pos != end and total <= self._max_group:
            raise _fail(f"{where}: its pages do not fill its {length} bytes exactly")
        return total

    @staticmethod
    def _page_header_at(reader: _PieceFile, pos: int, end: int, where: str) -> tuple[int, int, int]:
        """The page header at ``pos``, read in growing windows (most are a few dozen bytes)."""
        window = 512
        while True:
            head = reader.read_at(pos, min(window, end - pos))
            try:
                return _page_header(head)
            except IndexError:  # ran past the window: a longer header, or a truncated one
                if window >= _MAX_PAGE_HEADER or window >= end - pos:
                    break
                window *= 16
            except ValueError:
                break
        raise _fail(f"{where}: a page header at offset {pos} does not parse")

    # -- a decoded row group
    def _features(self, table: Any, names: list[str], g: int) -> np.ndarray:
        x = np.empty((table.num_rows, self._width), dtype=np.float64)
        for j, name in enumerate(names):
            column = table.column(name)
            if column.null_count:
                raise ShardError(f"parquet row group {g}: feature column {name!r} holds nulls")
            x[:, j] = column.to_numpy()
        return x

    def _labels(self, table: Any, g: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        column = table.column(self._label)
        if column.null_count:
            raise ShardError(f"parquet row group {g}: the label column {self._label!r} holds nulls")
        if self._kind != "vocabulary":
            values: np.ndarray = column.to_numpy()
            return values
        vocabulary = pa.array(self._vocabulary, type=pa.string())
        parts = []
        for chunk in column.chunks:
            dictionary = chunk.dictionary.cast(pa.string())
            mapping = pc.index_in(dictionary, value_set=vocabulary)
            ids = mapping.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            indices = chunk.indices.to_numpy(zero_copy_only=False)
            if len(ids):
                parts.append(ids[indices])
            elif len(indices):
                raise _fail(f"row group {g}: the label column's indices have no dictionary")
        y = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        if (y < 0).any():
            raise ShardError(
                f"parquet row group {g}: the label column {self._label!r} holds a label that "
                "is not in data.labels.vocabulary"
            )
        return y
