"""Values that are not finite once converted to the training dtype (float32) are refused at
ingest, for every feature dtype and shard format, against a real enclave; nothing is kept.

A float64 shard holding 1e300 is finite as uploaded but becomes inf at the float32 cast,
which used to kill the whole run after every party had uploaded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cctrain.client import DataOwner
from tests.consortium import Consortium, make_consortium, running_enclave
from tests.ingest.conftest import make_owner
from tests.ingest.test_bad_input import assert_nothing_kept, build_upload, expect_rejection, send

F32_MAX = float(np.finfo(np.float32).max)


def _data(dtype: str) -> dict[str, Any]:
    return {
        "features": {"shape": [4], "dtype": dtype},
        "labels": {"num_classes": 2},
        "max_rows": 1000,
        "max_bytes": 1 << 20,
    }


@pytest.fixture(params=["float32", "float64"])
def dtype_enclave(request: Any, tmp_path: Path) -> Iterator[tuple[str, Consortium, Any, DataOwner]]:
    consortium = make_consortium(tmp_path / "c", data=_data(request.param))
    with running_enclave(consortium, tmp_path / "state") as (address, app):
        owner = make_owner(address, consortium)
        try:
            yield request.param, consortium, app, owner
        finally:
            owner.close()


def _npz(features: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=features, labels=np.zeros(len(features), np.int64))
    return buf.getvalue()


def _csv(values: list[str]) -> bytes:
    lines = ["a,b,c,d,label", *(f"{v},0,0,0,0" for v in values)]
    return ("\n".join(lines) + "\n").encode()


def _rows(dtype: str, bad: float) -> np.ndarray:
    x = np.zeros((20, 4), dtype=dtype)
    x[17, 2] = bad
    return x


BAD = {
    "float32": [np.inf, -np.inf, np.nan],
    "float64": [1e300, -1e39, 3.5e38, np.inf, np.nan],  # 3.5e38 > float32 max 3.4028e38
}


def test_npz_values_not_finite_in_float32_are_refused(dtype_enclave: Any) -> None:
    dtype, _c, app, owner = dtype_enclave
    for i, bad in enumerate(BAD[dtype]):
        sid = f"s{i}"
        header, chunks = build_upload(owner, _npz(_rows(dtype, bad)), shard_id=sid)
        expect_rejection(
            owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinity"
        )
        assert_nothing_kept(app, shard=sid)


def test_csv_values_not_finite_in_float32_are_refused(dtype_enclave: Any) -> None:
    dtype, _c, app, owner = dtype_enclave
    for i, bad in enumerate(["1e300", "-1e39", "inf", "nan", "3.5e38"]):
        sid = f"c{i}"
        header, chunks = build_upload(owner, _csv(["0.5"] * 10 + [bad]), shard_id=sid, fmt="csv")
        expect_rejection(
            owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinity"
        )
        assert_nothing_kept(app, shard=sid)


def test_the_largest_float32_value_is_accepted(dtype_enclave: Any) -> None:
    """The boundary: float32's maximum converts exactly, so it is data, not an error."""
    dtype, _c, app, owner = dtype_enclave
    header, chunks = build_upload(owner, _npz(_rows(dtype, -F32_MAX)), shard_id="edge")
    responses = send(owner, [header, *chunks])
    assert responses[-1].WhichOneof("kind") == "receipt"
    assert app.state.view.shard("hospital-a", "edge") is not None
