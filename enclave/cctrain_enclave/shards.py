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


def load_npz(fh: BinaryIO, schema: Mapping[str, Any]) -> ShardArrays:
    try:
        with zipfile.ZipFile(fh) as zf:
            names = {i.filename for i in zf.infolist()}
            if names != NPZ_MEMBERS:
                raise ShardError(
                    f"npz must contain exactly 'features' and 'labels', got {sorted(names)}"
                )
            limit = _max_member_bytes(schema)
            for info in zf.infolist():
                if info.file_size > limit:
                    raise ShardError(
                        f"npz member {info.filename} declares {info.file_size} bytes, over the schema bound"
                    )
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as npz:
            features = npz["features"]
            labels = npz["labels"]
    except ShardError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ShardError(f"not a valid npz shard (pickle is never allowed): {exc}") from None
    return ShardArrays(features, labels)


def load_csv(data: bytes, schema: Mapping[str, Any]) -> ShardArrays:
    opts = schema["csv"]
    label_col = opts["label_column"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ShardError("csv shard is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
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
    return ShardArrays(
        np.asarray(feats, dtype=dtype).reshape(len(feats), width),
        np.asarray(labels, dtype=np.int64),
    )


def validate_arrays(arrays: ShardArrays, schema: Mapping[str, Any]) -> list[str]:
    """Every way the arrays violate the schema (empty list: valid)."""
    problems: list[str] = []
    f, y = arrays.features, arrays.labels
    want_shape = _feature_shape(schema)
    want_dtype = np.dtype(schema["features"]["dtype"])
    if f.dtype != want_dtype:
        problems.append(f"features.dtype: got {f.dtype}, want {want_dtype}")
    if tuple(f.shape[1:]) != want_shape:
        problems.append(f"features.shape: got {tuple(f.shape[1:])} per row, want {want_shape}")
    if y.ndim != 1:
        problems.append(f"labels.shape: got {y.shape}, want (rows,)")
    if not np.issubdtype(y.dtype, np.integer):
        problems.append(f"labels.dtype: got {y.dtype}, want an integer type")
    if f.ndim >= 1 and y.ndim >= 1 and f.shape[0] != y.shape[0]:
        problems.append(f"rows: features has {f.shape[0]}, labels has {y.shape[0]}")
    n = int(y.shape[0]) if y.ndim >= 1 else 0
    if n < int(schema["min_rows"]):
        problems.append(f"rows: got {n}, want at least {schema['min_rows']}")
    if n > int(schema["max_rows"]):
        problems.append(f"rows: got {n}, want at most {schema['max_rows']}")
    if np.issubdtype(y.dtype, np.integer) and y.size:
        k = int(schema["labels"]["num_classes"])
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            problems.append(f"labels: values in [{lo}, {hi}], want within [0, {k - 1}]")
    if np.issubdtype(f.dtype, np.floating) and f.size and not np.isfinite(f).all():
        problems.append("features: contains NaN or infinity")
    return problems


def parse_shard(fmt: str, reader: BinaryIO, schema: Mapping[str, Any]) -> ShardArrays:
    if fmt not in schema["formats"]:
        raise ShardError(f"format {fmt!r} is not allowed by the policy ({list(schema['formats'])})")
    if fmt == "npz":
        arrays = load_npz(reader, schema)
    elif fmt == "csv":
        arrays = load_csv(reader.read(), schema)
    else:  # pragma: no cover - guarded above
        raise ShardError(f"unknown format {fmt!r}")
    problems = validate_arrays(arrays, schema)
    if problems:
        raise ShardError("shard violates the policy schema: " + "; ".join(problems))
    return ShardArrays(
        np.ascontiguousarray(arrays.features, dtype=np.float32),
        np.ascontiguousarray(arrays.labels, dtype=np.int64),
    )
