"""Which gradient mode a model gets, and the checks that run the model before any data.

``auto`` picks the fastest mode that is exact for the model, proven on a synthetic batch
against the per-sample definition; explicit modes that cannot be exact are refused with the
reason. Models built here are the cases Opacus's own validator lets through.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.layers import DPLSTM
from torch import nn

from cctrain.errors import PolicyError
from cctrain_enclave.trainer import build_builtin_model, train, validate_dp_config
from cctrain_enclave.trainer.dp import (
    clipping_problems,
    resolve_grad_sample_mode,
    synthetic_batch,
)


class Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = DPLSTM(input_size=4, hidden_size=8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.dec(torch.relu(self.enc(x)))))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


class Functional(nn.Module):
    """The language-model pattern: output logits through another layer's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 3)
        self.mix = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.proj(x)))
        return F.linear(h, self.mix.weight)


class Mixing(nn.Module):
    """Centres each batch on its own mean: one row's gradient depends on the others."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(0, keepdim=True))


def _privacy(mode: str = "auto") -> dict:
    return {
        "enabled": True,
        "target_epsilon": 3.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "noise_source": "insecure-fast",
        "grad_sample_mode": mode,
    }


def _problems(model: nn.Module, shape: tuple[int, ...], mode: str) -> list[str]:
    return validate_dp_config(
        model,
        {"batch_size": 8, "epochs": 1},
        _privacy(mode),
        num_rows=None,
        simulated_platform=True,
        example=synthetic_batch(shape, 3),
    )


def _mode(model: nn.Module, shape: tuple[int, ...]) -> str:
    return resolve_grad_sample_mode(model, "auto", synthetic_batch(shape, 3))


def test_dplstm_never_gets_the_fast_path_and_trains_exactly() -> None:
    torch.manual_seed(0)
    model = Lstm()
    assert _mode(model, (5, 4)) == "ghost"  # its RNNLinear layers subclass nn.Linear
    assert any(
        "RNNLinear layer, which has no fast-clipping rule" in p
        for p in _problems(model, (5, 4), "fast")
    )
    assert clipping_problems(model, "ghost", synthetic_batch((5, 4), 3)) == []
    assert clipping_problems(model, "hooks", synthetic_batch((5, 4), 3)) == []


@pytest.mark.parametrize(("cls", "auto"), [(Tied, "hooks"), (Twice, "hooks")])
def test_shared_weights_get_hooks_and_fast_or_ghost_are_refused(cls: type, auto: str) -> None:
    torch.manual_seed(0)
    model = cls()
    assert _mode(model, (6,)) == auto
    assert _problems(model, (6,), "auto") == []
    assert _problems(model, (6,), "hooks") == []
    fast = _problems(model, (6,), "fast")
    assert any("tied weights" in p or "ran twice" in p for p in fast), fast
    assert _problems(model, (6,), "ghost")  # tied: refused by name; twice: Opacus raises


@pytest.mark.parametrize("cls", [Functional, Mixing])
def test_models_no_mode_clips_correctly_are_refused(cls: type) -> None:
    torch.manual_seed(0)
    for mode in ("auto", "hooks", "ghost"):
        problems = _problems(cls(), (6,), mode)
        assert any("clips this model's per-sample gradients wrongly" in p for p in problems), (
            mode,
            problems,
        )


@pytest.mark.parametrize(
    ("name", "params", "shape", "modes"),
    [
        ("logreg", {}, (12,), ("fast", "hooks", "ghost")),
        ("mlp", {"hidden": [16, 8], "dropout": 0.2}, (12,), ("fast", "hooks", "ghost")),
        ("cnn", {"channels": [4], "hidden": 8}, (1, 6, 6), ("fast", "ghost", "hooks")),
    ],
)
def test_every_mode_is_exact_on_the_built_in_models(name, params, shape, modes) -> None:
    torch.manual_seed(0)
    model = build_builtin_model(name, shape, 3, params)
    for mode in modes:
        assert clipping_problems(model, mode, synthetic_batch(shape, 3)) == [], mode
    assert _mode(model, shape) == modes[0]


def test_tied_weights_train_under_auto_with_hooks() -> None:
    """End to end through ``train``: a model Opacus accepts and ghost would refuse at step 1."""
    source = b"""
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.dec(torch.relu(self.enc(x)))))


def build_model(shape, classes):
    return Tied()
"""
    import hashlib

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int64)
    training = {
        "model": {
            "name": "custom",
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "entry": "build_model",
        },
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 1,
        "batch_size": 16,
        "seed": 0,
    }
    privacy = _privacy() | {"delta": 1e-3}
    result = train(
        x,
        y,
        num_classes=3,
        training=training,
        privacy=privacy,
        simulated_platform=True,
        checkpoint=None,
        progress=None,
        custom_model_source=source,
    )
    assert result.dp_certificate["grad_sample_mode"] == "hooks"
    with pytest.raises(PolicyError, match="tied weights"):
        train(
            x,
            y,
            num_classes=3,
            training=training,
            privacy=privacy | {"grad_sample_mode": "fast"},
            simulated_platform=True,
            checkpoint=None,
            progress=None,
            custom_model_source=source,
        )
