"""The Parquet parser: what pyarrow writes, it reads as pyarrow reads it (the reference reader,
used only here), however the pieces are cut; hostile files are refused with a clear
ShardError, never a crash, and what is read at finish must be what was fed."""

from __future__ import annotations

import io
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from cctrain.errors import ShardError  # noqa: E402
from cctrain_enclave.parquetstream import ParquetParser  # noqa: E402
from cctrain_enclave.shards import (  # noqa: E402
    MemoryPieces,
    ShardChangedError,
    check_summary,
    empty_arrays,
    parse_shard,
)

PARQUET = {"label_column": "label", "max_row_group_bytes": 1 << 20}
SCHEMA: dict[str, Any] = {
    "formats": ("parquet",),
    "features": {"shape": [3], "dtype": "float32"},
    "labels": {"num_classes": 3},
    "max_rows": 100_000,
    "min_rows": 1,
    "parquet": PARQUET,
}
VOCAB = {**SCHEMA, "labels": {"vocabulary": ["benign", "malignant"]}}
TARGETS = {**SCHEMA, "labels": {"dtype": "float32"}}
NAMED = {**SCHEMA, "parquet": PARQUET | {"feature_columns": ["a", "b", "c"]}}


def parquet(table: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def columns(rows: int = 200, seed: int = 0, label: Any = None) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(size=rows),
        "b": rng.normal(size=rows).astype(np.float32),
        "c": rng.integers(-5, 5, rows).astype(np.int32),
        "label": rng.integers(0, 3, rows) if label is None else label,
    }


def stream(data: bytes, schema: Any = SCHEMA, block: int = 4096, out: Any = None) -> Any:
    p = ParquetParser(schema, out=out)
    for start in range(0, len(data), block):
        p.feed(data[start : start + block])
    p.attach(MemoryPieces(data, block))
    return p.finish()


def refused(data: bytes, text: str, schema: Any = SCHEMA, block: int = 4096) -> str:
    with pytest.raises(ShardError) as info:
        summary = stream(data, schema, block)
        problems = check_summary(summary, schema)
        if problems:
            raise ShardError("; ".join(problems))
    assert text in str(info.value), str(info.value)
    return str(info.value)


def reference(data: bytes, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(io.BytesIO(data))
    x = np.stack([table.column(n).to_numpy().astype(np.float64) for n in names], axis=1)
    return x.astype(np.float32), table.column("label").to_numpy()


# -- what pyarrow writes ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "snappy", "zstd", "gzip"])
@pytest.mark.parametrize("row_group_size", [7, 64, 10_000])
def test_reads_what_pyarrow_reads(compression: str, row_group_size: int) -> None:
    cols = columns(300)
    order = ["label", "c", "a", "b"]  # the file's order differs from the policy's
    data = parquet(
        pa.table({k: cols[k] for k in order}),
        compression=compression,
        row_group_size=row_group_size,
    )
    ref_x, ref_y = reference(data, ["a", "b", "c"])
    for block in (333, 1 << 20) if row_group_size != 7 or compression != "zstd" else (1,):
        got = parse_shard("parquet", data, NAMED, block=block)
        np.testing.assert_array_equal(got.features, ref_x)
        np.testing.assert_array_equal(got.labels, ref_y.astype(np.int64))
    # Without feature_columns the features are every other column, in the file's order.
    got = parse_shard("parquet", data, SCHEMA)
    np.testing.assert_array_equal(got.features, reference(data, ["c", "a", "b"])[0])


def test_nullable_columns_without_nulls_and_required_columns_read_alike() -> None:
    cols = columns(50)
    fields = [pa.field(k, pa.array(v).type, nullable=False) for k, v in cols.items()]
    required = parquet(pa.table(cols, schema=pa.schema(fields)))
    nullable = parquet(pa.table(cols))  # pyarrow's default: every column optional
    a, b = parse_shard("parquet", required, NAMED), parse_shard("parquet", nullable, NAMED)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_text_labels_map_to_their_vocabulary_index() -> None:
    rng = np.random.default_rng(1)
    words = np.where(rng.random(500) < 0.3, "malignant", "benign")
    for label in (pa.array(words), pa.array(words, type=pa.large_string())):
        for kw in ({}, {"use_dictionary": False}, {"row_group_size": 33}):
            data = parquet(pa.table(columns(500, label=label)), **kw)
            got = parse_shard("parquet", data, {**VOCAB, "parquet": NAMED["parquet"]})
            np.testing.assert_array_equal(got.labels, (words == "malignant").astype(np.int64))
    # A categorical (dictionary) label column reads the same.
    data = parquet(pa.table(columns(500, label=pa.array(words).dictionary_encode())))
    got = parse_shard("parquet", data, VOCAB)
    np.testing.assert_array_equal(got.labels, (words == "malignant").astype(np.int64))


def test_regression_targets_are_read_as_float32() -> None:
    for dtype in (np.float32, np.float64):
        y = np.linspace(-3, 3, 200).astype(dtype)
        got = parse_shard("parquet", parquet(pa.table(columns(label=y))), TARGETS)
        assert got.labels.dtype == np.float32
        np.testing.assert_array_equal(got.labels, y.astype(np.float32))


def test_extra_columns_are_ignored_only_when_the_policy_says_so() -> None:
    cols = columns() | {"site": np.arange(200)}
    data = parquet(pa.table(cols))
    refused(data, "columns the policy does not name: ['site']", NAMED)
    ignoring = {**NAMED, "parquet": NAMED["parquet"] | {"ignore_extra_columns": True}}
    assert parse_shard("parquet", data, ignoring).rows == 200


def test_an_ignored_column_is_never_read() -> None:
    """A large extra column (ignored) is not fetched: only the footer and the columns read."""
    rng = np.random.default_rng(2)
    cols = columns(20_000) | {"blob": rng.normal(size=(20_000,)) * 1e9}
    cols |= {f"x{i}": rng.normal(size=20_000) for i in range(8)}
    data = parquet(pa.table(cols), compression="none")
    fetched = []

    class Counting(MemoryPieces):
        def piece(self, index: int) -> bytes:
            data_ = super().piece(index)
            fetched.append(len(data_))
            return data_

    schema = {**NAMED, "parquet": NAMED["parquet"] | {"ignore_extra_columns": True}}
    p = ParquetParser(schema)
    block = 1024
    for start in range(0, len(data), block):
        p.feed(data[start : start + block])
    p.attach(Counting(data, block))
    assert p.finish().rows == 20_000
    assert sum(fetched) < 0.45 * len(data), (sum(fetched), len(data))


def test_memory_is_one_row_group_not_the_file() -> None:
    rng = np.random.default_rng(3)
    rows = 100_000
    cols = {"a": rng.normal(size=rows), "b": rng.normal(size=rows), "c": rng.normal(size=rows)}
    data = parquet(pa.table(cols | {"label": rng.integers(0, 3, rows)}), row_group_size=5000)
    assert len(data) > 2 << 20
    tracemalloc.start()
    try:
        summary = stream(data, {**SCHEMA, "max_rows": rows}, block=64 << 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.rows == rows
    group = 5000 * 4 * 8
    assert peak < 4 * group + (1 << 20), f"peak {peak} B for a {len(data)}-byte file"
    assert pa.default_memory_pool().bytes_allocated() < 1 << 20  # Arrow let go of each group


def test_training_fills_arrays_of_the_receipts_rows_exactly() -> None:
    data = parquet(pa.table(columns(120)), row_group_size=50)
    out = empty_arrays(120, NAMED)
    stream(data, NAMED, out=out)
    np.testing.assert_array_equal(out.features, reference(data, ["a", "b", "c"])[0])
    for wrong in (119, 121):
        with pytest.raises(ShardError, match="receipt"):
            stream(data, NAMED, out=empty_arrays(wrong, NAMED))


# -- hostile files ----------------------------------------------------------------------------------


GOOD = parquet(pa.table(columns(100)), row_group_size=40)


def test_truncated_empty_and_not_parquet() -> None:
    refused(b"", "parquet shard is empty")
    refused(b"PAR1", "too short")
    refused(b"NOPE" + GOOD[4:], "does not start with the Parquet magic")
    for cut in (1, 8, 100, len(GOOD) // 2):
        refused(GOOD[:-cut], "not a valid parquet shard")
    refused(GOOD[:-4] + b"PARE", "encrypted")


def test_footer_length_lies() -> None:
    body, footer = GOOD[:-8], struct.unpack("<I", GOOD[-8:-4])[0]
    for lie in (0, len(GOOD), 1 << 30):
        refused(body + struct.pack("<I", lie) + b"PAR1", "footer length field")
    for lie in (footer - 1, footer + 1, footer // 2):
        refused(body + struct.pack("<I", lie) + b"PAR1", "not a valid parquet shard")


def test_nested_dictionary_and_wrongly_typed_columns() -> None:
    base = columns(20)
    cases = [
        ({"b": pa.array([[1.0]] * 20)}, "column 'b' is nested or repeated"),
        ({"b": pa.array([{"x": 1.0}] * 20)}, "nested"),
        ({"b": pa.array(["1.5"] * 20)}, "column 'b' has type string: features are numbers"),
        ({"b": pa.array([True] * 20)}, "column 'b' has type bool"),
        ({"b": pa.array(["x"] * 20).dictionary_encode()}, "dictionary (categorical)"),
        ({"label": pa.array([0.5] * 20)}, "want integers (class indices)"),
        ({"label": pa.array(["x"] * 20)}, "want integers"),
    ]
    for change, text in cases:
        refused(parquet(pa.table(base | change)), text, NAMED)
    refused(parquet(pa.table(base)), "want strings (a vocabulary)", VOCAB)
    refused(parquet(pa.table(base)), "want float or double (regression targets)", TARGETS)
    refused(parquet(pa.table(base | {"label": pa.array([1.0] * 20)})), "label", SCHEMA)


def test_missing_and_duplicate_columns() -> None:
    base = columns(20)
    refused(
        parquet(pa.table({k: base[k] for k in ("a", "b", "label")})), "lacks the feature", NAMED
    )
    refused(parquet(pa.table({k: base[k] for k in ("a", "b", "c")})), "no label column 'label'")
    dup = pa.Table.from_arrays([base["a"], base["b"], base["c"], base["a"], base["label"]],
                               names=["a", "b", "c", "a", "label"])  # fmt: skip
    refused(parquet(dup), "names the columns ['a'] more than once", NAMED)
    refused(parquet(pa.table(base | {"d": base["a"]})), "has 4 feature columns", SCHEMA)


@pytest.mark.parametrize(
    ("names", "named"),
    [
        (["a", "b", "label"], True),  # a feature column missing
        (["a", "b", "c", "site", "label"], True),  # one the policy does not name
        (["a", "b", "c", "a", "label"], True),  # a repeated name
        (["a", "b", "c"], False),  # no label
        (["a", "b", "c", "d", "label"], False),  # one feature too many
        (["b", "a"], True),  # several problems at once
    ],
)
def test_csv_and_parquet_resolve_columns_alike(names: list[str], named: bool) -> None:
    """The same columns under the same options: the same refusal, word for word, from the
    CSV header as from the Parquet schema (one resolution of names for both formats)."""
    from cctrain_enclave.csvstream import CsvParser

    options: dict[str, Any] = {"label_column": "label"}
    if named:
        options["feature_columns"] = ["a", "b", "c"]
    parquet_schema = {**SCHEMA, "parquet": PARQUET | options}
    csv_schema = {**SCHEMA, "formats": ("csv",), "csv": {"header": True, **options}}
    arrays = [pa.array(np.arange(4, dtype=np.float64) + i) for i in range(len(names))]
    got_parquet = refused(parquet(pa.Table.from_arrays(arrays, names=names)), "", parquet_schema)
    p = CsvParser(csv_schema)
    with pytest.raises(ShardError) as info:
        p.feed((",".join(names) + "\n" + ",".join("1" for _ in names) + "\n").encode())
        p.finish()
    got_csv = str(info.value)
    assert got_parquet.startswith("parquet schema "), got_parquet
    assert got_csv.startswith("csv header "), got_csv
    assert got_parquet.removeprefix("parquet schema ") == got_csv.removeprefix(
        "csv header "
    ).replace("data.csv.", "data.parquet."), (got_parquet, got_csv)


def test_nulls_nan_and_values_beyond_float32() -> None:
    n = 30
    for column in ("a", "c", "label"):
        values = columns(n)[column].tolist()
        values[7] = None
        refused(parquet(pa.table(columns(n) | {column: pa.array(values)})), "holds nulls", NAMED)
    for bad in (np.nan, np.inf, -np.inf, 1e300):
        a = columns(n)["a"].copy()
        a[3] = bad
        refused(parquet(pa.table(columns(n) | {"a": a})), "NaN or infinity", NAMED)
        y = np.zeros(n)
        y[4] = bad
        refused(parquet(pa.table(columns(n, label=y))), "regression target is NaN", TARGETS)


def test_labels_outside_the_range_or_the_vocabulary_name_no_value() -> None:
    refused(parquet(pa.table(columns(label=np.full(200, 3)))), "want within [0, 2]")
    words = ["benign"] * 199 + ["zebra-secret-value"]
    msg = refused(parquet(pa.table(columns(label=words))), "not in data.labels.vocabulary", VOCAB)
    assert "zebra" not in msg
    for kw in ({"use_dictionary": False}, {"row_group_size": 50}):
        msg = refused(parquet(pa.table(columns(label=words)), **kw), "vocabulary", VOCAB)
        assert "zebra" not in msg


def test_a_row_group_over_the_bound_is_refused_before_it_is_decoded() -> None:
    data = parquet(pa.table(columns(5000)), row_group_size=5000)
    small = {**SCHEMA, "parquet": PARQUET | {"max_row_group_bytes": 50_000}}
    refused(data, "row group 0 is too large", small)
    # The same rows in smaller groups pass.
    assert stream(parquet(pa.table(columns(5000)), row_group_size=1000), small).rows == 5000


def test_more_rows_than_max_rows() -> None:
    refused(GOOD, "more than max_rows = 50", {**SCHEMA, "max_rows": 50})


def test_a_piece_that_changed_since_it_was_fed_is_caught() -> None:
    """The host swaps a stored chunk between the committed pass and the structure read."""
    block = 512
    for victim in (0, len(GOOD) // block // 2, len(GOOD) // block):

        class Swapped(MemoryPieces):
            def piece(self, index: int, victim: int = victim) -> bytes:
                data = super().piece(index)
                return data[:-1] + bytes([data[-1] ^ 1]) if index == victim else data

        p = ParquetParser(SCHEMA)
        for start in range(0, len(GOOD), block):
            p.feed(GOOD[start : start + block])
        p.attach(Swapped(GOOD, block))
        with pytest.raises(ShardChangedError, match="altered at rest"):
            p.finish()


def test_refusal_is_sticky() -> None:
    p = ParquetParser(SCHEMA)
    with pytest.raises(ShardError) as first:
        p.feed(b"junk")
    with pytest.raises(ShardError) as again:
        p.feed(GOOD)
    assert again.value is first.value


# -- any single corruption: refused, or read as pyarrow reads it ---------------------------------


def _flips(data: bytes, positions: range, xor: int) -> None:
    for i in positions:
        mutated = bytearray(data)
        mutated[i] ^= xor
        mutated_b = bytes(mutated)
        try:
            stream(mutated_b, NAMED)
            got = parse_shard("parquet", mutated_b, NAMED)
        except ShardError:
            continue  # refusing is always allowed
        ref_x, ref_y = reference(mutated_b, ["a", "b", "c"])
        np.testing.assert_array_equal(got.features, ref_x)
        np.testing.assert_array_equal(got.labels, ref_y.astype(np.int64))


SMALL = parquet(pa.table(columns(12)), row_group_size=5)


def test_footer_bytes_flipped_are_refused_or_read_as_pyarrow_reads_it() -> None:
    footer = struct.unpack("<I", SMALL[-8:-4])[0]
    start = len(SMALL) - 8 - footer
    # Byte 19 of this footer xor 0x01 once aborted the process (pyarrow's metadata accessors).
    _flips(SMALL, range(start, start + 64), 0x01)
    _flips(SMALL, range(start + 64, len(SMALL), 3), 0x01)
    _flips(SMALL, range(start, len(SMALL), 7), 0xFF)


def test_data_page_bytes_flipped_are_refused_or_read_as_pyarrow_reads_it() -> None:
    footer = struct.unpack("<I", SMALL[-8:-4])[0]
    _flips(SMALL, range(0, len(SMALL) - 8 - footer, 2), 0x41)
