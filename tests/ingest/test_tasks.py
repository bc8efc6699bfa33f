"""Tasks beyond integer classes, end to end against a real enclave on a loopback port: the
policy, upload validation in the enclave, loading, training and the verified release, for
regression targets, text labels (a vocabulary) and Parquet shards; and the refusals, each
with its reason and nothing kept."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.client import DataOwner, Recipient, SimulatedEvidenceWarning
from cctrain.errors import ShardError, UploadRejectedError
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.test_bad_input import assert_nothing_kept

pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = 240  # per provider
W = np.array([1.5, -2.0, 0.5, 1.0])
FEATURES = ["f1", "f2", "f3", "f4"]


def _session(cls: Any, address: str, c: Consortium, party: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return cls(address, policy=c.signed, key=c.keys[party], allow_simulated=True)


def _upload(address: str, c: Consortium, party: str, path: Path) -> Any:
    with _session(DataOwner, address, c, party) as owner:
        return owner.upload(path, state_dir=path.parent / f"{party}-state", chunk_size=4096)


def _released(address: str, c: Consortium) -> Any:
    with _session(Recipient, address, c, RECIPIENT) as r:
        phase = r.wait_for_phase(("released", "failed"), timeout=180)
        assert phase == "released", r.status().detail
        return r.fetch_model()  # verified: manifest, evidence, receipts, model hash


def _rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ROWS, 4))


def _targets(x: np.ndarray, seed: int) -> np.ndarray:
    return x @ W + 0.1 * np.random.default_rng(seed + 100).normal(size=len(x))


def _csv(path: Path, header: list[str], columns: dict[str, list[str]]) -> Path:
    lines = [",".join(header)]
    lines += [",".join(columns[h][i] for h in header) for i in range(ROWS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _parquet(path: Path, columns: dict[str, Any], **kw: Any) -> Path:
    pq.write_table(pa.table(columns), path, **kw)
    return path


def _data(formats: list[str], labels: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "formats": formats,
        "features": {"shape": [4], "dtype": "float32"},
        "labels": labels,
        "max_rows": 100_000,
        "max_bytes": 8 << 20,
        "csv": {
            "label_column": "target",
            "feature_columns": FEATURES,
            "ignore_extra_columns": True,
        },  # fmt: skip
        "parquet": {"label_column": "target", "feature_columns": FEATURES},
    } | extra


# -- regression ----------------------------------------------------------------------------------

REGRESSION_TRAINING = {
    "task": "regression",
    "model": {"name": "logreg"},  # a linear layer with one output
    "optimizer": {"name": "adam", "lr": 0.05},
    "epochs": 2,
    "batch_size": 16,
    "seed": 1,
}


def _regression_shards(tmp: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """hospital-a: NPZ (float64 targets); -b: CSV, columns by name, extra ones ignored;
    -c: Parquet, typed columns in another order. The pooled rows in upload order."""
    xs = [_rows(i) for i in range(3)]
    ys = [_targets(x, i) for i, x in enumerate(xs)]
    a = tmp / "a.npz"
    np.savez(a, features=xs[0].astype(np.float32), labels=ys[0])  # float64 targets
    text = {f: [repr(float(v)) for v in xs[1][:, j]] for j, f in enumerate(FEATURES)}
    text |= {"target": [repr(float(v)) for v in ys[1]], "site": ["x"] * ROWS,
             "id": [str(i) for i in range(ROWS)]}  # fmt: skip
    b = _csv(tmp / "b.csv", ["id", "f3", "target", "f1", "site", "f4", "f2"], text)
    c = _parquet(
        tmp / "c.parquet",
        {
            "target": ys[2].astype(np.float32),
            "f4": xs[2][:, 3],
            "f2": xs[2][:, 1],
            "f1": xs[2][:, 0].astype(np.float32),
            "f3": xs[2][:, 2],
        },  # fmt: skip
        row_group_size=100,
    )
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate([ys[0], ys[1], ys[2].astype(np.float32)]).astype(np.float32)
    return [a, b, c], x, y


def _mse_of(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x)).reshape(-1).double().numpy()
    return float(((pred - y.astype(np.float64)) ** 2).mean())


def test_regression_on_npz_csv_and_parquet_trains_and_releases(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        data=_data(["npz", "csv", "parquet"], {"dtype": "float32"}),
        training=REGRESSION_TRAINING,
        release={"recipients": [RECIPIENT], "metrics": ["train_loss", "train_mse", "train_mae"]},
    )
    shards, x, y = _regression_shards(tmp_path)
    with running_enclave(c, tmp_path / "state") as (address, app):
        # Integer labels are not regression targets: refused, nothing kept.
        wrong = tmp_path / "ints.npz"
        np.savez(wrong, features=x[:50], labels=np.arange(50))
        with pytest.raises(UploadRejectedError, match="want float32 or float64"):
            _upload(address, c, "hospital-a", wrong)
        assert_nothing_kept(app, shard="ints")
        receipts = [_upload(address, c, p, s) for p, s in zip(PROVIDERS, shards, strict=True)]
        assert [r.rows for r in receipts] == [ROWS] * 3
        fetched = _released(address, c)
    m = fetched.manifest
    assert m["model"]["num_outputs"] == 1
    assert m["training"]["task"] == "regression"
    assert set(m["metrics"]) == {"train_loss", "train_mse", "train_mae"}
    variance = float(y.var())
    assert variance > 5
    # Deterministic (fixed seed, no DP): the noise floor is 0.01, the variance ~8.
    assert m["metrics"]["train_mse"] < 0.02 * variance, m["metrics"]
    # The released weights are the model scored, on exactly the rows uploaded (a column
    # taken out of order, in any format, would show here).
    model = fetched.to_torch()
    assert _mse_of(model, x, y) == pytest.approx(m["metrics"]["train_mse"], rel=1e-4)


def test_regression_under_dp_through_the_fast_path(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        providers=("hospital-a",),
        data=_data(["npz"], {"dtype": "float32"}),
        training=REGRESSION_TRAINING | {"epochs": 3},
        privacy={
            "enabled": True,
            "target_epsilon": 8.0,
            "delta": 1e-4,
            "max_grad_norm": 1.0,
            "noise_source": "insecure-fast",  # seeded: the run is reproducible
        },
        release={
            "recipients": [RECIPIENT],
            "metrics": ["train_mse", "steps"],
            "non_private": ["train_mse"],
        },  # fmt: skip
    )
    x = np.random.default_rng(5).normal(size=(1000, 4))
    y = _targets(x, 5)
    path = tmp_path / "a.npz"
    np.savez(path, features=x.astype(np.float32), labels=y.astype(np.float32))
    with running_enclave(c, tmp_path / "state") as (address, _):
        _upload(address, c, "hospital-a", path)
        m = _released(address, c).manifest
    cert = m["dp_certificate"]
    assert cert["grad_sample_mode"] == "fast" and cert["epsilon"] <= 8.0
    assert m["metrics"]["train_mse"] < 0.2 * float(y.var()), m["metrics"]
    assert "train_mse" in m["non_private_outputs"]


# -- text labels ---------------------------------------------------------------------------------

VOCABULARY = ["benign", "malignant"]
CLASSIFICATION = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "epochs": 2,
    "batch_size": 16,
    "seed": 2,
}


def _words(x: np.ndarray) -> np.ndarray:
    return np.where(x[:, 0] - x[:, 1] > 0, "malignant", "benign")


def test_text_labels_in_every_format_train_well_above_chance(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        data=_data(["npz", "csv", "parquet"], {"vocabulary": VOCABULARY}),
        training=CLASSIFICATION,
        release={"recipients": [RECIPIENT], "metrics": ["train_accuracy", "train_loss"]},
    )
    xs = [_rows(10 + i) for i in range(3)]
    a = tmp_path / "a.npz"
    np.savez(a, features=xs[0].astype(np.float32), labels=_words(xs[0]))  # <U9
    text = {f: [repr(float(v)) for v in xs[1][:, j]] for j, f in enumerate(FEATURES)}
    quoted = [f'"{w}"' if i % 2 else w for i, w in enumerate(_words(xs[1]))]
    b = _csv(tmp_path / "b.csv", ["target", *FEATURES], text | {"target": quoted})
    parquet_cols = {f: xs[2][:, j] for j, f in enumerate(FEATURES)}
    cpath = _parquet(tmp_path / "c.parquet", parquet_cols | {"target": _words(xs[2])})
    with running_enclave(c, tmp_path / "state") as (address, app):
        for party, path in zip(PROVIDERS, (a, b, cpath), strict=True):
            assert _upload(address, c, party, path).rows == ROWS
        loaded = app.store.load_dataset(tuple(app.state.view.shards), app.policy.data)
        want = np.concatenate([_words(x) == "malignant" for x in xs]).astype(np.int64)
        np.testing.assert_array_equal(loaded.labels, want)  # each label as its index
        m = _released(address, c).manifest
    assert m["model"]["num_outputs"] == 2
    # Chance is about 0.5; a linear rule separates the classes.
    assert m["metrics"]["train_accuracy"] > 0.9, m["metrics"]


def test_parquet_with_integer_classes(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        providers=("hospital-a",),
        data=_data(["parquet"], {"num_classes": 3}),
        training=CLASSIFICATION | {"epochs": 3},
        release={"recipients": [RECIPIENT], "metrics": ["train_accuracy"]},
    )
    x = np.random.default_rng(20).normal(size=(900, 4))
    y = np.digitize(x[:, 0] + x[:, 2], [-0.6, 0.6])  # 3 classes
    cols = {f: x[:, j].astype(np.float32) for j, f in enumerate(FEATURES)}
    path = _parquet(tmp_path / "a.parquet", cols | {"target": y.astype(np.int8)},
                    row_group_size=128, compression="zstd")  # fmt: skip
    with running_enclave(c, tmp_path / "state") as (address, _):
        assert _upload(address, c, "hospital-a", path).rows == 900
        m = _released(address, c).manifest
    assert m["model"]["num_outputs"] == 3
    assert m["metrics"]["train_accuracy"] > 0.8, m["metrics"]  # chance ~0.33


# -- refusals --------------------------------------------------------------------------------------


def test_refusals_name_their_reason_and_keep_nothing(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        providers=("hospital-a",),
        data=_data(
            ["npz", "csv", "parquet"],
            {"vocabulary": VOCABULARY},
            parquet={
                "label_column": "target",
                "feature_columns": FEATURES,
                "max_row_group_bytes": 64 << 10,
            },  # fmt: skip
        ),
        training=CLASSIFICATION,
    )
    x = _rows(30)
    words = _words(x)
    secret = words.copy().astype("<U16")
    secret[17] = "secret-label-42"  # not in the vocabulary: the value must not be echoed
    text = {f: [repr(float(v)) for v in x[:, j]] for j, f in enumerate(FEATURES)}
    cols = {f: x[:, j] for j, f in enumerate(FEATURES)}
    nan = x[:, 2].copy()
    nan[5] = np.nan
    big = np.random.default_rng(31).normal(size=(6000, 4))
    files: dict[str, tuple[Path, str]] = {}

    def npz(name: str, labels: Any) -> Path:
        np.savez(tmp_path / f"{name}.npz", features=x.astype(np.float32), labels=labels)
        return tmp_path / f"{name}.npz"

    files["oov_npz"] = (npz("oov_npz", secret), "not in data.labels.vocabulary")
    files["oov_csv"] = (
        _csv(tmp_path / "oov_csv.csv", ["target", *FEATURES], text | {"target": list(secret)}),
        "line 19: the label column 'target' holds a label that is not in",
    )
    files["oov_parquet"] = (
        _parquet(tmp_path / "oov_parquet.parquet", cols | {"target": secret}),
        "not in data.labels.vocabulary",
    )
    files["int_labels"] = (npz("int_labels", np.arange(ROWS) % 2), "want text labels")
    files["text_feature"] = (
        _parquet(
            tmp_path / "text_feature.parquet",
            cols | {"f2": [str(v) for v in x[:, 1]], "target": words},
        ),  # fmt: skip
        "column 'f2' has type string: features are numbers",
    )
    files["nulls"] = (
        _parquet(
            tmp_path / "nulls.parquet", cols | {"f3": pa.array([None, *x[1:, 2]]), "target": words}
        ),  # fmt: skip
        "feature column 'f3' holds nulls",
    )
    files["nan"] = (
        _parquet(tmp_path / "nan.parquet", cols | {"f3": nan, "target": words}),
        "NaN or infinity",
    )
    files["huge_group"] = (
        _parquet(
            tmp_path / "huge_group.parquet",
            {f: big[:, j] for j, f in enumerate(FEATURES)} | {"target": ["benign"] * 6000},
            row_group_size=6000,
        ),
        "row group 0 is too large",
    )
    # The SDK checks only the magic at both ends; the enclave reads the rest.
    files["bad_footer"] = (tmp_path / "bad_footer.parquet", "its footer length field says 0")
    files["bad_footer"][0].write_bytes(b"PAR1" + b"\0" * 200 + b"PAR1")
    truncated = _parquet(tmp_path / "full.parquet", cols | {"target": words}).read_bytes()
    files["truncated"] = (tmp_path / "truncated.parquet", "not a valid parquet shard")
    files["truncated"][0].write_bytes(truncated[: len(truncated) // 2] + b"PAR1")
    with running_enclave(c, tmp_path / "state") as (address, app):
        for name, (path, reason) in files.items():
            with pytest.raises(UploadRejectedError) as info:
                _upload(address, c, "hospital-a", path)
            assert reason in str(info.value), (name, str(info.value))
            assert "secret-label" not in str(info.value)
            assert_nothing_kept(app, shard=name)
        assert app.state.view.shards == ()
        assert list(app.state.paths.shards.iterdir()) == []
        # Not Parquet at all: the SDK refuses it before sending anything.
        junk = tmp_path / "junk.parquet"
        junk.write_bytes(b"not parquet at all")
        with pytest.raises(ShardError, match="not a Parquet file"):
            _upload(address, c, "hospital-a", junk)
        # The enclave still serves: a good shard is accepted.
        good = _parquet(tmp_path / "good.parquet", cols | {"target": words})
        assert _upload(address, c, "hospital-a", good).rows == ROWS


def test_a_parquet_chunk_changed_between_the_two_reads_is_the_hosts_fault(
    tmp_path: Path,
) -> None:
    """At training the committed pass hashes every chunk; the structure read then fetches the
    chunks again. A host that swaps one in between (a provider gave it the data key) is
    caught, and named at rest."""
    from cctrain_enclave.errors import StoredShardError

    c = make_consortium(
        tmp_path / "c",
        providers=("hospital-a",),
        data=_data(["parquet"], {"num_classes": 2}),
        training=CLASSIFICATION,
        start={"auto_start": False},
    )
    x = _rows(40)
    cols = {f: x[:, j] for j, f in enumerate(FEATURES)}
    path = _parquet(tmp_path / "a.parquet", cols | {"target": (x[:, 0] > 0).astype(np.int64)})
    with running_enclave(c, tmp_path / "state") as (address, app):
        _upload(address, c, "hospital-a", path)
        shards = tuple(app.state.view.shards)
        assert app.store.load_dataset(shards, app.policy.data).rows == ROWS
        real = app.store.accepted_pieces

        class Swapped:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def piece(self, index: int) -> bytes:
                data = self.inner.piece(index)
                return data[:-1] + bytes([data[-1] ^ 1]) if index == 0 else data

        app.store.accepted_pieces = lambda shard: Swapped(real(shard))
        with pytest.raises(StoredShardError) as info:
            app.store.load_dataset(shards, app.policy.data)
        assert info.value.at_rest
        assert "altered at rest" in str(info.value)


class _Drop(Exception):
    pass


def test_a_parquet_upload_resumes_and_reads_its_resumed_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a dropped connection the enclave re-reads the durable prefix (feeding the parser
    each chunk's digest again); the structure read at the end covers old and new chunks."""
    import time

    import cctrain_enclave.ingest as ingest
    from cctrain.errors import ProtocolError
    from cctrain.v1 import enclave_pb2 as pb

    monkeypatch.setattr(ingest, "ACK_EVERY_BYTES", 64 << 10)
    c = make_consortium(
        tmp_path / "c",
        providers=("hospital-a",),
        data=_data(["parquet"], {"num_classes": 2}),
        training=CLASSIFICATION,
        start={"auto_start": False},
    )
    x = np.random.default_rng(40).normal(size=(32_000, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    cols = {f: x[:, j] for j, f in enumerate(FEATURES)}
    path = _parquet(tmp_path / "big.parquet", cols | {"target": y},
                    compression="none", row_group_size=8000)  # fmt: skip
    chunk = 64 << 10
    assert path.stat().st_size > 12 * chunk
    with running_enclave(c, tmp_path / "state") as (address, app):
        owner = _session(DataOwner, address, c, "hospital-a")
        state = tmp_path / "owner-state"

        def drop_midway(sent: int, total: int) -> None:
            if sent < 8 * chunk:
                return
            deadline = time.time() + 60
            while time.time() < deadline:
                progress = app.store.partial_progress("hospital-a", "big")
                if progress is not None and progress[1] >= 2:
                    break
                time.sleep(0.01)
            raise _Drop

        with owner:
            with pytest.raises((_Drop, ProtocolError)):
                owner.upload(path, chunk_size=chunk, progress=drop_midway, state_dir=state)
            # Wait until the enclave noticed the drop: its acknowledged prefix stops moving.
            deadline, previous = time.time() + 10, None
            while time.time() < deadline:
                status = owner.unary("UploadStatus", pb.UploadStatusRequest(shard_id="big"))
                partial = status.state == pb.UploadStatusResponse.PARTIAL
                if partial and previous == status.next_index:
                    break
                previous = status.next_index if partial else None
                time.sleep(0.2)
            assert status.state == pb.UploadStatusResponse.PARTIAL
            starts: list[int] = []
            receipt = owner.upload(
                path,
                chunk_size=chunk,
                progress=lambda sent, total: starts.append(sent) if not starts else None,
                state_dir=state,
            )
        assert starts[0] > 0  # resumed, not restarted
        assert receipt.rows == 32_000
        got = app.store.load_dataset(tuple(app.state.view.shards), app.policy.data)
    np.testing.assert_array_equal(got.features, x.astype(np.float32))
    np.testing.assert_array_equal(got.labels, y)
