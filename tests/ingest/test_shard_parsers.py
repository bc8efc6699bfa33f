"""What is validated is what is trained on: shards uploaded through the SDK to a real enclave
on a loopback port, then loaded the way training loads them (``ShardStore.load_dataset``).

np.load appears only here, in tests, as the reference reader.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.client import DataOwner
from cctrain.errors import ShardError, UploadRejectedError
from tests.consortium import Consortium, make_consortium, running_enclave
from tests.ingest.conftest import make_owner
from tests.ingest.test_bad_input import assert_nothing_kept

DATA: dict[str, Any] = {
    "features": {"shape": [4], "dtype": "float32"},
    "labels": {"num_classes": 3},
    "max_rows": 1_000_000,
    "max_bytes": 16 << 20,
}


@pytest.fixture
def world(tmp_path: Path, request: Any) -> Iterator[tuple[Consortium, Any, DataOwner]]:
    data = getattr(request, "param", DATA)
    consortium = make_consortium(tmp_path / "c", data=data)
    with running_enclave(consortium, tmp_path / "state") as (address, app):
        owner = make_owner(address, consortium)
        try:
            yield consortium, app, owner
        finally:
            owner.close()


def upload(owner: DataOwner, path: Path, **kw: Any) -> Any:
    return owner.upload(path, state_dir=path.parent / "owner-state", **kw)


def trained_on(app: Any) -> Any:
    """The pooled arrays training reads, for the shards accepted so far (journal order)."""
    return app.store.load_dataset(tuple(app.state.view.shards), app.policy.data)


def npz_file(path: Path, *, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["features"].astype(np.float32), z["labels"].astype(np.int64)


# -- 1. the hidden end record -----------------------------------------------------------------


def test_hidden_end_record_is_refused_and_nothing_is_kept(world: Any, tmp_path: Path) -> None:
    """The visible archive holds 200 rows; its comment holds a second directory and end
    record for 20,000 hidden rows, which is what np.load (the old training path) reads."""
    _c, app, owner = world
    rng = np.random.default_rng(1)
    visible = io.BytesIO()
    np.savez(
        visible,
        features=rng.normal(size=(200, 4)).astype(np.float32),
        labels=rng.integers(0, 3, 200),
    )
    hidden = io.BytesIO()
    np.savez_compressed(
        hidden,
        features=np.tile(np.float32([9, 9, 9, 9]), (20_000, 1)),
        labels=np.tile(np.int64([2, 0]), 10_000),
    )
    v, h = visible.getvalue(), hidden.getvalue()
    path = tmp_path / "decoy.npz"
    path.write_bytes(v[:-2] + struct.pack("<H", len(h)) + h)
    assert reference(path)[1].shape == (20_000,)  # the attack is real against np.load

    with pytest.raises(UploadRejectedError, match="comment") as info:
        upload(owner, path)
    assert "not a valid npz shard" in str(info.value)
    assert_nothing_kept(app, shard="decoy")
    state = app.state.paths
    assert list(state.uploads.rglob("*.bin")) == []
    assert list(state.shards.iterdir()) == []
    assert app.state.view.shards == ()
    assert not list((tmp_path / "owner-state").glob("receipts/*/*decoy*"))
    # The visible archive alone is fine.
    good = tmp_path / "visible.npz"
    good.write_bytes(v)
    assert upload(owner, good).rows == 200


# -- 2. what numpy.savez writes, trained as np.load reads it ------------------------------------

SCHEMAS = [
    DATA,
    {**DATA, "features": {"shape": [2, 3], "dtype": "float64"}, "formats": ["npz"]},
]


@pytest.mark.parametrize("world", SCHEMAS, indirect=True, ids=["4-float32", "2x3-float64"])
def test_savez_outputs_train_on_what_np_load_reads(world: Any, tmp_path: Path) -> None:
    c, app, owner = world
    shape = tuple(c.signed.policy.data["features"]["shape"])
    dtype = c.signed.policy.data["features"]["dtype"]
    rng = np.random.default_rng(2)
    files = []
    for i, (compressed, labels_first, fortran, ldtype) in enumerate(
        [
            (False, False, False, np.int64),
            (True, False, False, np.int64),
            (False, True, True, np.int32),
            (True, True, True, np.uint8),
            (True, False, False, np.int16),
        ]
    ):
        rows = 150 + 37 * i
        x = rng.normal(size=(rows, *shape)).astype(dtype)
        x = np.asfortranarray(x) if fortran else x
        y = rng.integers(0, 3, rows).astype(ldtype)
        arrays = {"labels": y, "features": x} if labels_first else {"features": x, "labels": y}
        files.append(npz_file(tmp_path / f"s{i}.npz", compressed=compressed, **arrays))
    receipts = [upload(owner, f, chunk_size=4096) for f in files]
    assert [r.rows for r in receipts] == [150 + 37 * i for i in range(5)]
    got = trained_on(app)
    refs = [reference(f) for f in files]
    np.testing.assert_array_equal(got.features, np.concatenate([r[0] for r in refs]))
    np.testing.assert_array_equal(got.labels, np.concatenate([r[1] for r in refs]))
    assert got.features.dtype == np.float32 and got.labels.dtype == np.int64


# -- 4. CSV columns by header name ----------------------------------------------------------------

BY_NAME = {**DATA, "csv": {"feature_columns": ["f1", "f2", "f3", "f4"]}}


def _csv(path: Path, columns: list[str], x: np.ndarray, y: np.ndarray) -> Path:
    values = {"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "f4": x[:, 3], "label": y}
    lines = [",".join(columns)]
    lines += [",".join(repr(float(values[c][i])) if c != "label" else str(int(y[i])) for c in columns)
              for i in range(len(y))]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("world", [BY_NAME], indirect=True)
def test_csv_columns_are_matched_by_header_name(world: Any, tmp_path: Path) -> None:
    _c, app, owner = world
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    upload(owner, _csv(tmp_path / "ordered.csv", ["f1", "f2", "f3", "f4", "label"], x, y))
    upload(owner, _csv(tmp_path / "shuffled.csv", ["label", "f3", "f1", "f4", "f2"], x, y))
    got = trained_on(app)
    np.testing.assert_array_equal(got.features[:120], x)
    np.testing.assert_array_equal(got.features[120:], x)
    np.testing.assert_array_equal(got.labels[120:], y)

    for name, columns, text in [
        ("missing", ["f1", "f2", "f4", "label"], "lacks the feature columns ['f3']"),
        ("extra", ["f1", "f2", "f3", "f4", "site", "label"], "does not name: ['site']"),
        (
            "twice",
            ["f1", "f2", "f3", "f4", "f2", "label"],
            "names the columns ['f2'] more than once",
        ),
        ("nolabel", ["f1", "f2", "f3", "f4"], "has no label column 'label'"),
    ]:
        path = tmp_path / f"{name}.csv"
        path.write_text(",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n")
        with pytest.raises(UploadRejectedError, match="csv header") as info:
            upload(owner, path)
        assert text in str(info.value), str(info.value)
        assert_nothing_kept(app, shard=name)
    assert len(app.state.view.shards) == 2


# -- 5. a receipt's rows are the rows training gets -------------------------------------------------


def test_every_receipt_loads_to_exactly_its_rows(world: Any, tmp_path: Path) -> None:
    _c, app, owner = world
    rng = np.random.default_rng(5)
    shards = [
        npz_file(tmp_path / "a.npz", features=rng.normal(size=(10, 4)).astype(np.float32),
                 labels=rng.integers(0, 3, 10)),
        npz_file(tmp_path / "b.npz", compressed=True,
                 features=rng.normal(size=(3000, 4)).astype(np.float32),
                 labels=rng.integers(0, 3, 3000)),
    ]  # fmt: skip
    c = tmp_path / "c.csv"
    c.write_bytes(b"\xef\xbb\xbfa,b,c,d,label\r\n\r\n1,2,3,4,0\r\n" + b"5,6,7,8,2\r\n" * 999)
    shards.append(c)
    receipts = [upload(owner, p, chunk_size=4096) for p in shards]
    assert [r.rows for r in receipts] == [10, 3000, 1000]
    for accepted, receipt in zip(app.state.view.shards, receipts, strict=True):
        assert accepted.rows == receipt.rows
        alone = app.store.load_dataset((accepted,), app.policy.data)
        assert alone.rows == receipt.rows == len(alone.features)
        # The parity check stays as a defence: a receipt that said otherwise does not load.
        for wrong in (accepted.rows - 1, accepted.rows + 1):
            lying = dataclasses.replace(accepted, rows=wrong)
            with pytest.raises(ShardError, match="does not read back.*receipt"):
                app.store.load_dataset((lying,), app.policy.data)
    assert trained_on(app).rows == 4010


# -- 3. memory ------------------------------------------------------------------------------------


def _csv_of_size(size: int) -> bytes:
    rng = np.random.default_rng(8)
    rows = size // 40 + 1
    x = rng.normal(size=(rows, 4))
    y = rng.integers(0, 3, rows)
    body = "".join(f"{a:.7f},{b:.7f},{c:.7f},{d:.7f},{k}\n" for (a, b, c, d), k in zip(x.tolist(), y.tolist(), strict=True))  # fmt: skip
    data = ("a,b,c,d,label\n" + body).encode()[:size]
    return data[: data.rfind(b"\n") + 1]


def test_memory_of_an_8_mib_csv_at_ingest_and_at_training(world: Any, tmp_path: Path) -> None:
    from cctrain_enclave.shards import open_parser

    _c, app, owner = world
    data = _csv_of_size(8 << 20)
    size = len(data)
    chunks = [data[i : i + (1 << 20)] for i in range(0, size, 1 << 20)]

    tracemalloc.start()
    try:
        parser = open_parser("csv", app.policy.data)
        for chunk in chunks:
            parser.feed(chunk)
        rows = parser.finish().rows
        _, ingest_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ingest_peak < 2 * size + (1 << 20), f"ingest peak {ingest_peak} B for {size} B"
    assert ingest_peak < 2 << 20, f"ingest peak {ingest_peak} B: should not grow with the shard"

    path = tmp_path / "big.csv"
    path.write_bytes(data)
    del chunks
    assert upload(owner, path).rows == rows  # 1 MiB chunks
    arrays_size = rows * (4 * 4 + 8)
    tracemalloc.start()
    try:
        got = trained_on(app)
        _, train_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.rows == rows
    assert train_peak < 2 * size + (1 << 20), f"training peak {train_peak} B for {size} B"
    assert train_peak - arrays_size < 5 << 20, (
        f"training peak {train_peak} B: {train_peak - arrays_size} B beyond the arrays "
        f"({arrays_size} B) for a {size}-byte shard"
    )


def test_bytes_that_are_not_the_committed_ones_fail_at_rest_whatever_they_parse_to(
    world: Any, tmp_path: Path
) -> None:
    """A stored shard re-encrypted (under its owner's key, which the host got from the owner)
    with bytes that do not even parse: every chunk authenticates, the parser refuses early,
    yet the pass runs to the end and the failure is the commitment's, at rest, naming no data
    and no parser finding; no array of it is used."""
    from cctrain.crypto.stream import StreamSealer
    from cctrain_enclave.errors import StoredShardError

    _c, app, owner = world
    rng = np.random.default_rng(9)
    path = npz_file(tmp_path / "s.npz", features=rng.normal(size=(500, 4)).astype(np.float32),
                    labels=rng.integers(0, 3, 500))  # fmt: skip
    upload(owner, path, chunk_size=4096)
    (shard,) = app.state.view.shards
    key = app.store.data_key(shard.header)
    header = shard.header
    sealer = StreamSealer(key, header.nonce_prefix, shard.header_sha256)
    junk = b"\x93NUMPY not a zip archive " * (int(header.plaintext_size) // 25 + 1)
    junk = junk[: int(header.plaintext_size)]
    cs, n = int(header.chunk_size), int(header.chunk_count)
    app.state.paths.shard_ciphertext(shard.header_sha256).write_bytes(
        b"".join(sealer.seal(i, junk[i * cs : (i + 1) * cs], last=i == n - 1) for i in range(n))
    )
    with pytest.raises(StoredShardError) as info:
        trained_on(app)
    assert info.value.at_rest
    assert "does not match the plaintext commitment" in str(info.value)
    assert "npz" not in str(info.value)
