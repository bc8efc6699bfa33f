"""The streaming NPZ validator agrees with the ordinary pass, and gives up on anything unusual."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cctrain_enclave.npzstream import NpzStreamValidator
from cctrain_enclave.shards import summarize_npz_stream

SCHEMA = {"features": {"shape": [4], "dtype": "float32"}, "max_rows": 10**7}


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def stream(data: bytes, cuts: list[int]) -> NpzStreamValidator:
    v = NpzStreamValidator()
    pos = 0
    for n in cuts:
        v.feed(data[pos : pos + n])
        pos += n
    v.feed(data[pos:])
    return v


@settings(max_examples=60)
@given(
    rows=st.integers(min_value=0, max_value=300),
    width=st.integers(min_value=1, max_value=6),
    fdtype=st.sampled_from(["float32", "float64", "int16"]),
    ldtype=st.sampled_from(["int64", "int32", "uint8", "float32"]),
    nan=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_streamed_summary_equals_the_ordinary_pass(
    rows: int, width: int, fdtype: str, ldtype: str, nan: bool, cuts: list[int]
) -> None:
    rng = np.random.default_rng(rows)
    features = rng.normal(size=(rows, width)).astype(fdtype)
    if nan and rows and fdtype.startswith("float"):
        features[rows // 2, 0] = np.nan
    labels = rng.integers(-1, 5, size=rows).astype(ldtype)
    data = npz(features=features, labels=labels)
    assert stream(data, cuts).summary() == summarize_npz_stream(io.BytesIO(data), SCHEMA)


def test_gives_up_on_what_it_does_not_know() -> None:
    good = npz(features=np.zeros((3, 4), np.float32), labels=np.zeros(3, np.int64))
    assert stream(good, []).summary() is not None

    cd_name = bytearray(good)
    cd_name[cd_name.rfind(b"labels.npy")] ^= 1  # central directory disagrees with local header
    trailing = good + b"x"
    truncated = good[:-1]
    buf = io.BytesIO()
    np.savez_compressed(buf, features=np.zeros((3, 4), np.float32), labels=np.zeros(3, np.int64))
    extra_member = npz(features=np.zeros((3, 4), np.float32), labels=np.zeros(3), other=np.zeros(1))
    objects = npz(features=np.array([None], dtype=object), labels=np.zeros(1))
    for bad in (
        bytes(cd_name),
        trailing,
        truncated,
        buf.getvalue(),
        extra_member,
        objects,
        b"",
        b"PK",
    ):
        assert stream(bad, [7, 100]).summary() is None
