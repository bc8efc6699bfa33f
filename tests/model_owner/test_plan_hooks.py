"""A package's training-plan hooks (optimizer, LR schedule, augmentation) and the built-in
schedules, run through the enclave's own trainer."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from typing import Any

import numpy as np
import pytest

from cctrain.errors import CctrainError, PolicyError
from cctrain.package import build_package
from cctrain.policy import parse_policy
from tests.consortium import PROVIDERS, RECIPIENT, policy_document

torch = pytest.importorskip("torch")
from cctrain_enclave.trainer import train  # noqa: E402
from cctrain_enclave.trainer.schedule import build_schedule  # noqa: E402

BASE = """
import torch
from torch import nn

def build_model(feature_shape, num_outputs):
    return nn.Sequential(nn.Linear(feature_shape[0], num_outputs))
"""


def data(rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def run(
    source: str, *, dp: bool = False, train_kwargs: dict[str, Any] | None = None, **training: Any
) -> Any:
    """``train`` on :func:`data` with the package ``source``; ``training`` overrides the plan,
    ``train_kwargs`` are passed to ``train`` (validation rows, early stopping)."""
    package = build_package({"plan.py": source})
    cfg = {
        "model": {
            "name": "package",
            "package_sha256": hashlib.sha256(package).hexdigest(),
            "module": "plan",
            "entry": "build_model",
            "params": {},
        },
        "optimizer": {"name": "sgd", "lr": 0.5},
        "epochs": 2,
        "batch_size": 16,
        "seed": 3,
    } | training
    privacy = (
        {
            "enabled": True,
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "accountant": "rdp",
            "noise_source": "insecure-fast",
            "grad_sample_mode": "auto",
        }
        if dp
        else {"enabled": False}
    )
    x, y = data()
    return train(
        x,
        y,
        num_classes=2,
        training=cfg,
        privacy=privacy,
        simulated_platform=True,
        checkpoint=None,
        progress=None,
        model_package=package,
        **(train_kwargs or {}),
    ), package


def plan_module(package: bytes) -> Any:
    return sys.modules[f"cctrain_package_{hashlib.sha256(package).hexdigest()[:24]}.plan"]


def test_package_schedule_of_zero_leaves_the_weights_as_built() -> None:
    src = BASE + "\ndef lr_multiplier(step, total):\n    return 0.0\n"
    result, package = run(src, lr_schedule={"name": "package"})
    torch.manual_seed(3)
    start = plan_module(package).build_model((4,), 2)
    for k, v in start.state_dict().items():
        assert torch.equal(result.state_dict[k], v), k
    assert result.model_spec["hooks"] == ["lr_multiplier"]


def test_package_optimizer_is_used_with_its_params() -> None:
    src = BASE + (
        "\nSEEN = []\n"
        "def configure_optimizer(params, *, lr, momentum):\n"
        "    SEEN.append((lr, momentum))\n"
        "    return torch.optim.SGD(params, lr=lr, momentum=momentum)\n"
    )
    result, package = run(
        src, optimizer={"name": "package", "lr": 0.1, "params": {"momentum": 0.5}}
    )
    assert plan_module(package).SEEN == [(0.1, 0.5)]
    assert result.metrics["train_accuracy"] > 0.8
    bad = BASE + "\ndef configure_optimizer(params, *, lr):\n    return 'an optimizer'\n"
    with pytest.raises(CctrainError, match="returned no torch.optim.Optimizer"):
        run(bad, optimizer={"name": "package", "lr": 0.1})


def test_under_dp_augment_sees_one_row_at_a_time() -> None:
    """A batch-mixing augmentation cannot mix rows under DP: it is called per row."""
    src = BASE + (
        "\nSIZES = set()\n"
        "def augment(x, y, generator):\n"
        "    SIZES.add(len(x))\n"
        "    return x.mean(0, keepdim=True).expand_as(x).contiguous(), y\n"
    )
    _, package = run(src, dp=True)
    assert plan_module(package).SIZES == {1}
    # Without DP the whole batch is passed (rows may mix: no per-row guarantee to keep).
    other = src + "\n# no DP\n"
    _, package2 = run(other)
    assert max(plan_module(package2).SIZES) > 1


def test_augment_that_changes_shapes_is_refused() -> None:
    src = BASE + "\ndef augment(x, y, generator):\n    return x[:, :2], y\n"
    with pytest.raises(CctrainError, match="shapes and dtypes"):
        run(src)


def test_augment_randomness_follows_seed_and_step() -> None:
    src = BASE + (
        "\ndef augment(x, y, generator):\n"
        "    return x + 0.1 * torch.randn(x.shape, generator=generator), y\n"
    )
    a, _ = run(src)
    b, _ = run(src + "\n")  # another package, same code: same seeded noise
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k])
    plain, _ = run(BASE)  # and the noise was applied: without it the weights differ
    assert not torch.equal(a.state_dict["0.weight"], plain.state_dict["0.weight"])


@pytest.mark.parametrize(
    ("cfg", "at"),
    [
        ({"name": "constant"}, {0: 1.0, 99: 1.0}),
        ({"name": "cosine"}, {0: 1.0, 50: 0.5, 100: 0.0}),
        ({"name": "cosine", "min_lr_ratio": 0.1}, {100: 0.1}),
        ({"name": "linear"}, {0: 1.0, 25: 0.75, 100: 0.0}),
        ({"name": "step", "step_size": 10, "gamma": 0.5}, {9: 1.0, 10: 0.5, 25: 0.25}),
        ({"name": "cosine", "warmup_steps": 10}, {0: 0.1, 4: 0.5, 10: 1.0}),
    ],
)
def test_builtin_schedules(cfg: dict[str, Any], at: dict[int, float]) -> None:
    f = build_schedule(cfg, None)
    for step, want in at.items():
        assert math.isclose(f(step, 100), want, abs_tol=1e-12), (cfg, step)


def test_schedule_changes_training_exactly_as_configured() -> None:
    from cctrain_enclave.trainer.train import OPTIMIZERS  # noqa: F401 - registry import

    cfg = {
        "model": {"name": "logreg", "params": {}},
        "optimizer": {"name": "sgd", "lr": 0.5},
        "epochs": 1,
        "batch_size": 16,
        "seed": 3,
    }
    x, y = data()
    plain = train(
        x,
        y,
        num_classes=2,
        training=cfg,
        privacy={"enabled": False},
        simulated_platform=True,
        checkpoint=None,
        progress=None,
    )
    zero = train(
        x,
        y,
        num_classes=2,
        training=cfg | {"lr_schedule": {"name": "step", "step_size": 1, "gamma": 1e-30}},
        privacy={"enabled": False},
        simulated_platform=True,
        checkpoint=None,
        progress=None,
    )
    assert plain.metrics["train_accuracy"] > zero.metrics["train_accuracy"]


def _policy_problems(**training: Any) -> str:
    from cctrain.crypto.keys import PartyKeys

    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}
    doc = policy_document(keys)
    doc["training"] |= training
    with pytest.raises(PolicyError) as err:
        parse_policy(json.dumps(doc).encode(), "json")
    return "\n".join(err.value.problems)


def test_policy_rules_for_schedules_and_package_hooks() -> None:
    assert "needs training.model.name = 'package'" in _policy_problems(
        lr_schedule={"name": "package"}
    )
    assert "needs training.model.name = 'package'" in _policy_problems(
        optimizer={"name": "package", "lr": 0.1}
    )
    assert "step_size" in _policy_problems(lr_schedule={"name": "step"})
    assert "applies to cosine and linear only" in _policy_problems(
        lr_schedule={"name": "step", "step_size": 2, "min_lr_ratio": 0.1}
    )
    assert "must be one of" in _policy_problems(lr_schedule={"name": "exponential"})


# --------------------------------------------------------------------------- loss and metrics

CE_LOSS = "\ndef loss(outputs, targets):\n    return torch.nn.functional.cross_entropy(outputs, targets, reduction='none')\n"
BRIER = (
    "\ndef metrics(outputs, targets):\n"
    "    p = outputs.softmax(1)\n"
    "    onehot = torch.nn.functional.one_hot(targets, p.shape[1]).to(p.dtype)\n"
    "    return {'brier': (p - onehot).square().sum(1)}\n"
)


def test_package_loss_is_what_training_minimises() -> None:
    """The package's per-sample cross-entropy trains what the task's fused one does (to
    float rounding); twice that loss at half the rate is the same SGD run."""
    task, _ = run(BASE)
    own, _ = run(BASE + CE_LOSS, loss="package")
    double = BASE + CE_LOSS.replace("return ", "return 2 * ")
    twice, _ = run(double, loss="package", optimizer={"name": "sgd", "lr": 0.25})
    for k in task.state_dict:
        assert torch.allclose(task.state_dict[k], own.state_dict[k], atol=1e-6), k
        assert torch.allclose(own.state_dict[k], twice.state_dict[k], atol=1e-6), k
    assert own.model_spec["hooks"] == ["loss"]
    assert math.isclose(own.metrics["train_loss"], task.metrics["train_loss"], rel_tol=1e-5)
    # Defined but not asked for: the task's loss trains, and the hook is not listed as used.
    unused, _ = run(double)
    assert "hooks" not in unused.model_spec
    for k in task.state_dict:
        assert torch.equal(task.state_dict[k], unused.state_dict[k]), k


def test_under_dp_the_package_loss_sees_one_row_at_a_time() -> None:
    """A loss that mixes the rows of its batch cannot under DP: it is called per row, so
    row i's loss, and the gradient clipped for it, is a function of row i alone."""
    src = BASE + (
        "\nSIZES = set()\n"
        "def loss(outputs, targets):\n"
        "    SIZES.add(len(outputs))\n"
        "    per_row = torch.nn.functional.cross_entropy(outputs, targets, reduction='none')\n"
        "    return per_row + outputs.mean()  # the batch's mean: mixes rows when it can\n"
    )
    result, package = run(src, dp=True, loss="package")
    assert plan_module(package).SIZES == {1}
    assert result.dp_certificate is not None
    _, package2 = run(src + "\n# no DP\n", loss="package")
    assert max(plan_module(package2).SIZES) > 1


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("return torch.nn.functional.cross_entropy(outputs, targets)", r"shape \(16,\): got \(\)"),
        ("return (outputs.argmax(1) == targets)", "floating-point"),
        ("return 1.0", "got float"),
    ],
)
def test_a_package_loss_of_the_wrong_shape_is_refused(body: str, match: str) -> None:
    src = BASE + f"\ndef loss(outputs, targets):\n    {body}\n"
    with pytest.raises(CctrainError, match=match):
        run(src, loss="package")


def test_asked_for_but_not_defined_is_an_error() -> None:
    with pytest.raises(CctrainError, match="defines no loss"):
        run(BASE, loss="package")
    with pytest.raises(CctrainError, match="defines no metrics"):
        run(BASE, metrics={"brier": "min"})


def test_package_metrics_are_computed_on_the_released_model() -> None:
    result, package = run(BASE + BRIER, metrics={"brier": "min"})
    model = plan_module(package).build_model((4,), 2)
    model.load_state_dict(result.state_dict)
    x, y = data()
    with torch.no_grad():
        p = model(torch.from_numpy(x)).softmax(1)
    want = float((p - torch.nn.functional.one_hot(torch.from_numpy(y), 2)).square().sum(1).mean())
    assert math.isclose(result.metrics["train_brier"], want, rel_tol=1e-6)
    assert result.model_spec["hooks"] == ["metrics"]
    wrong = BASE + BRIER.replace("'brier'", "'other'")
    with pytest.raises(
        CctrainError, match=r"exactly training.metrics \['brier'\]: got \['other'\]"
    ):
        run(wrong, metrics={"brier": "min"})


def test_early_stopping_reads_a_package_metric_the_way_the_policy_says() -> None:
    """The Brier score falls as this model learns: read as 'min' training runs every epoch;
    read as 'max' (larger is better) it never improves on the first, and stops after
    ``patience`` epochs."""
    from cctrain_enclave.shards import ShardArrays

    x, y = data(96)  # its first 64 rows are data(): the training rows of run()
    early = {
        "validation": ShardArrays(x[64:], y[64:]),
        "early_stopping": {"metric": "val_brier", "patience": 2, "min_delta": 0.0},
    }

    def fit(direction: str) -> Any:
        result, _ = run(BASE + BRIER, epochs=6, metrics={"brier": direction}, train_kwargs=early)
        return result

    falling, rising = fit("min"), fit("max")
    assert "val_brier" in falling.metrics
    assert "stopped_at_epoch" not in falling.metrics
    assert rising.metrics["stopped_at_epoch"] == 3


def test_policy_rules_for_package_loss_and_metrics() -> None:
    assert "'package' needs training.model.name = 'package'" in _policy_problems(loss="package")
    assert "need training.model.name = 'package'" in _policy_problems(metrics={"brier": "min"})
    assert "must be one of" in _policy_problems(loss="focal")
    problems = _policy_problems(metrics={"Brier": "min", "accuracy": "max", "f1": "up"})
    assert "training.metrics.Brier: a metric name is lowercase" in problems
    assert "training.metrics.accuracy: 'accuracy' is a built-in metric" in problems
    assert "training.metrics.f1: got 'up', want 'max'" in problems
