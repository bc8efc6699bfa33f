"""Held-out validation inside the enclave: split as every verifier recounts it, metrics released
only as the policy says, early stopping, and the DP rules for both."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.client import DataOwner, Recipient, SimulatedEvidenceWarning
from cctrain.errors import PolicyError
from cctrain.policy import parse_policy, split_rows
from tests.consortium import (
    PROVIDERS,
    RECIPIENT,
    Consortium,
    make_consortium,
    policy_document,
    running_enclave,
)

pytest.importorskip("torch")

ROWS = 200  # per provider


def _session(cls: Any, address: str, c: Consortium, party: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return cls(address, policy=c.signed, key=c.keys[party], allow_simulated=True)


def _shard(path: Path, seed: int, *, signal: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) if signal else rng.integers(0, 2, ROWS).astype(np.int64)
    np.savez(path, features=x, labels=y)
    return path


def _run(tmp: Path, *, signal: bool = True, **overrides: Any) -> dict[str, Any]:
    overrides.setdefault("training", TRAINING)
    c = make_consortium(tmp / "c", **overrides)
    with running_enclave(c, tmp / "state") as (address, _):
        for i, pid in enumerate(PROVIDERS):
            with _session(DataOwner, address, c, pid) as owner:
                owner.upload(_shard(tmp / f"{pid}.npz", i, signal=signal), state_dir=tmp / pid)
        with _session(Recipient, address, c, RECIPIENT) as r:
            assert r.wait_for_phase(("released", "failed"), timeout=180) == "released", (
                r.status().detail
            )
            return r.fetch_model().manifest  # verified: certificate, metrics, non-private list


TRAINING = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 2,
    "batch_size": 16,
}


def test_fraction_is_held_out_and_scored(tmp_path: Path) -> None:
    m = _run(
        tmp_path,
        validation={"fraction": 0.25},
        release={"recipients": [RECIPIENT], "metrics": ["val_accuracy", "val_loss", "steps"]},
    )
    assert set(m["metrics"]) == {"val_accuracy", "val_loss", "steps"}
    # 600 rows: 150 held out, 450 trained on, 16 per batch, 2 epochs.
    assert m["metrics"]["steps"] == 2 * math.ceil(450 / 16)
    assert m["metrics"]["val_accuracy"] > 0.9  # the label is the sign of feature 0


def test_a_party_held_out_for_validation(tmp_path: Path) -> None:
    m = _run(
        tmp_path,
        validation={"parties": ["hospital-c"]},
        release={"recipients": [RECIPIENT], "metrics": ["val_accuracy", "steps"]},
    )
    assert m["metrics"]["steps"] == 2 * math.ceil(400 / 16)
    assert m["metrics"]["val_accuracy"] > 0.9


def test_early_stopping_stops_when_validation_stops_improving(tmp_path: Path) -> None:
    """Random labels: nothing to learn, the held-out loss stops improving at once."""
    m = _run(
        tmp_path,
        signal=False,
        validation={"fraction": 0.3, "early_stopping": {"metric": "val_loss", "patience": 1}},
        training=TRAINING | {"epochs": 30, "optimizer": {"name": "sgd", "lr": 0.5}},
        release={"recipients": [RECIPIENT], "metrics": ["val_loss", "steps"]},
    )
    per_epoch = math.ceil(420 / 16)
    assert m["metrics"]["steps"] % per_epoch == 0
    assert m["metrics"]["steps"] < 30 * per_epoch


def test_under_dp_the_certificate_counts_only_the_training_rows(tmp_path: Path) -> None:
    m = _run(
        tmp_path,
        validation={"fraction": 0.25, "early_stopping": {"metric": "val_accuracy"}},
        privacy={
            "enabled": True,
            "target_epsilon": 5.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "noise_source": "insecure-fast",
        },
        release={
            "recipients": [RECIPIENT],
            "metrics": ["val_accuracy", "steps"],
            "non_private": ["val_accuracy", "early_stopping"],
        },
    )
    cert = m["dp_certificate"]
    assert cert["sample_rate"] == 1 / math.ceil(450 / 16)
    assert m["non_private_outputs"] == ["early_stopping", "val_accuracy"]


def _problems(**overrides: Any) -> str:
    from cctrain.crypto.keys import PartyKeys

    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}
    doc = policy_document(keys, **overrides)
    with pytest.raises(PolicyError) as err:
        parse_policy(json.dumps(doc).encode(), "json")
    return "\n".join(err.value.problems)


DP = {"enabled": True, "target_epsilon": 5.0, "delta": 1e-5, "max_grad_norm": 1.0}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"release": {"recipients": [RECIPIENT], "metrics": ["val_loss"]}}, "needs a [validation]"),
        ({"validation": {"fraction": 0.2, "parties": ["hospital-a"]}}, "exactly one of"),
        ({"validation": {"fraction": 0.9}}, "in (0, 0.5]"),
        ({"validation": {"parties": list(PROVIDERS)}}, "nothing left to train on"),
        ({"validation": {"parties": [RECIPIENT]}}, "is not a data_provider"),
        ({"validation": {"fraction": 0.2, "early_stopping": {"metric": "steps"}}}, "metric"),
        (
            {
                "validation": {"fraction": 0.2, "early_stopping": {"metric": "val_loss"}},
                "privacy": DP,
                "release": {"recipients": [RECIPIENT], "metrics": ["steps"]},
            },
            "list 'early_stopping' in release.non_private",
        ),
        (
            {
                "validation": {"fraction": 0.2},
                "privacy": DP,
                "release": {"recipients": [RECIPIENT], "metrics": ["val_loss"]},
            },
            "list it in release.non_private",
        ),
    ],
)
def test_policy_rules(overrides: dict[str, Any], reason: str) -> None:
    assert reason in _problems(**overrides)


def test_split_rows_is_what_verifiers_recount() -> None:
    from cctrain.crypto.keys import PartyKeys

    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}

    def policy(**v: Any) -> Any:
        return parse_policy(json.dumps(policy_document(keys, validation=v)).encode(), "json")

    rows = [("hospital-a", 7), ("hospital-b", 2), ("hospital-c", 1)]
    assert split_rows(policy(fraction=0.25), rows) == (8, 2)
    assert split_rows(policy(fraction=0.01), rows) == (9, 1)  # at least one row held out
    assert split_rows(policy(parties=["hospital-b"]), rows) == (8, 2)
