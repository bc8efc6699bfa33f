"""Shards: what a parsed shard is, and the one check of it against the policy's data schema.

Safe formats only: NPZ (members ``features`` and ``labels``, nothing else, never
unpickled; :mod:`cctrain_enclave.npzstream`), CSV with a header row
(:mod:`cctrain_enclave.csvstream`) and Parquet with named, typed, flat columns
(:mod:`cctrain_enclave.parquetstream`). Each format has exactly one parser, a push parser fed
the decrypted plaintext in order: at ingest it yields the :class:`ShardSummary` that
:func:`check_summary` judges (the receipt's verdict), at training the same parser over the
same committed bytes fills the arrays the trainer reads. Parquet's footer is at the end of the
file, so its parser reads the shard at ``finish`` by random access to the same pieces it was
fed (a :class:`PieceSource`), each checked against the digest it recorded as it was fed.
Every problem of the schema check is reported at once; nothing here ever unpickles or
evaluates input, and no message quotes a value of the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

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


def feature_shape(schema: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in schema["features"]["shape"])


#: What a shard's labels are under ``data.labels``: class indices (``num_classes``), text
#: mapped to its index in ``vocabulary``, or float regression targets (``dtype``).
LabelKind = Literal["index", "vocabulary", "target"]


def label_kind(schema: Mapping[str, Any]) -> LabelKind:
    labels = schema["labels"]
    if "vocabulary" in labels:
        return "vocabulary"
    if "dtype" in labels:
        return "target"
    return "index"


def num_label_classes(schema: Mapping[str, Any]) -> int:
    """The classes of a classification schema (``num_classes`` or the vocabulary's size)."""
    labels = schema["labels"]
    return len(labels["vocabulary"]) if "vocabulary" in labels else int(labels["num_classes"])


#: The dtype of text labels in a summary where the format has no dtype of its own (CSV,
#: Parquet): what the schema check compares against.
TEXT_LABELS = np.dtype(np.str_)


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
    #: Float labels (regression targets): every one finite once converted to float32.
    labels_finite: bool = True

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
        labels_finite=finite_for_training(y),
    )


def check_summary(summary: ShardSummary, schema: Mapping[str, Any]) -> list[str]:
    """Every way a shard violates the schema (empty list: valid)."""
    problems: list[str] = []
    fshape, yshape = summary.features_shape, summary.labels_shape
    want_shape = feature_shape(schema)
    want_dtype = np.dtype(schema["features"]["dtype"])
    if summary.features_dtype != want_dtype:
        problems.append(f"features.dtype: got {summary.features_dtype}, want {want_dtype}")
    if tuple(fshape[1:]) != want_shape:
        problems.append(f"features.shape: got {tuple(fshape[1:])} per row, want {want_shape}")
    if len(yshape) != 1:
        problems.append(f"labels.shape: got {yshape}, want (rows,)")
    problems += _label_problems(summary, schema)
    if fshape and yshape and fshape[0] != yshape[0]:
        problems.append(f"rows: features has {fshape[0]}, labels has {yshape[0]}")
    n = summary.rows
    if n < int(schema["min_rows"]):
        problems.append(f"rows: got {n}, want at least {schema['min_rows']}")
    if n > int(schema["max_rows"]):
        problems.append(f"rows: got {n}, want at most {schema['max_rows']}")
    if not summary.finite:
        problems.append(
            "features: contains NaN or infinity, or values beyond the float32 range that "
            "training converts to infinity"
        )
    return problems


def _label_problems(summary: ShardSummary, schema: Mapping[str, Any]) -> list[str]:
    """The labels' dtype and values against ``data.labels`` (see :func:`label_kind`)."""
    dtype, kind = summary.labels_dtype, label_kind(schema)
    if kind == "target":
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            return [f"labels.dtype: got {dtype}, want float32 or float64 (regression targets)"]
        if not summary.labels_finite:
            return [
                "labels: a regression target is NaN or infinite, or beyond the float32 range "
                "that training converts to infinity"
            ]
        return []
    if kind == "vocabulary":
        if dtype.kind != "U":
            return [f"labels.dtype: got {dtype}, want text labels (data.labels.vocabulary)"]
    elif not np.issubdtype(dtype, np.integer):
        return [f"labels.dtype: got {dtype}, want an integer type"]
    k = num_label_classes(schema)
    if summary.label_min is not None and summary.label_max is not None:
        if summary.label_min < 0 or summary.label_max >= k:
            return [
                f"labels: values in [{summary.label_min}, {summary.label_max}], "
                f"want within [0, {k - 1}]"
            ]
    return []


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ShardError("shard violates the policy schema: " + "; ".join(problems))


def _check_format(fmt: str, schema: Mapping[str, Any]) -> None:
    if fmt not in schema["formats"]:
        raise ShardError(f"format {fmt!r} is not allowed by the policy ({list(schema['formats'])})")


class PieceSource(Protocol):
    """Random access to a plaintext in the pieces it was fed to a parser, in order (at ingest
    and training: the stored chunks, each decrypted and authenticated again when read)."""

    def piece(self, index: int) -> bytes:
        """Piece ``index`` (0-based) again; :class:`ShardError` if it cannot be read."""
        ...


class ShardParser(Protocol):
    """A push parser: the plaintext in order through :meth:`feed`, then :meth:`finish`.

    Each raises :class:`ShardError` on the first problem (and again on every later call);
    ``finish`` returns the summary that :func:`check_summary` judges. Given ``out`` (training),
    the parser writes the shard's values into it as they stream. A parser that needs random
    access (``random_access``) reads the pieces again at ``finish`` through the source given
    to :meth:`attach`.
    """

    random_access: bool

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def attach(self, source: PieceSource) -> None: ...

    def finish(self) -> ShardSummary: ...

    @property
    def error(self) -> ShardError | None: ...


class ShardChangedError(ShardError):
    """A piece read again is not the one that was fed (the stored bytes changed meanwhile):
    the host's doing, named at rest."""


class LatchingParser:
    """The :class:`ShardParser` contract for a format's parser, which implements ``_feed``
    and ``_finish``: its first :class:`ShardError` is kept and raised again on every later
    call, and its summary is computed once."""

    _error: ShardError | None = None
    _summary: ShardSummary | None = None
    #: Whether :meth:`finish` reads the pieces again (through :meth:`attach`'s source).
    random_access = False

    def attach(self, source: PieceSource) -> None:
        """The pieces fed so far, for random access at :meth:`finish` (streaming parsers
        need none)."""

    @property
    def error(self) -> ShardError | None:
        """The refusal, once there is one."""
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._feed(memoryview(data).cast("B"))
        except ShardError as exc:
            self._error = exc
            raise

    def finish(self) -> ShardSummary:
        if self._error is not None:
            raise self._error
        if self._summary is None:
            try:
                self._summary = self._finish()
            except ShardError as exc:
                self._error = exc
                raise
        return self._summary

    def _feed(self, data: memoryview) -> None:
        raise NotImplementedError

    def _finish(self) -> ShardSummary:
        raise NotImplementedError


def open_parser(
    fmt: str, schema: Mapping[str, Any], *, out: ShardArrays | None = None
) -> ShardParser:
    """The parser of a format the policy allows: the only code that reads shard structure."""
    _check_format(fmt, schema)
    if fmt == "npz":
        from cctrain_enclave.npzstream import NpzParser

        return NpzParser(schema, out=out)
    if fmt == "parquet":
        from cctrain_enclave.parquetstream import ParquetParser

        return ParquetParser(schema, out=out)
    from cctrain_enclave.csvstream import CsvParser

    return CsvParser(schema, out=out)


def checked_rows(summary: ShardSummary, schema: Mapping[str, Any]) -> int:
    """The shard's rows, once its summary satisfies the schema."""
    raise_problems(check_summary(summary, schema))
    return summary.rows


def empty_arrays(rows: int, schema: Mapping[str, Any]) -> ShardArrays:
    """Arrays in the training dtypes for ``rows`` rows, for a parser to fill."""
    return ShardArrays(
        np.empty((rows, *feature_shape(schema)), dtype=TRAINING_DTYPE),
        np.empty(rows, dtype=TRAINING_DTYPE if label_kind(schema) == "target" else np.int64),
    )


class MemoryPieces:
    """The pieces of an in-memory plaintext, cut every ``block`` bytes (tools and tests)."""

    def __init__(self, data: bytes, block: int) -> None:
        self._data, self._block = memoryview(data), block

    def piece(self, index: int) -> bytes:
        return bytes(self._data[index * self._block : (index + 1) * self._block])


def _feed_all(parser: ShardParser, data: bytes, block: int) -> ShardSummary:
    view = memoryview(data)
    for start in range(0, len(view), block):
        parser.feed(view[start : start + block])
    parser.attach(MemoryPieces(data, block))
    return parser.finish()


def validate_shard(
    fmt: str, data: bytes, schema: Mapping[str, Any], *, block: int = 1 << 20
) -> int:
    """Check a whole in-memory plaintext against the schema; return its rows."""
    return checked_rows(_feed_all(open_parser(fmt, schema), data, block), schema)


def parse_shard(
    fmt: str, data: bytes, schema: Mapping[str, Any], *, block: int = 1 << 20
) -> ShardArrays:
    """A whole in-memory plaintext's arrays, in the training dtypes (tools and tests).

    The same parser runs twice over the same bytes object: once to learn the rows (the
    enclave has them from the receipt), once to fill arrays of that size.
    """
    rows = validate_shard(fmt, data, schema, block=block)
    out = empty_arrays(rows, schema)
    if checked_rows(_feed_all(open_parser(fmt, schema, out=out), data, block), schema) != rows:
        raise ShardError("shard parsed to a different number of rows the second time")
    return out
