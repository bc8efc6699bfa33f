"""Regression targets, string labels by vocabulary and named CSV columns, through a real enclave:
uploaded, validated, trained, released and verified; bad labels refused with nothing kept."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.client import DataOwner, Recipient, SimulatedEvidenceWarning
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PolicyError, UploadRejectedError
from cctrain.policy import parse_policy
from tests.consortium import (
    PROVIDERS,
    RECIPIENT,
    Consortium,
    make_consortium,
    policy_document,
    running_enclave,
)

pytest.importorskip("torch")

ROWS = 200
NAMES = ["age", "dose", "weight", "score"]
REGRESSION_DATA = {
    "features": {"shape": [4], "dtype": "float32"},
    "labels": {"dtype": "float32"},
    "max_rows": 100_000,
    "max_bytes": 8 << 20,
}
TRAIN = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "epochs": 5,
    "batch_size": 16,
}


def _session(cls: Any, address: str, c: Consortium, party: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return cls(address, policy=c.signed, key=c.keys[party], allow_simulated=True)


def _xy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    y = (2.0 * x[:, 0] - x[:, 1] + 0.5 + 0.05 * rng.normal(size=ROWS)).astype(np.float32)
    return x, y


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _release(tmp: Path, c: Consortium, shards: dict[str, Path]) -> dict[str, Any]:
    with running_enclave(c, tmp / "state") as (address, _):
        for pid, path in shards.items():
            with _session(DataOwner, address, c, pid) as owner:
                owner.upload(path, state_dir=tmp / pid)
        with _session(Recipient, address, c, RECIPIENT) as r:
            phase = r.wait_for_phase(("released", "failed"), timeout=180)
            assert phase == "released", r.status().detail
            model = r.fetch_model()
    return {"manifest": model.manifest, "model": model}


def test_regression_npz_trains_to_a_low_error(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        data=REGRESSION_DATA,
        training=TRAIN | {"task": "regression"},
        release={"recipients": [RECIPIENT], "metrics": ["train_loss", "train_mae"]},
    )
    shards = {}
    for i, pid in enumerate(PROVIDERS):
        x, y = _xy(i)
        np.savez(tmp_path / f"{pid}.npz", features=x, labels=y)
        shards[pid] = tmp_path / f"{pid}.npz"
    out = _release(tmp_path, c, shards)
    metrics = out["manifest"]["metrics"]
    # The targets' variance is about 5.3; the linear model recovers them to the noise.
    assert metrics["train_loss"] < 0.05
    assert metrics["train_mae"] < 0.2
    net = out["model"].to_torch()
    assert net[1].out_features == 1


def test_regression_csv_by_column_name_under_dp(tmp_path: Path) -> None:
    """Columns in another order than the policy's, one extra column ignored, DP on."""
    data = REGRESSION_DATA | {
        "formats": ["csv"],
        "csv": {
            "label_column": "outcome",
            "feature_columns": NAMES,
            "ignore_extra_columns": True,
        },
    }
    c = make_consortium(
        tmp_path / "c",
        data=data,
        training=TRAIN | {"task": "regression", "epochs": 3},
        privacy={
            "enabled": True,
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "max_grad_norm": 5.0,
            "noise_source": "insecure-fast",
        },
        release={"recipients": [RECIPIENT], "metrics": ["steps"]},
    )
    shards = {}
    order = ["outcome", "note", *reversed(NAMES)]
    for i, pid in enumerate(PROVIDERS):
        x, y = _xy(i)
        rows = [
            [f"{t:.6f}", "n/a", *(f"{v:.6f}" for v in reversed(row))]
            for row, t in zip(x, y, strict=True)
        ]
        shards[pid] = _csv(tmp_path / f"{pid}.csv", order, rows)
    out = _release(tmp_path, c, shards)
    cert = out["manifest"]["dp_certificate"]
    assert cert["epsilon"] <= 8.0
    w = out["model"].state_dict()["1.weight"][0]
    # The weights follow the named columns, not their position in the file.
    assert w[0] > 1.0 and w[1] < -0.3


def test_string_labels_by_vocabulary(tmp_path: Path) -> None:
    data = {
        "formats": ["csv"],
        "features": {"shape": [4], "dtype": "float32"},
        "labels": {"vocabulary": ["benign", "malignant"]},
        "max_rows": 100_000,
        "max_bytes": 8 << 20,
        "csv": {"label_column": "diagnosis"},
    }
    c = make_consortium(
        tmp_path / "c",
        data=data,
        training=TRAIN | {"optimizer": {"name": "sgd", "lr": 0.5}},
        release={"recipients": [RECIPIENT], "metrics": ["train_accuracy"]},
    )
    shards = {}
    for i, pid in enumerate(PROVIDERS):
        x, _ = _xy(i)
        rows = [[*(f"{v:.6f}" for v in row), "malignant" if row[0] > 0 else "benign"] for row in x]
        shards[pid] = _csv(tmp_path / f"{pid}.csv", [*NAMES, "diagnosis"], rows)
    out = _release(tmp_path, c, shards)
    assert out["manifest"]["metrics"]["train_accuracy"] > 0.95
    assert out["manifest"]["model"]["num_outputs"] == 2


@pytest.mark.parametrize(
    ("kind", "make", "reason"),
    [
        (
            "vocab",
            lambda p: _csv(
                p,
                [*NAMES, "diagnosis"],
                [["1", "2", "3", "4", "benign"]] * 5 + [["1", "2", "3", "4", "SECRET-x9"]],
            ),
            "not in data.labels.vocabulary",
        ),
        (
            "float",
            lambda p: _csv(
                p,
                [*NAMES, "outcome"],
                [["1", "2", "3", "4", "0.5"]] * 5 + [["1", "2", "3", "4", "high"]],
            ),
            "is not a number",
        ),
        (
            "float",
            lambda p: _csv(
                p,
                [*NAMES, "outcome"],
                [["1", "2", "3", "4", "0.5"]] * 5 + [["1", "2", "3", "4", "nan"]],
            ),
            "regression target is NaN",
        ),
        (
            "float-npz",
            lambda p: (
                np.savez(
                    p,
                    features=np.ones((6, 4), np.float32),
                    labels=np.array([1, 2, 3, 4, 5, np.inf], np.float32),
                ),
                p,
            )[1],
            "regression target is NaN",
        ),
        (
            "int-npz",
            lambda p: (
                np.savez(
                    p, features=np.ones((6, 4), np.float32), labels=np.full(6, 0.5, np.float32)
                ),
                p,
            )[1],
            "want an integer type",
        ),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_kept(
    tmp_path: Path, kind: str, make: Any, reason: str
) -> None:
    base = {"features": {"shape": [4], "dtype": "float32"}, "max_rows": 1000, "max_bytes": 1 << 20}
    if kind == "vocab":
        data = base | {
            "formats": ["csv"],
            "labels": {"vocabulary": ["benign", "malignant"]},
            "csv": {"label_column": "diagnosis"},
        }
        training = TRAIN
    elif kind == "int-npz":
        data = base | {"labels": {"num_classes": 2}}
        training = TRAIN
    else:
        data = base | {"labels": {"dtype": "float32"}, "csv": {"label_column": "outcome"}}
        training = TRAIN | {"task": "regression"}
    c = make_consortium(
        tmp_path / "c", data=data, training=training, release={"recipients": [RECIPIENT]}
    )
    path = make(tmp_path / ("shard.npz" if kind.endswith("npz") else "shard.csv"))
    with running_enclave(c, tmp_path / "state") as (address, _):
        with _session(DataOwner, address, c, "hospital-a") as owner:
            with pytest.raises(UploadRejectedError) as err:
                owner.upload(path, state_dir=tmp_path / "a")
            assert owner.receipts() == []
    assert reason in str(err.value)
    assert "SECRET" not in str(err.value)  # a label's value never appears in a message
    leftovers = [p for p in (tmp_path / "state" / "uploads").rglob("*") if p.is_file()]
    assert leftovers == []
    assert not any((tmp_path / "state" / "shards").iterdir())


def _problems(**overrides: Any) -> str:
    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}
    doc = policy_document(keys, **overrides)
    with pytest.raises(PolicyError) as err:
        parse_policy(json.dumps(doc).encode(), "json")
    return "\n".join(err.value.problems)


def test_policy_rules_for_tasks_and_labels() -> None:
    data = {"features": {"shape": [4], "dtype": "float32"}, "max_rows": 10, "max_bytes": 100}
    assert "needs float targets" in _problems(
        data=data | {"labels": {"num_classes": 2}}, training=TRAIN | {"task": "regression"}
    )
    assert 'need training.task = "regression"' in _problems(
        data=data | {"labels": {"dtype": "float32"}}
    )
    assert "exactly one of" in _problems(
        data=data | {"labels": {"num_classes": 2, "vocabulary": ["a", "b"]}}
    )
    assert "more than once" in _problems(data=data | {"labels": {"vocabulary": ["a", "a"]}})
    assert "leading or trailing spaces" in _problems(
        data=data | {"labels": {"vocabulary": ["a", " b"]}}
    )
    assert "is a classification metric" in _problems(
        data=data | {"labels": {"dtype": "float32"}},
        training=TRAIN | {"task": "regression"},
        release={"recipients": [RECIPIENT], "metrics": ["train_accuracy"]},
    )
