"""The vectorised RDP accountant (trainer/rdp.py) against Opacus's, and the lazy Opacus import.

Opacus's formulas lose digits where a curve is tiny (small q, large σ: a total just above 1
in log space); there Opacus and .rdp agree to the formulas' own float accuracy (both are
~1e-12 absolute from an mpmath evaluation of the same sum), so curves are compared at
rtol 1e-9 plus an absolute 2e-12 per step, and ε (what a run reports) at rtol 1e-9.
Everything is a fixed grid: no randomness.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from cctrain.errors import PolicyError
from cctrain_enclave.trainer import rdp
from cctrain_enclave.trainer.dp import DpPlan, PrivacyLedger, calibrate_noise

ROOT = Path(__file__).resolve().parents[2]


def _opacus_curve(q: float, sigma: float, steps: int, orders: list[float]) -> np.ndarray:
    return np.asarray(
        opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    )


def _opacus_eps(sigma: float, q: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha"
        return float(accountant.get_epsilon(delta=delta))


def test_the_orders_are_opacus_defaults():
    assert list(rdp.ORDERS) == RDPAccountant.DEFAULT_ALPHAS


@pytest.mark.parametrize("q", [1e-4, 1e-3, 0.01, 0.0256, 0.1, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.0, 2.0, 5.0, 30.0])
def test_curve_equals_opacus_at_every_default_order(q, sigma):
    orders = RDPAccountant.DEFAULT_ALPHAS
    for steps in (1, 1000):
        want = _opacus_curve(q, sigma, steps, orders)
        got = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=2e-12 * steps)


@pytest.mark.parametrize("orders", [[1.25, 1.5, 2.5, 7.75, 33.3], [2.0, 3, 17, 64, 128, 256]])
def test_curve_equals_opacus_at_other_orders(orders):
    for q, sigma in [(0.02, 0.7), (0.3, 1.3), (0.004, 4.0)]:
        want = _opacus_curve(q, sigma, 1, orders)
        got = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=2e-12)


@pytest.mark.parametrize("steps", [1, 50, 10_000, 10**6])
@pytest.mark.parametrize(("q", "sigma"), [(1e-5, 1.0), (0.001, 0.6), (0.0256, 0.9), (0.5, 3.0)])
def test_epsilon_equals_opacus(q, sigma, steps):
    want = _opacus_eps(sigma, q, steps, 1e-5)
    assert rdp.epsilon([(sigma, q, steps)], 1e-5) == pytest.approx(want, rel=1e-9)


def test_composition_and_the_special_cases():
    history = [(1.1, 0.01, 300), (0.9, 0.05, 20)]
    accountant = RDPAccountant()
    accountant.history = list(history)
    assert rdp.epsilon(history, 1e-6) == pytest.approx(accountant.get_epsilon(1e-6), rel=1e-9)
    assert rdp.epsilon([], 1e-5) == 0.0
    assert (rdp.rdp_one_step(0.0, 1.0) == 0).all()
    assert np.isinf(rdp.rdp_one_step(0.1, 0.0)).all()
    alphas = np.asarray(rdp.ORDERS)
    np.testing.assert_allclose(rdp.rdp_one_step(1.0, 2.0), alphas / 8.0, rtol=1e-15)
    assert math.isinf(rdp.epsilon([(0.0, 0.1, 10)], 1e-5))
    with pytest.raises(ValueError, match="sample rate"):
        rdp.rdp_one_step(1.5, 1.0)
    curve = rdp.rdp_one_step(0.01, 1.0)
    with pytest.raises(ValueError):
        curve[0] = 1.0  # the cached curve is read-only


@pytest.mark.parametrize(
    ("eps", "delta", "q", "steps"),
    [
        (3.0, 1e-5, 0.0256, 117),  # bench_training.py's 10k-row MLP
        (1.0, 1e-6, 0.01, 3000),
        (0.3, 1e-5, 0.1, 100),
        (8.0, 1e-5, 0.5, 10),
        (0.5, 1e-5, 1.0, 1),  # q = 1: the plain Gaussian mechanism
        (2.0, 1e-7, 1e-4, 10**6),  # tiny q, a million steps
        (50.0, 1e-5, 0.02, 10),  # a loose target: σ below 1
    ],
)
def test_calibration_is_within_tolerance_and_never_above_the_target(eps, delta, q, steps):
    tolerance = min(0.01, 0.005 * eps)
    sigma = rdp.calibrate_sigma(eps, delta, q, steps, tolerance=tolerance)
    reached = _opacus_eps(sigma, q, steps, delta)  # Opacus's own accountant, once
    assert reached <= eps
    assert eps - reached <= tolerance * 1.0001
    # The smallest such σ, to the tolerance: a little less noise is over the budget or,
    # like the result, within the tolerance (so nothing much better was left unfound).
    assert _opacus_eps(sigma * 0.99, q, steps, delta) > eps - tolerance


def test_calibration_of_an_infeasible_target_is_a_clear_error():
    with pytest.raises(rdp.InfeasibleBudget, match="privacy budget is too low"):
        rdp.calibrate_sigma(1e-6, 1e-12, 1.0, 10**6)
    with pytest.raises(ValueError, match="target"):
        rdp.calibrate_sigma(0.0, 1e-5, 0.1, 10)
    with pytest.raises(ValueError, match="steps"):
        rdp.calibrate_sigma(1.0, 1e-5, 0.1, 0)


def test_calibrate_noise_uses_it_and_the_plan_refuses_an_infeasible_budget():
    sigma = calibrate_noise(
        target_epsilon=3.0, delta=1e-5, sample_rate=0.0256, steps=117, accountant="rdp"
    )
    assert sigma == rdp.calibrate_sigma(3.0, 1e-5, 0.0256, 117, tolerance=0.01)
    from torch import nn

    from cctrain_enclave.trainer.dp import plan_privacy

    training = {"batch_size": 8, "epochs": 1000}
    privacy = {"enabled": True, "target_epsilon": 1e-4, "delta": 1e-9, "max_grad_norm": 1.0}
    with pytest.raises(PolicyError, match="DP training refused") as refused:
        plan_privacy(
            nn.Sequential(nn.Linear(4, 2)),
            training,
            privacy,
            num_rows=8,
            sample_rate=1.0,
            steps_per_epoch=1,
            simulated_platform=True,
        )
    assert "too low" in str(refused.value.problems)


def _plan(sigma: float, q: float, steps: int, target: float) -> DpPlan:
    return DpPlan(
        accountant="rdp",
        noise_multiplier=sigma,
        sample_rate=q,
        steps_planned=steps,
        max_grad_norm=1.0,
        target_epsilon=target,
        delta=1e-5,
        noise_source="csprng",
        grad_sample_mode="fast",
        expected_batch_size=10.0,
    )


def test_ledger_budget_and_epsilon_agree_with_opacus():
    plan = _plan(1.5, 0.05, 400, 2.0)
    ledger = PrivacyLedger(plan, [[2.0, 0.05, 30]])
    assert ledger.steps_taken == 30
    # The guard's limit: the last step count Opacus keeps within the target.
    allowed = ledger.max_steps - 30
    assert 0 < allowed < 370
    history = [(2.0, 0.05, 30), (1.5, 0.05, allowed)]
    accountant = RDPAccountant()
    accountant.history = history
    assert accountant.get_epsilon(1e-5) <= 2.0
    accountant.history = [(2.0, 0.05, 30), (1.5, 0.05, allowed + 1)]
    assert accountant.get_epsilon(1e-5) > 2.0
    for _ in range(allowed):
        ledger.record_step()
    assert not ledger.can_step()
    assert ledger.history() == [[2.0, 0.05, 30], [1.5, 0.05, allowed]]
    accountant.history = history
    assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert ledger.epsilon_cheap() == ledger.epsilon()
    with pytest.raises(RuntimeError, match="exhausted"):
        ledger.record_step()


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'enclave'}", "PATH": "/usr/bin:/bin"},
    )
    return set(out.stdout.split())


def test_a_run_without_privacy_never_imports_opacus():
    code = """
import numpy as np
from cctrain_enclave.trainer import train, validate_dp_config
from cctrain_enclave.trainer.precheck import *  # noqa
from cctrain_enclave import app
app.require_trainer()
x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
training = {"task": "classification", "model": {"name": "mlp", "params": {"hidden": [8]}},
            "optimizer": {"name": "sgd", "lr": 0.1}, "epochs": 1, "batch_size": 16, "seed": 0}
train(x, y, num_classes=2, training=training, privacy={"enabled": False},
      simulated_platform=True, checkpoint=None, progress=lambda _e: None)
assert validate_dp_config(None, training, {"enabled": False}, num_rows=64,
                          simulated_platform=True) == []
"""
    loaded = _modules_after(code)
    assert "cctrain_enclave.trainer.train" in loaded
    assert not [m for m in loaded if m.split(".")[0] == "opacus"]


def test_the_opacus_names_stay_importable_from_dp():
    loaded = _modules_after("from cctrain_enclave.trainer.dp import OpacusHooksEngine")
    assert "opacus" in loaded
