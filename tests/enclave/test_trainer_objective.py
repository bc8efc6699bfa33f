"""The training objective: regression (squared error) through every engine, its per-sample
clipping against Opacus, and the seam a custom per-sample loss goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cctrain.errors import CctrainError, ShardError
from cctrain_enclave.trainer import TrainingRandomness, build_builtin_model, train
from cctrain_enclave.trainer import dp as dp_module
from cctrain_enclave.trainer.dp import clipping_problems, synthetic_batch, validate_dp_config
from cctrain_enclave.trainer.objective import Objective, classification, regression
from tests.enclave.cliptruth import assert_same_sums, fast_clipped_sum, opacus_clipped_sum

ROWS = 512


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _regression_data(rows: int = ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    y = (x @ rng.normal(size=6) + 0.1 * rng.normal(size=rows)).astype(np.float32)
    return x, y


def _training(model: dict, **overrides) -> dict:
    return {
        "task": "regression",
        "model": model,
        "optimizer": {"name": "adam", "lr": 0.05},
        "epochs": 3,
        "batch_size": 32,
        "seed": 0,
    } | overrides


def _dp(mode: str) -> dict:
    return {
        "enabled": True,
        "target_epsilon": 8.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "noise_source": "csprng",
        "grad_sample_mode": mode,
    }


def _train(x, y, training, privacy, objective=None):
    return train(
        x,
        y,
        objective=objective or regression(),
        training=training,
        privacy=privacy,
        simulated_platform=False,
        checkpoint=None,
        progress=None,
        randomness=TrainingRandomness.fixed_for_tests(0),
    )


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("mode", "model"),
    [
        (None, {"name": "mlp", "params": {"hidden": [16]}}),
        ("fast", {"name": "logreg"}),
        ("hooks", {"name": "mlp", "params": {"hidden": [16]}}),
        ("ghost", {"name": "mlp", "params": {"hidden": [16]}}),
    ],
)
def test_regression_learns_in_every_mode(mode, model):
    x, y = _regression_data()
    privacy = _dp(mode) if mode else {"enabled": False}
    result = _train(x, y, _training(model), privacy)
    m = result.metrics
    assert set(m) == {"train_loss", "train_mse", "train_mae", "steps", "samples"}
    assert m["train_loss"] == m["train_mse"]
    # Fixed keys: deterministic. The targets' variance is ~16; the noise floor 0.01.
    assert m["train_mse"] < 0.05 * float(y.var()), m
    assert m["train_mae"] < 0.6
    if mode:
        assert result.dp_certificate["grad_sample_mode"] == mode
        assert result.dp_certificate["epsilon"] <= 8.0
    weights = result.state_dict
    assert weights[[k for k in weights if k.endswith("weight")][-1]].shape[0] == 1  # 1 output


def test_regression_metrics_are_the_definitions():
    x, y = _regression_data(rows=300)
    result = _train(x, y, _training({"name": "logreg"}, epochs=1), {"enabled": False})
    model = build_builtin_model("logreg", (6,), 1, {})
    model.load_state_dict(result.state_dict)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).reshape(-1).double().numpy()
    err = pred - y.astype(np.float64)
    assert result.metrics["train_mse"] == pytest.approx(float((err**2).mean()), rel=1e-5)
    assert result.metrics["train_mae"] == pytest.approx(float(np.abs(err).mean()), rel=1e-5)


def test_targets_must_fit_the_objective():
    x, y = _regression_data(rows=64)
    with pytest.raises(ShardError, match="labels must be float32"):
        _train(x, y.astype(np.int64), _training({"name": "logreg"}), {"enabled": False})
    y_nan = y.copy()
    y_nan[3] = np.nan
    with pytest.raises(ShardError, match="finite"):
        _train(x, y_nan, _training({"name": "logreg"}), {"enabled": False})
    with pytest.raises(ShardError, match="labels must be int64"):
        _train(x, y, _training({"name": "logreg"}), {"enabled": False}, classification(3))


def test_a_model_with_more_than_one_output_is_refused_for_regression():
    x, y = _regression_data(rows=64)
    with pytest.raises(CctrainError, match="one output per row"):
        _train(x, y, _training({"name": "logreg"}), {"enabled": False}, _two_output_regression())


def _two_output_regression() -> Objective:
    # The built-in regression objective, but a model built with 2 outputs.
    base = regression()
    return Objective(
        task=base.task,
        num_outputs=2,
        target_dtype=base.target_dtype,
        per_sample=base.per_sample,
        metrics=base.metrics,
        fused=base.fused,
    )


# --------------------------------------------------------------------------- DP clipping


def _squared_error(outputs, y):
    """The squared error, written out apart from the objective under test (the reference)."""
    return F.mse_loss(outputs.reshape(-1), y, reduction="sum")


def _batch():
    torch.manual_seed(0)
    x = torch.randn(40, 12) * torch.linspace(0.1, 5, 40).unsqueeze(1)  # some clipped, some not
    y = torch.randn(40) * 3
    return x, y


@pytest.mark.parametrize("max_grad_norm", [0.05, 1.0, 100.0])
def test_fast_clipping_of_the_squared_error_equals_opacus(max_grad_norm):
    torch.manual_seed(0)
    model = build_builtin_model("mlp", (12,), 1, {"hidden": [16, 8]})
    x, y = _batch()
    expected = opacus_clipped_sum(model, x, y, max_grad_norm, _squared_error)
    got = fast_clipped_sum(
        model, x, y, max_grad_norm, lambda out, target: regression().loss(out, target, "sum")
    )
    assert_same_sums(model, got, expected)


@pytest.mark.parametrize("mode", ["fast", "hooks", "ghost"])
def test_every_engine_clips_the_squared_error_as_opacus_does(mode):
    """One step of the real engine (no noise): its gradient is the clipped per-sample sum of
    the squared error, divided by the expected batch size, as Opacus computes it."""
    torch.manual_seed(0)
    model = build_builtin_model("mlp", (12,), 1, {"hidden": [16, 8]})
    x, y = _batch()
    clip = 0.5
    expected = opacus_clipped_sum(model, x, y, clip, _squared_error)
    with torch.no_grad():
        summed_loss = float(F.mse_loss(model(x).reshape(-1), y, reduction="sum"))
    plan = dp_module.DpPlan(
        accountant="rdp",
        noise_multiplier=0.0,
        sample_rate=1.0,
        steps_planned=1,
        max_grad_norm=clip,
        target_epsilon=1.0,
        delta=1e-5,
        noise_source="zero-for-checks",
        grad_sample_mode=mode,
        expected_batch_size=float(len(x)),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    engine = dp_module.GRAD_SAMPLE_MODES[mode](
        model, optimizer, plan, dp_module._ZeroNoise(), objective=regression()
    )
    try:
        loss = engine.step(x, y)
    finally:
        engine.close()
    assert float(loss) == pytest.approx(summed_loss, rel=1e-5)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad * len(x), e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["fast", "hooks", "ghost"])
def test_the_clipping_check_passes_the_squared_error(mode):
    model = build_builtin_model("mlp", (5,), 1, {"hidden": [8]})
    example = synthetic_batch((5,), regression())
    assert example[1].dtype == torch.float32
    assert clipping_problems(model, mode, example, objective=regression()) == []


# --------------------------------------------------------------------------- the seam


def _huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.huber_loss(outputs.reshape(-1), targets, reduction="none", delta=1.0)


def _mixing(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Row i's loss depends on every row's prediction: not a per-sample loss.
    pred = outputs.reshape(-1)
    return (pred - targets).square() + pred.mean().square()


def _objective(per_sample) -> Objective:
    return Objective(
        task="regression", num_outputs=1, target_dtype=torch.float32, per_sample=per_sample
    )


def test_a_custom_per_sample_loss_trains_under_dp():
    """A loss given only per sample (no fused kernel) goes through every engine: reduced by
    the objective for the plain step, per sample for clipping."""
    x, y = _regression_data()
    result = _train(
        x,
        y,
        _training({"name": "mlp", "params": {"hidden": [16]}}),
        _dp("auto"),
        _objective(_huber),
    )
    assert result.dp_certificate["grad_sample_mode"] == "fast"
    assert set(result.metrics) == {"train_loss", "steps", "samples"}
    assert result.metrics["train_loss"] < 0.1 * float(y.var())


def test_a_loss_that_mixes_the_rows_is_refused_under_dp():
    model = build_builtin_model("mlp", (6,), 1, {"hidden": [8]})
    objective = _objective(_mixing)
    problems = validate_dp_config(
        model,
        _training({"name": "mlp"}),
        _dp("auto"),
        num_rows=ROWS,
        simulated_platform=False,
        example=synthetic_batch((6,), objective),
        objective=objective,
    )
    assert any("clips this model's per-sample gradients wrongly" in p for p in problems), problems


def test_a_loss_that_is_not_per_sample_is_refused():
    x, y = _regression_data(rows=64)
    scalar = _objective(lambda o, t: F.mse_loss(o.reshape(-1), t))  # already reduced
    with pytest.raises(CctrainError, match="one value per row"):
        _train(x, y, _training({"name": "logreg"}), {"enabled": False}, scalar)
