"""Parse a decrypted shard and check it against the policy's data schema.

Safe formats only: NPZ with ``allow_pickle=False`` (members ``features`` and
``labels``, nothing else) and CSV with a header row.  Every problem found is
reported at once; nothing here ever unpickles or evaluates input.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from cctrain.errors import ShardError

NPZ_MEMBERS = frozenset({"features.npy", "labels.npy"})


@dataclass(frozen=True)
class ShardArrays:
    features: np.ndarray
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])


def _feature_shape(schema: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in schema["features"]["shape"])


def _max_member_bytes(schema: Mapping[str, Any]) -> int:
    """Upper bound for a decompressed member: guards against zip bombs."""
    per_row = math.prod(_feature_shape(schema)) * 8
    return int(schema["max_rows"]) * per_row + (1 << 16)


def _open_npz(fh: BinaryIO, schema: Mapping[str, Any]) -> zipfile.ZipFile:
    """The zip container, with its member list and declared sizes checked first."""
    zf = zipfile.ZipFile(fh)
    names = {i.filename for i in zf.infolist()}
    if names != NPZ_MEMBERS:
        zf.close()
        raise ShardError(f"npz must contain exactly 'features' and 'labels', got {sorted(names)}")
    limit = _max_member_bytes(schema)
    for info in zf.infolist():
        if info.file_size > limit:
            zf.close()
            raise ShardError(
                f"npz member {info.filename} declares {info.file_size} bytes, over the schema bound"
            )
    return zf


# zipfile raises NotImplementedError for compression methods it lacks and RuntimeError for
# encrypted members; numpy raises OverflowError and TypeError on some hostile headers.
_NPZ_ERRORS = (
    zipfile.BadZipFile,
    ValueError,
    OSError,
    EOFError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    TypeError,
)


def load_npz(fh: BinaryIO, schema: Mapping[str, Any]) -> ShardArrays:
    try:
        _open_npz(fh, schema).close()
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as npz:
            features = npz["features"]
            labels = npz["labels"]
    except ShardError:
        raise
    except _NPZ_ERRORS as exc:
        raise ShardError(f"not a valid npz shard (pickle is never allowed): {exc}") from None
    return ShardArrays(features, labels)


def load_csv(data: bytes, schema: Mapping[str, Any]) -> ShardArrays:
    try:
        return _load_csv(data, schema)
    except csv.Error as exc:  # e.g. a NUL byte or a stray carriage return inside a field
        raise ShardError(f"csv shard is malformed: {exc}") from None


def _load_csv(data: bytes, schema: Mapping[str, Any]) -> ShardArrays:
    opts = schema["csv"]
    label_col = opts["label_column"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ShardError("csv shard is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ShardError("csv shard is empty") from None
    if not opts["header"]:
        raise ShardError("csv shards without a header row are not supported")
    if label_col not in header:
        raise ShardError(f"csv header has no label column {label_col!r}")
    li = header.index(label_col)
    feats: list[list[float]] = []
    labels: list[int] = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ShardError(f"csv line {lineno}: {len(row)} fields, header has {len(header)}")
        try:
            labels.append(int(row[li]))
            feats.append([float(v) for i, v in enumerate(row) if i != li])
        except ValueError:
            raise ShardError(f"csv line {lineno}: a value is not a number") from None
        if len(labels) > int(schema["max_rows"]):
            raise ShardError(f"csv shard has more than max_rows = {schema['max_rows']} rows")
    dtype = schema["features"]["dtype"]
    width = len(header) - 1
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise ShardError("csv shard has a label outside the 64-bit integer range") from None
    with np.errstate(over="ignore"):  # out-of-range values become inf: refused as not finite
        features = np.asarray(feats, dtype=dtype).reshape(len(feats), width)
    return ShardArrays(features, label_array)


@dataclass(frozen=True)
class ShardSummary:
    """What the schema constrains, gathered from arrays or streamed from an NPZ."""

    features_shape: tuple[int, ...]
    features_dtype: np.dtype[Any]
    labels_shape: tuple[int, ...]
    labels_dtype: np.dtype[Any]
    label_min: int | None
    label_max: int | None
    finite: bool

    @property
    def rows(self) -> int:
        return int(self.labels_shape[0]) if self.labels_shape else 0


#: Training runs in float32: a float64 value beyond its range (1e300) becomes inf there.
TRAINING_DTYPE = np.float32


def finite_for_training(values: np.ndarray) -> bool:
    """Whether every value is finite *after* conversion to the training dtype."""
    if not values.size:
        return True
    if values.dtype.kind not in "fiub":
        return True  # not numbers: the dtype check refuses the shard
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(values.astype(TRAINING_DTYPE, copy=False)).all())


def summarize_arrays(arrays: ShardArrays) -> ShardSummary:
    f, y = arrays.features, arrays.labels
    integer = np.issubdtype(y.dtype, np.integer) and y.size > 0
    return ShardSummary(
        features_shape=tuple(f.shape),
        features_dtype=f.dtype,
        labels_shape=tuple(y.shape),
        labels_dtype=y.dtype,
        label_min=int(y.min()) if integer else None,
        label_max=int(y.max()) if integer else None,
        finite=finite_for_training(f),
    )


def summarize_npz_stream(
    fh: BinaryIO, schema: Mapping[str, Any], *, block: int = 8 << 20
) -> ShardSummary:
    """The summary of an NPZ read member by member in blocks: O(block) memory, one pass.

    Headers are parsed with numpy's own readers (never unpickling: object dtypes
    are refused), and each member is read to its end so zipfile checks its CRC.
    """
    from numpy.lib import format as npf

    found: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    lo: int | None = None
    hi: int | None = None
    finite = True
    try:
        with _open_npz(fh, schema) as zf:
            for name in ("features.npy", "labels.npy"):
                with zf.open(name) as member:
                    version = npf.read_magic(member)
                    if version == (1, 0):
                        shape, _fortran, dtype = npf.read_array_header_1_0(member)
                    else:
                        shape, _fortran, dtype = npf.read_array_header_2_0(member)
                    if dtype.hasobject:
                        raise ShardError(
                            "npz member holds Python objects (pickle is never allowed)"
                        )
                    found[name] = (tuple(shape), dtype)
                    remaining = math.prod(shape) * dtype.itemsize
                    step = max(dtype.itemsize, block - block % max(dtype.itemsize, 1))
                    while remaining > 0:
                        buf = member.read(min(step, remaining))
                        if not buf or len(buf) % dtype.itemsize:
                            raise ShardError(f"npz member {name} is truncated")
                        remaining -= len(buf)
                        a = np.frombuffer(buf, dtype=dtype)
                        if name == "features.npy":
                            finite = finite and finite_for_training(a)
                        elif name == "labels.npy" and np.issubdtype(dtype, np.integer):
                            lo = int(a.min()) if lo is None else min(lo, int(a.min()))
                            hi = int(a.max()) if hi is None else max(hi, int(a.max()))
                    if member.read(1):
                        raise ShardError(f"npz member {name} has data beyond its array")
    except ShardError:
        raise
    except _NPZ_ERRORS as exc:
        raise ShardError(f"not a valid npz shard (pickle is never allowed): {exc}") from None
    (fshape, fdtype), (yshape, ydtype) = found["features.npy"], found["labels.npy"]
    return ShardSummary(fshape, fdtype, yshape, ydtype, lo, hi, finite)


def check_summary(summary: ShardSummary, schema: Mapping[str, Any]) -> list[str]:
    """Every way a shard violates the schema (empty list: valid)."""
    problems: list[str] = []
    fshape, yshape = summary.features_shape, summary.labels_shape
    want_shape = _feature_shape(schema)
    want_dtype = np.dtype(schema["features"]["dtype"])
    if summary.features_dtype != want_dtype:
        problems.append(f"features.dtype: got {summary.features_dtype}, want {want_dtype}")
    if tuple(fshape[1:]) != want_shape:
        problems.append(f"features.shape: got {tuple(fshape[1:])} per row, want {want_shape}")
    if len(yshape) != 1:
        problems.append(f"labels.shape: got {yshape}, want (rows,)")
    if not np.issubdtype(summary.labels_dtype, np.integer):
        problems.append(f"labels.dtype: got {summary.labels_dtype}, want an integer type")
    if fshape and yshape and fshape[0] != yshape[0]:
        problems.append(f"rows: features has {fshape[0]}, labels has {yshape[0]}")
    n = summary.rows
    if n < int(schema["min_rows"]):
        problems.append(f"rows: got {n}, want at least {schema['min_rows']}")
    if n > int(schema["max_rows"]):
        problems.append(f"rows: got {n}, want at most {schema['max_rows']}")
    if summary.label_min is not None and summary.label_max is not None:
        k = int(schema["labels"]["num_classes"])
        if summary.label_min < 0 or summary.label_max >= k:
            problems.append(
                f"labels: values in [{summary.label_min}, {summary.label_max}], "
                f"want within [0, {k - 1}]"
            )
    if not summary.finite:
        problems.append(
            "features: contains NaN or infinity, or values beyond the float32 range that "
            "training converts to infinity"
        )
    return problems


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ShardError("shard violates the policy schema: " + "; ".join(problems))


def _check_format(fmt: str, schema: Mapping[str, Any]) -> None:
    if fmt not in schema["formats"]:
        raise ShardError(f"format {fmt!r} is not allowed by the policy ({list(schema['formats'])})")


def validate_shard(fmt: str, reader: BinaryIO, schema: Mapping[str, Any]) -> int:
    """Check a shard against the schema without materialising it (ingest); return its rows."""
    _check_format(fmt, schema)
    if fmt == "npz":
        summary = summarize_npz_stream(reader, schema)
    else:
        summary = summarize_arrays(load_csv(reader.read(), schema))
    raise_problems(check_summary(summary, schema))
    return summary.rows


def parse_shard(fmt: str, reader: BinaryIO, schema: Mapping[str, Any]) -> ShardArrays:
    """Load a shard's arrays (training) after checking them against the schema."""
    _check_format(fmt, schema)
    arrays = load_npz(reader, schema) if fmt == "npz" else load_csv(reader.read(), schema)
    raise_problems(check_summary(summarize_arrays(arrays), schema))
    return ShardArrays(
        np.ascontiguousarray(arrays.features, dtype=TRAINING_DTYPE),
        np.ascontiguousarray(arrays.labels, dtype=np.int64),
    )
