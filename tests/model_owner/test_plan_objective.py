"""A package's own loss and metrics through a real enclave, under DP: the loss trains (one
row at a time), the metrics are released only as the policy names and opts them in, and the
recipient's verification of the manifest accepts them.

Roles played: two hospitals (data), the model owner (package; the only recipient), and the
consortium writing a policy that names metrics the package does not compute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cctrain.client import ModelOwner
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PolicyError
from cctrain.policy import parse_policy
from tests.consortium import policy_document, running_enclave
from tests.model_owner.test_model_owner import (
    HOSPITALS,
    LAYERS,
    OWNER,
    OWNER_ROLES,
    PLAN,
    initial_weights,
    owner_consortium,
    package_training,
    session,
    upload_data,
)

torch = pytest.importorskip("torch")
from cctrain.package import build_package  # noqa: E402

OBJECTIVE = '''

def loss(outputs, targets):
    """Label-smoothed cross-entropy, one value per row."""
    return torch.nn.functional.cross_entropy(
        outputs, targets, reduction="none", label_smoothing=0.1
    )


def metrics(outputs, targets):
    p = outputs.softmax(1)
    onehot = torch.nn.functional.one_hot(targets, p.shape[1]).to(p.dtype)
    return {"brier": (p - onehot).square().sum(1)}
'''
DP = {
    "enabled": True,
    "target_epsilon": 8.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "noise_source": "insecure-fast",
}
OWN_METRICS = ["train_brier", "val_brier"]


def test_package_loss_and_metrics_under_dp(tmp_path: Path) -> None:
    package = build_package({"plan.py": PLAN + OBJECTIVE, "layers.py": LAYERS}, initial_weights())
    (tmp_path / "model.pkg").write_bytes(package)
    training = package_training(package)
    c = owner_consortium(
        tmp_path / "c",
        package,
        privacy=DP,
        training=training | {"loss": "package", "metrics": {"brier": "min"}, "epochs": 3},
        validation={"fraction": 0.2, "early_stopping": {"metric": "val_brier", "patience": 5}},
        release={
            "recipients": [OWNER],
            "metrics": [*OWN_METRICS, "steps"],
            "non_private": [*OWN_METRICS, "early_stopping"],
        },
    )
    with running_enclave(c, tmp_path / "state") as (address, _):
        upload_data(address, c, tmp_path)
        with session(ModelOwner, address, c, OWNER) as mo:
            mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
            assert mo.wait_for_phase(("released", "failed"), timeout=180) == "released"
            model = mo.fetch_model()  # verifies the manifest against the policy
    manifest = model.manifest
    assert set(manifest["metrics"]) == {*OWN_METRICS, "steps"}
    assert all(0.0 <= manifest["metrics"][m] <= 2.0 for m in OWN_METRICS)
    assert set(OWN_METRICS) <= set(manifest["non_private_outputs"])
    assert manifest["model"]["hooks"] == ["loss", "metrics"]
    assert manifest["dp_certificate"]["epsilon"] <= 8.0


def _problems(mutate: Any) -> str:
    keys = {pid: PartyKeys.generate(pid) for pid in (*HOSPITALS, OWNER)}
    package = build_package({"plan.py": PLAN, "layers.py": LAYERS})
    doc = policy_document(
        keys,
        recipient=OWNER,
        recipient_roles=OWNER_ROLES,
        training=package_training(package),
        release={"recipients": [OWNER]},
    )
    mutate(doc)
    with pytest.raises(PolicyError) as err:
        parse_policy(json.dumps(doc).encode(), "json")
    return "\n".join(err.value.problems)


def test_policy_releases_only_the_package_metrics_it_names() -> None:
    def named(metrics: list[str], **extra: Any) -> Any:
        def mutate(d: dict[str, Any]) -> None:
            d["training"]["metrics"] = {"brier": "min"}
            d["release"]["metrics"] = metrics
            d.update(extra)

        return mutate

    unknown = _problems(named(["train_f1"]))
    assert "release.metrics: must be one of" in unknown
    assert "'train_brier'" in unknown and "got 'train_f1'" in unknown
    assert "'val_brier' needs a [validation] table" in _problems(named(["val_brier"]))
    under_dp = _problems(named(["train_brier"], privacy=DP))
    assert "'train_brier' is computed exactly on the private data" in under_dp
    stop_on = _problems(
        lambda d: (
            d["training"].update(metrics={"brier": "min"}),
            d.update(validation={"fraction": 0.2, "early_stopping": {"metric": "val_f1"}}),
        )
    )
    assert "validation.early_stopping.metric: must be one of" in stop_on
    assert "'val_brier'" in stop_on and "got 'val_f1'" in stop_on
