"""DP-SGD: refusal of bad configs, ε against Google's dp-accounting, the budget guard, and the
fast clipping path against Opacus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import create_accountant
from torch import nn

from cctrain.errors import PolicyError
from cctrain_enclave.trainer import (
    PrivacyLedger,
    TrainingRandomness,
    build_builtin_model,
    train,
    validate_dp_config,
)
from cctrain_enclave.trainer import dp as dp_module
from cctrain_enclave.trainer.dp import plan_privacy, resolve_grad_sample_mode
from cctrain_enclave.trainer.fastclip import FastClipUnsupported, LinearClipper
from tests.enclave.cliptruth import assert_same_sums, fast_clipped_sum, opacus_clipped_sum

ROWS = 512


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(shape=(12,), rows=ROWS, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, *shape)).astype(np.float32)
    proj = rng.normal(size=(int(np.prod(shape)), classes))
    y = (x.reshape(rows, -1) @ proj).argmax(1).astype(np.int64)
    return x, y


def _training(model=None, epochs=2, batch_size=32):
    return {
        "task": "classification",
        "model": model or {"name": "mlp", "params": {"hidden": [16, 8]}},
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.5, "weight_decay": 0.0},
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": 0,
    }


def _privacy(**overrides):
    return {
        "enabled": True,
        "target_epsilon": 3.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "noise_source": "csprng",
        "grad_sample_mode": "auto",
    } | overrides


def _train(x, y, training, privacy, simulated=False):
    # Fixed sampling and noise keys: every run here is reproducible (no test fails by chance).
    return train(
        x,
        y,
        num_classes=3,
        training=training,
        privacy=privacy,
        simulated_platform=simulated,
        checkpoint=None,
        progress=None,
        randomness=TrainingRandomness.fixed_for_tests(0),
    )


# --------------------------------------------------------------------------- refusal


def test_every_problem_is_listed_before_refusing():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    training = _training(batch_size=1000) | {"gradient_accumulation_steps": 4, "sampler": "shuffle"}
    privacy = _privacy(
        target_epsilon=0,
        delta=0.5,
        max_grad_norm=-1,
        accountant="moments",
        noise_source="insecure-fast",
        grad_sample_mode="fast",
        poisson_sampling=False,
    )
    problems = validate_dp_config(model, training, privacy, num_rows=100, simulated_platform=False)
    expected = [
        "BatchNorm",
        "target_epsilon",
        "delta",
        "max_grad_norm",
        "accountant",
        "insecure-fast",
        "'fast'",
        "poisson_sampling",
        "sampler",
        "gradient_accumulation_steps",
        "batch_size 1000 exceeds",
    ]
    for needle in expected:
        assert any(needle in p for p in problems), (needle, problems)
    with pytest.raises(PolicyError) as err:
        plan_privacy(
            model,
            training,
            privacy,
            num_rows=100,
            sample_rate=0.1,
            steps_per_epoch=10,
            simulated_platform=False,
        )
    assert err.value.problems == tuple(problems)


def test_a_valid_config_has_no_problems():
    model = build_builtin_model("mlp", (12,), 3, {"hidden": [8]})
    assert (
        validate_dp_config(model, _training(), _privacy(), num_rows=ROWS, simulated_platform=False)
        == []
    )


def test_insecure_noise_only_on_the_simulated_platform():
    x, y = _data()
    with pytest.raises(PolicyError, match="insecure-fast"):
        _train(x, y, _training(epochs=1), _privacy(noise_source="insecure-fast"), simulated=False)
    result = _train(
        x, y, _training(epochs=1), _privacy(noise_source="insecure-fast"), simulated=True
    )
    assert result.dp_certificate["noise_source"] == "insecure-torch-default"


def test_an_unreachable_budget_is_refused():
    x, y = _data()
    with pytest.raises(PolicyError, match="noise calibration"):
        _train(x, y, _training(epochs=1), _privacy(target_epsilon=1e-9))


def test_auto_picks_fast_for_the_built_in_models_and_ghost_otherwise():
    mlp = build_builtin_model("mlp", (12,), 3, {})
    cnn = build_builtin_model("cnn", (1, 8, 8), 3, {})
    assert resolve_grad_sample_mode(mlp, "auto") == "fast"
    assert resolve_grad_sample_mode(cnn, "auto") == "fast"  # Conv2d + GroupNorm have rules
    assert resolve_grad_sample_mode(cnn, "hooks") == "hooks"
    prelu = nn.Sequential(nn.Linear(12, 8), nn.PReLU(), nn.Linear(8, 3))  # no rule for PReLU
    assert resolve_grad_sample_mode(prelu, "auto") == "ghost"


# --------------------------------------------------------------------------- accounting


def _dp_accounting_epsilon(accountant, cert):
    event = dp_event.PoissonSampledDpEvent(
        cert["sample_rate"], dp_event.GaussianDpEvent(cert["noise_multiplier"])
    )
    accountant.compose(event, cert["steps"])
    return accountant.get_epsilon(cert["delta"])


def test_rdp_epsilon_matches_google_dp_accounting():
    x, y = _data()
    result = _train(x, y, _training(), _privacy())
    cert = result.dp_certificate
    assert cert["steps"] == cert["steps_planned"] == 2 * 16
    assert cert["sample_rate"] == pytest.approx(1 / 16)
    assert cert["epsilon"] <= 3.0
    assert not cert["stopped_early"]
    assert cert["noise_source"] == "csprng-aes256ctr-gaussian"
    reference = _dp_accounting_epsilon(rdp_privacy_accountant.RdpAccountant(), cert)
    assert cert["epsilon"] == pytest.approx(reference, rel=0.01)


def test_prv_epsilon_matches_google_pld():
    x, y = _data()
    result = _train(x, y, _training(epochs=1), _privacy(accountant="prv"))
    cert = result.dp_certificate
    assert cert["accountant"] == "prv"
    reference = _dp_accounting_epsilon(pld_privacy_accountant.PLDAccountant(), cert)
    assert cert["epsilon"] == pytest.approx(reference, rel=0.01)


def test_cheap_epsilon_equals_the_accountant():
    x, y = _data()
    model = build_builtin_model("mlp", (12,), 3, {})
    plan = plan_privacy(
        model,
        _training(),
        _privacy(),
        num_rows=ROWS,
        sample_rate=1 / 16,
        steps_per_epoch=16,
        simulated_platform=False,
    )
    ledger = PrivacyLedger(plan)
    for _ in range(7):
        ledger.record_step()
    assert ledger.epsilon_cheap() == pytest.approx(ledger.epsilon(), rel=1e-9)


def test_the_budget_is_never_exceeded(monkeypatch):
    """With too little noise the run must stop before the step that would overspend."""
    real = dp_module.calibrate_noise
    monkeypatch.setattr(dp_module, "calibrate_noise", lambda **kw: real(**kw) * 0.85)
    x, y = _data()
    events = []
    result = train(
        x,
        y,
        num_classes=3,
        training=_training(epochs=4),
        privacy=_privacy(),
        simulated_platform=False,
        checkpoint=None,
        progress=events.append,
        progress_every=1,
    )
    cert = result.dp_certificate
    assert cert["stopped_early"]
    assert 0 < cert["steps"] < cert["steps_planned"] == 4 * 16
    assert cert["epsilon"] <= 3.0
    assert all(e.epsilon <= 3.0 for e in events)
    assert events[-1].step == cert["steps"] == result.metrics["steps"]
    # One more step would have overspent, by Opacus's accountant and by Google's.
    more = create_accountant("rdp")
    more.history = [(cert["noise_multiplier"], cert["sample_rate"], cert["steps"] + 1)]
    assert more.get_epsilon(cert["delta"]) > 3.0
    google = _dp_accounting_epsilon(
        rdp_privacy_accountant.RdpAccountant(), cert | {"steps": cert["steps"] + 1}
    )
    assert google > 3.0 * 0.99


# --------------------------------------------------------------------------- clipping paths


def _cross_entropy(logits, y):
    return F.cross_entropy(logits, y, reduction="sum")


@pytest.mark.parametrize("max_grad_norm", [0.05, 1.0, 100.0])
def test_fast_clipping_equals_opacus(max_grad_norm):
    torch.manual_seed(0)
    model = build_builtin_model("mlp", (12,), 3, {"hidden": [16, 8]})
    x = torch.randn(40, 12) * torch.linspace(0.1, 5, 40).unsqueeze(1)  # some clipped, some not
    y = torch.randint(0, 3, (40,))
    expected = opacus_clipped_sum(model, x, y, max_grad_norm, _cross_entropy)
    got = fast_clipped_sum(model, x, y, max_grad_norm, _cross_entropy)
    assert_same_sums(model, got, expected)


class _SequenceModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)).mean(1))


def test_fast_clipping_equals_opacus_on_sequence_inputs():
    torch.manual_seed(1)
    model = _SequenceModel()
    x = torch.randn(20, 7, 6) * 3
    y = torch.randint(0, 3, (20,))
    expected = opacus_clipped_sum(model, x, y, 0.5, _cross_entropy)
    got = fast_clipped_sum(model, x, y, 0.5, _cross_entropy)
    assert_same_sums(model, got, expected)


def test_fast_clipping_refuses_what_it_cannot_clip():
    with pytest.raises(FastClipUnsupported, match="BatchNorm1d layer, which has no fast-clipping"):
        LinearClipper(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    clipper = LinearClipper(model)
    with clipper.capture():
        out = model(torch.randn(3, 4))
    with pytest.raises(FastClipUnsupported, match="twice"):
        clipper.clipped_gradient_sum(out.sum(), max_grad_norm=1.0)
    inplace = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    clipper = LinearClipper(inplace)
    with clipper.capture():
        out = inplace(torch.randn(3, 4))
    with pytest.raises(FastClipUnsupported, match="in place"):
        clipper.clipped_gradient_sum(out.sum(), max_grad_norm=1.0)


@pytest.mark.parametrize(
    ("mode", "model", "shape"),
    [
        ("fast", {"name": "mlp", "params": {"hidden": [16]}}, (12,)),
        ("hooks", {"name": "mlp", "params": {"hidden": [16]}}, (12,)),
        ("ghost", {"name": "cnn", "params": {"channels": [4], "hidden": 8}}, (1, 6, 6)),
    ],
)
def test_every_mode_trains_under_the_same_accounting(mode, model, shape):
    x, y = _data(shape)
    training = _training(model, epochs=3) | {"optimizer": {"name": "adam", "lr": 0.02}}
    result = _train(x, y, training, _privacy(grad_sample_mode=mode, target_epsilon=8.0))
    cert = result.dp_certificate
    assert cert["grad_sample_mode"] == mode
    assert cert["steps"] == 3 * 16
    # Same sampler, same plan: the accounting does not depend on how gradients are clipped.
    accountant = create_accountant("rdp")
    accountant.history = [(cert["noise_multiplier"], 1 / 16, 3 * 16)]
    # The certificate's ε is .rdp's, equal to Opacus's accountant to float accuracy.
    assert cert["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    # Deterministic (fixed keys): chance is ~1/3, so this says it learnt despite the noise.
    assert result.metrics["train_accuracy"] > 0.45


def _plan(accountant: str, sigma: float, q: float, steps: int, target: float):
    return dp_module.DpPlan(
        accountant=accountant,
        noise_multiplier=sigma,
        sample_rate=q,
        steps_planned=steps,
        max_grad_norm=1.0,
        target_epsilon=target,
        delta=1e-5,
        noise_source="csprng",
        grad_sample_mode="fast",
        expected_batch_size=1.0,
    )


def test_prv_stays_within_one_percent_of_pld_below_epsilon_one():
    """Opacus's PRV error bound is absolute (0.01): at ε ≈ 0.4 that was 2-3% above PLD. The
    ledger scales it with the target."""
    plan = _plan("prv", sigma=3.0, q=1 / 16, steps=64, target=0.9)
    ledger = PrivacyLedger(plan)
    for _ in range(64):
        ledger.record_step()
    cert = {"sample_rate": 1 / 16, "noise_multiplier": 3.0, "steps": 64, "delta": 1e-5}
    reference = _dp_accounting_epsilon(pld_privacy_accountant.PLDAccountant(), cert)
    assert 0.3 < reference < 0.9
    assert ledger.epsilon() == pytest.approx(reference, rel=0.01)
    assert ledger.epsilon() >= reference * 0.999  # PRV is an upper bound here too


def test_expected_batch_size_is_not_truncated():
    model = build_builtin_model("logreg", (12,), 3, {})
    plan = plan_privacy(
        model,
        _training(batch_size=8),
        _privacy(),
        num_rows=392,
        sample_rate=1 / 49,
        steps_per_epoch=49,
        simulated_platform=False,
    )
    assert plan.expected_batch_size == 8.0  # int(392 * (1/49)) was 7
