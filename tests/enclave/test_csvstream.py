"""The streaming CSV parser: same verdict and arrays however the plaintext is cut; columns
by header name; every malformed shard refused with a clear ShardError that quotes no value."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cctrain.errors import ShardError
from cctrain_enclave.csvstream import MAX_LINE, CsvParser
from cctrain_enclave.shards import empty_arrays, parse_shard, validate_shard


def schema(**csv_opts: Any) -> dict[str, Any]:
    return {
        "formats": ("csv",),
        "features": {"shape": (3,), "dtype": "float32"},
        "labels": {"num_classes": 4},
        "max_rows": 1000,
        "min_rows": 1,
        "csv": {"header": True, "label_column": "label", **csv_opts},
    }


BY_NAME = schema(feature_columns=("x", "y", "z"))


def feed(data: bytes, cuts: list[int], s: Any, out: Any = None) -> Any:
    p = CsvParser(s, out=out)
    pos = 0
    for n in cuts:
        p.feed(data[pos : pos + n])
        pos += n
    p.feed(data[pos:])
    return p.finish()


def refused(
    data: bytes, text: str, s: Any = None, blocks: tuple[int, ...] = (1 << 20, 1, 7)
) -> str:
    """Refused with ``text``, whatever blocks the plaintext arrives in (ingest's verdict)."""
    for block in blocks:
        with pytest.raises(ShardError) as info:
            validate_shard("csv", data, s or schema(), block=block)
        assert text in str(info.value), str(info.value)
    return str(info.value)


def reference(text: str, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The test's own reading: Python's csv module, columns by name."""
    rows = list(csv.DictReader(io.StringIO(text)))
    x = np.array([[float(r[c]) for c in order] for r in rows], dtype=np.float32)
    y = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    return x, y


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(
                st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=3, max_size=3
            ),
            st.integers(min_value=0, max_value=3),
        ),
        min_size=1,
        max_size=60,
    ),
    perm=st.permutations(["x", "y", "z", "label"]),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    quoted=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=30),
)
def test_any_cut_and_column_order_reads_like_the_reference(
    rows: list[tuple[list[float], int]],
    perm: list[str],
    crlf: bool,
    final_newline: bool,
    quoted: bool,
    cuts: list[int],
) -> None:
    nl = "\r\n" if crlf else "\n"
    q = '"' if quoted else ""
    lines = [",".join(f"{q}{c}{q}" for c in perm)]
    for feats, label in rows:
        value = {"x": feats[0], "y": feats[1], "z": feats[2], "label": label}
        lines.append(",".join(repr(value[c]) for c in perm))
    text = nl.join(lines) + (nl if final_newline else "")
    data = text.encode()
    x, y = reference(text, ["x", "y", "z"])
    out = empty_arrays(len(rows), BY_NAME)
    summary = feed(data, cuts, BY_NAME, out=out)
    assert summary == feed(data, [], BY_NAME)  # ingest and training agree
    assert summary.rows == len(rows)
    np.testing.assert_array_equal(out.features, x)
    np.testing.assert_array_equal(out.labels, y)


def test_shuffled_header_gives_the_same_matrix() -> None:
    ordered = b"x,y,z,label\n1,2,3,0\n4,5,6,1\n"
    shuffled = b"label,z,x,y\n0,3,1,2\n1,6,4,5\n"
    a, b = parse_shard("csv", ordered, BY_NAME), parse_shard("csv", shuffled, BY_NAME)
    np.testing.assert_array_equal(a.features, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_without_feature_columns_the_header_order_is_kept() -> None:
    got = parse_shard("csv", b"c,label,a,b\n1,0,2,3\n", schema())
    np.testing.assert_array_equal(got.features, [[1, 2, 3]])
    refused(
        b"a,b,label\n1,2,0\n",
        "has 2 feature columns (all but 'label'), data.features.shape wants 3",
    )


def test_missing_extra_and_duplicate_columns() -> None:
    msg = refused(b"x,y,label\n1,2,0\n", "lacks the feature columns ['z']", BY_NAME)
    assert "data.csv.feature_columns" in msg
    msg = refused(b"x,y,z,w,label\n1,2,3,4,0\n", "columns the policy does not name: ['w']", BY_NAME)
    assert "ignore_extra_columns" in msg
    refused(b"x,y,z,x,label\n1,2,3,4,0\n", "names the columns ['x'] more than once", BY_NAME)
    refused(
        b"x,y,z,label,label\n1,2,3,0,0\n", "names the columns ['label'] more than once", BY_NAME
    )
    refused(b"x,y,z\n1,2,3\n", "has no label column 'label'", BY_NAME)
    both = refused(b"x,x,w\n1,2,3\n", "csv header names the columns ['x']", BY_NAME)
    assert "no label column" in both and "lacks the feature columns ['y', 'z']" in both


def test_extra_columns_may_be_ignored_when_the_policy_says_so() -> None:
    s = schema(feature_columns=("x", "y", "z"), ignore_extra_columns=True)
    got = parse_shard("csv", b"id,z,note,y,x,label\n7,3,free text,2,1,0\n", s)
    np.testing.assert_array_equal(got.features, [[1, 2, 3]])


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "csv shard is empty"),
        (b"\n\n", "csv shard is empty"),
        (b"a,b,c,label\n1,2,3\n", "csv line 2: 3 fields, header has 4"),
        (b"a,b,c,label\n1,2,3,0,9\n", "csv line 2: 5 fields, header has 4"),
        (b"a,b,c,label\n1,2,x,0\n", "csv line 2: a value is not a number"),
        (b"a,b,c,label\n1,2,1_0,0\n", "csv line 2: a value is not a number"),
        (b"a,b,c,label\n1,2,\xd9\xa1,0\n", "csv line 2: a value is not a number"),  # Arabic 1
        (b"a,b,c,label\n1,2,0x1,0\n", "csv line 2: a value is not a number"),
        (b"a,b,c,label\n1,2,,0\n", "csv line 2: a value is not a number"),
        (b"a,b,c,label\n1,2,3,1.0\n", "csv line 2: the label column 'label' is not an integer"),
        (b"a,b,c,label\n1,2,3,\n", "the label column 'label' is not an integer"),
        (b"a,b,c,label\n1,2,3,99999999999999999999\n", "outside the 64-bit integer range"),
        (b'a,b,c,label\n1,2,"3\n4",0\n', "csv line 2: a quoted field does not close on its line"),
        (b'a,b,c,label\n1,2,"3"x,0\n', "csv line 2 is malformed"),
        (b"a,b,c,label\n1,2\r3,0\n", "csv line 2 holds a carriage return"),
        (b"a,b,c,label\n1,2,3,0\r\r\n", "csv line 2 holds a carriage return"),
        (b"a,b,c,label\n1,2,3,0\n1,\x002,3,0\n", "csv line 3 holds a NUL character"),
        (b"a,b,c,label\n1,2,3,\xff\n", "csv shard is not UTF-8 text (at byte 18)"),
        (b"a,b,c,label\n1,2,3,0\n\xc3", "csv shard is not UTF-8 text"),
    ],
)
def test_malformed_shards(data: bytes, text: str) -> None:
    refused(data, text)


def test_schema_violations_are_left_to_the_one_schema_check() -> None:
    s = schema()
    refused(b"a,b,c,label\n1,2,3,4\n", "labels: values in [4, 4], want within [0, 3]", s)
    refused(b"a,b,c,label\n1,2,3,-1\n", "labels: values in [-1, -1]", s)
    for bad in (b"inf", b"-Infinity", b"nan", b"1e39", b"-3.5e38"):
        refused(b"a,b,c,label\n1,2," + bad + b",0\n", "NaN or infinity", s)
    refused(b"a,b,c,label\n", "rows: got 0, want at least 1", s)
    assert validate_shard("csv", b"a,b,c,label\n1,2,3.4028235e38,0\n", s) == 1


def test_more_rows_than_allowed_or_than_the_receipt() -> None:
    s = {**schema(), "max_rows": 5}
    data = b"a,b,c,label\n" + b"1,2,3,0\n" * 6
    refused(data, "more than max_rows = 5 rows", s)
    with pytest.raises(ShardError, match="more rows than its receipt's 4"):
        feed(data[:-8], [], s, out=empty_arrays(4, s))
    with pytest.raises(ShardError, match="has 5 rows, its receipt 6"):
        feed(data[:-8], [], s, out=empty_arrays(6, s))


def test_accepted_text_forms() -> None:
    s = schema()
    data = (
        '\ufeffa,b,"c",label\r\n'  # byte-order mark, quoted name, CRLF
        "\n"  # blank lines are skipped
        ' 1.5 ,+.5,"-2e3",+1\n'
        "5.,0,1E-2,3\n"
        "7,8,9,2"  # no final newline
    ).encode()
    got = parse_shard("csv", data, s)
    np.testing.assert_array_equal(
        got.features, np.float32([[1.5, 0.5, -2000], [5, 0, 0.01], [7, 8, 9]])
    )
    np.testing.assert_array_equal(got.labels, [1, 3, 2])


def test_a_header_row_is_required() -> None:
    refused(b"1,2,3,0\n", "without a header row are not supported", schema(header=False))


def test_overlong_lines() -> None:
    line = b"1," * (MAX_LINE // 2 + 1)
    text = f"csv line 2 is longer than {MAX_LINE} characters"
    refused(b"a,b,c,label\n" + line + b"0\n", text, blocks=(1 << 20, 4096))
    refused(b"a,b,c,label\n" + line, text, blocks=(1 << 20, 4096))


def test_messages_quote_no_values() -> None:
    secret = b"734.2501"
    for data in (
        b"a,b,c,label\n1,2," + secret + b"x,0\n",
        b"a,b,c,label\n1,2,3," + secret + b"\n",
        b"a,b,c,label\n1,2," + secret + b"\n",
        b"a,b,c,label\n" + secret + b",2,3,0\r1\n",
    ):
        with pytest.raises(ShardError) as info:
            parse_shard("csv", data, schema())
        assert secret.decode() not in str(info.value)


_TOKENS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats().map(repr),
    st.text(alphabet="0123456789+-.eE \tinfatyINFATY", max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_TOKENS, min_size=4, max_size=4), min_size=1, max_size=8))
def test_the_fast_path_reads_exactly_what_the_line_by_line_path_reads(
    rows: list[list[str]],
) -> None:
    """Unquoted numeric blocks take a vectorised path; on any text made of its characters it
    must accept, refuse and read exactly like the line-by-line path."""
    data = ("a,b,c,label\n" + "".join(",".join(r) + "\n" for r in rows)).encode()
    s = {**schema(), "labels": {"num_classes": 10**6}}

    def read(fast: bool) -> Any:
        out = empty_arrays(len(rows), s)
        p = CsvParser(s, out=out)
        if not fast:
            p._plain_grid = lambda body: False  # type: ignore[method-assign]
        try:
            p.feed(data)
            summary = p.finish()
        except ShardError as exc:
            return str(exc)
        return summary, out.features.tobytes(), out.labels.tobytes()

    assert read(True) == read(False)
