"""The one CSV parser: a push parser fed the decrypted plaintext in order.

The same code validates a shard at ingest (keeping only the current line and one block of
values: memory does not grow with the shard) and, over the same committed bytes, writes its
values into the arrays training reads (rows come from the receipt; the caller allocates them).

What it accepts:

* UTF-8 text (a leading byte-order mark is skipped), lines ending in ``\\n`` or ``\\r\\n``;
  blank lines are skipped; no NUL and no other carriage return; no line over
  :data:`MAX_LINE` characters;
* a header row naming the columns. The label column is ``data.csv.label_column``; the
  features are the columns ``data.csv.feature_columns`` names, taken in that order whatever the
  header's order, or, when the policy names none, every other column in the header's order.
  Every header name must be distinct; with ``feature_columns`` the header must hold exactly
  those columns and the label (others are refused unless ``data.csv.ignore_extra_columns``);
* rows with as many fields as the header; a field may be quoted (``""`` for a quote) but not
  span lines; features are decimal numbers (``inf``/``nan`` are read, then refused as not
  finite); labels are what ``data.labels`` says: decimal integers (``num_classes``), text
  that is one of ``vocabulary`` exactly (spaces and tabs around it aside), or decimal numbers
  (regression targets, refused unless finite in float32); at most ``data.max_rows`` rows.

Errors are :class:`~cctrain.errors.ShardError` naming lines and columns, never values.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from collections.abc import Mapping
from itertools import repeat
from typing import Any

import numpy as np

from cctrain.errors import ShardError
from cctrain_enclave.columns import feature_positions, repeated_name_problems
from cctrain_enclave.shards import (
    TEXT_LABELS,
    LatchingParser,
    ShardArrays,
    ShardSummary,
    feature_shape,
    finite_for_training,
    label_kind,
)

#: The longest line accepted, in characters (a constant bound on what one line holds).
MAX_LINE = 1 << 20
#: Plaintext decoded at a time: what is held between the chunk and the arrays.
_DECODE_STEP = 64 << 10
_NUMBER = re.compile(
    r"[ \t]*[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)[ \t]*",
    re.IGNORECASE,
)
_INTEGER = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")
#: The characters of unquoted numeric rows (see ``CsvParser._plain_grid``).
_PLAIN = re.compile(r"[0-9+\-.eE, \t\nINFATYinfaty]*")
_BOM = "\ufeff"


class CsvParser(LatchingParser):
    """Feed the plaintext in order with :meth:`feed`, then call :meth:`finish`.

    With ``out`` (training) each row's features and label are written into ``out`` as they
    stream; the shard must have exactly ``out.rows`` rows. Once it has refused, every later
    call raises the same error.
    """

    def __init__(self, schema: Mapping[str, Any], *, out: ShardArrays | None = None) -> None:
        opts = schema["csv"]
        self._label: str = opts["label_column"]
        wanted = opts.get("feature_columns")
        self._wanted: tuple[str, ...] | None = tuple(wanted) if wanted else None
        self._ignore_extra = bool(opts.get("ignore_extra_columns", False))
        self._has_header = bool(opts["header"])
        self._shape = feature_shape(schema)
        self._width = math.prod(self._shape)
        self._dtype = np.dtype(schema["features"]["dtype"])
        self._max_rows = int(schema["max_rows"])
        self._kind = label_kind(schema)
        self._vocabulary = {v: i for i, v in enumerate(schema["labels"].get("vocabulary") or ())}
        self._labels_finite = True
        self._out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._fed = 0  # plaintext bytes fed
        self._started = False  # first text seen (a byte-order mark may lead it)
        self._pending: list[str] = []  # the current, incomplete line, in pieces
        self._pending_len = 0
        self._lineno = 0  # complete lines handled
        self._columns = 0
        self._label_at = -1
        self._feature_at: list[int] | None = None  # None until the header is read
        self._rows = 0
        self._lo: int | None = None
        self._hi: int | None = None
        self._finite = True
        if len(self._shape) != 1:  # the policy refuses this; still, refuse the shard, not start
            self._error = ShardError("csv shards need 1-D features; use npz for shaped features")

    # -- input (feed and finish: LatchingParser)
    def _feed(self, view: memoryview) -> None:
        for start in range(0, len(view), _DECODE_STEP):
            self._text(self._decode(view[start : start + _DECODE_STEP]))

    def _finish(self) -> ShardSummary:
        self._text(self._decode(b"", final=True))
        if self._pending:
            self._text("\n")  # the last line needs no newline
        return self._result()

    def _decode(self, data: Any, final: bool = False) -> str:
        held = len(self._decoder.getstate()[0])
        try:
            text: str = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise ShardError(
                f"csv shard is not UTF-8 text (at byte {self._fed - held + exc.start})"
            ) from None
        self._fed += len(data)
        if not self._started and text:
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        return text

    def _text(self, text: str) -> None:
        end = text.rfind("\n")
        if end >= 0:
            # The pieces of a long line are joined once, when it ends (never re-copied).
            head = "".join([*self._pending, text[: end + 1]])
            self._pending, self._pending_len = [], 0
            self._lines(head)
            text = text[end + 1 :]
        if text:
            self._pending.append(text)
            self._pending_len += len(text)
            # A final "\r" may be the first half of a "\r\n" split across feeds: it is not
            # part of the line (the verdict must not depend on where the bytes were split).
            if self._pending_len - text.endswith("\r") > MAX_LINE:
                raise ShardError(
                    f"csv line {self._lineno + 1} is longer than {MAX_LINE} characters"
                )

    def _lines(self, block: str) -> None:
        """Complete lines, each ending in a newline."""
        base = self._lineno + 1
        if "\r" in block:
            block = block.replace("\r\n", "\n")
            if "\r" in block:
                n = base + block.count("\n", 0, block.index("\r"))
                raise ShardError(
                    f"csv line {n} holds a carriage return (lines end in \\n or \\r\\n)"
                )
        if "\0" in block:
            n = base + block.count("\n", 0, block.index("\0"))
            raise ShardError(f"csv line {n} holds a NUL character")
        body = block[:-1]
        if self._feature_at is not None and self._plain_grid(body):
            return
        lines = body.split("\n")
        self._lineno += len(lines)
        feats: list[str] = []
        labels: list[str] = []
        number, integer = _NUMBER.fullmatch, _INTEGER.fullmatch
        for n, line in enumerate(lines, start=base):
            if len(line) > MAX_LINE:
                raise ShardError(f"csv line {n} is longer than {MAX_LINE} characters")
            if not line:
                continue
            row = self._fields(line, n)
            if self._feature_at is None:
                self._read_header(row)
                continue
            if len(row) != self._columns:
                raise ShardError(f"csv line {n}: {len(row)} fields, header has {self._columns}")
            label = row[self._label_at]
            if self._kind == "vocabulary":
                if label.strip(" \t") not in self._vocabulary:
                    raise ShardError(
                        f"csv line {n}: the label column {self._label!r} holds a label that "
                        "is not in data.labels.vocabulary"
                    )
            elif self._kind == "target":
                if number(label) is None:
                    raise ShardError(
                        f"csv line {n}: the label column {self._label!r} is not a number"
                    )
            elif integer(label) is None:
                raise ShardError(
                    f"csv line {n}: the label column {self._label!r} is not an integer"
                )
            values = [row[i] for i in self._feature_at]
            if not all(map(number, values)):
                raise ShardError(f"csv line {n}: a value is not a number")
            feats.extend(values)
            labels.append(label)
        if labels:
            x = np.array(feats, dtype=np.float64).reshape(len(labels), *self._shape)
            self._rows_done(x, self._label_values(labels))

    def _label_values(self, labels: list[str]) -> np.ndarray:
        """The labels of checked rows: class indices (int64) or targets (float64)."""
        if self._kind == "vocabulary":
            return np.array([self._vocabulary[v.strip(" \t")] for v in labels], dtype=np.int64)
        if self._kind == "target":
            return np.array(labels, dtype=np.float64)
        try:
            return np.array([int(v) for v in labels], dtype=np.int64)
        except (OverflowError, ValueError):  # ValueError: beyond int()'s digit limit
            raise ShardError("csv shard has a label outside the 64-bit integer range") from None

    def _plain_grid(self, body: str) -> bool:
        """The fast path for the common block: unquoted numbers only, every line a full row.

        It reads a block only when it would read the same under the line-by-line path: the
        characters are those of decimal numbers, ``inf`` and ``nan`` (where the conversion
        succeeds exactly when the line-by-line pattern matches), every line has the header's
        number of fields, and every conversion succeeds. Anything else, every error
        included, is left to the line-by-line path, which names the line. Text labels
        (a vocabulary) always take that path: "1" there is a label, not an index.
        """
        if self._kind == "vocabulary":
            return False
        if not body or body[0] == "\n" or "\n\n" in body or _PLAIN.fullmatch(body) is None:
            return False
        lines = body.split("\n")
        if any(len(line) > MAX_LINE for line in lines):
            return False
        n, columns = len(lines), self._columns
        if list(map(str.count, lines, repeat(",", n))).count(columns - 1) != n:
            return False
        fields = body.replace("\n", ",").split(",")
        assert self._feature_at is not None
        x = np.empty((n, self._width), dtype=np.float64)
        try:
            for j, i in enumerate(self._feature_at):
                x[:, j] = np.array(fields[i::columns], dtype=np.float64)
            y = np.array(
                fields[self._label_at :: columns],
                dtype=np.float64 if self._kind == "target" else np.int64,
            )
        except (ValueError, OverflowError):
            return False
        self._lineno += n
        self._rows_done(x, y)
        return True

    @staticmethod
    def _fields(line: str, n: int) -> list[str]:
        if '"' not in line:
            return line.split(",")
        try:
            return next(csv.reader([line], strict=True))
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise ShardError(
                    f"csv line {n}: a quoted field does not close on its line "
                    "(fields spanning lines are refused)"
                ) from None
            raise ShardError(f"csv line {n} is malformed: {exc}") from None

    def _read_header(self, names: list[str]) -> None:
        if not self._has_header:
            raise ShardError("csv shards without a header row are not supported")
        at, problems = feature_positions(
            names,
            label=self._label,
            wanted=self._wanted,
            ignore_extra=self._ignore_extra,
            width=self._width,
            table="data.csv",
        )
        problems = repeated_name_problems(names) + problems
        if problems:
            raise ShardError("csv header " + "; ".join(problems))
        self._columns, self._label_at, self._feature_at = len(names), names.index(self._label), at

    def _rows_done(self, x: np.ndarray, y: np.ndarray) -> None:
        k = len(y)
        start = self._rows
        self._rows += k
        if self._out is not None and self._rows > self._out.rows:
            raise ShardError(f"csv shard has more rows than its receipt's {self._out.rows}")
        if self._rows > self._max_rows:
            raise ShardError(f"csv shard has more than max_rows = {self._max_rows} rows")
        self._finite = self._finite and finite_for_training(x)
        if self._kind == "target":
            self._labels_finite = self._labels_finite and finite_for_training(y)
        else:
            lo, hi = int(y.min()), int(y.max())
            self._lo = lo if self._lo is None else min(self._lo, lo)
            self._hi = hi if self._hi is None else max(self._hi, hi)
        if self._out is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # refused as not finite
                self._out.features[start : self._rows] = x
                self._out.labels[start : self._rows] = y

    def _result(self) -> ShardSummary:
        if self._feature_at is None:
            raise ShardError("csv shard is empty")
        if self._out is not None and self._rows != self._out.rows:
            raise ShardError(f"csv shard has {self._rows} rows, its receipt {self._out.rows}")
        rows = self._rows
        return ShardSummary(
            features_shape=(rows, *self._shape),
            features_dtype=self._dtype,
            labels_shape=(rows,),
            labels_dtype={
                "index": np.dtype(np.int64),
                "target": np.dtype(np.float64),
                "vocabulary": TEXT_LABELS,
            }[self._kind],
            label_min=self._lo,
            label_max=self._hi,
            finite=self._finite,
            labels_finite=self._labels_finite,
        )
