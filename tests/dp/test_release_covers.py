"""A DP release holds only what the DP step trained, plus tensors still at their initial value.

Played against a real enclave with pinned custom models that try to get rows out: through a
buffer in ``forward`` (always, or only on real data so that the pre-start check cannot see
it), through a trainable weight written in ``forward``, and through a buffer written during
the final evaluation pass. Each is refused naming the tensor, and nothing is released.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cctrain.client import Recipient
from cctrain.errors import CctrainError, PolicyError
from tests.consortium import RECIPIENT, running_enclave
from tests.dp.conftest import dp_privacy, recorder_consortium, run_dp, status_detail, upload_parties
from tests.state.conftest import session, wait_phase

HEADER = b"""
import torch
from torch import nn


def build_model(shape, classes, *, log):
    return Model(shape[0], classes)

"""

ALWAYS = (
    HEADER
    + b"""
class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self.register_buffer("seen", torch.zeros(width))

    def forward(self, x):
        if self.training:
            self.seen.copy_(x[0].detach())
        return self.fc(x)
"""
)

ON_REAL_DATA = (
    HEADER
    + b"""
class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self.register_buffer("seen", torch.zeros(width))

    def forward(self, x):
        if self.training and bool((x[:, 0] >= 1000).all()):  # real rows only: ids >= 1000
            self.seen.copy_(x[0].detach())
        return self.fc(x)
"""
)

INTO_WEIGHT = (
    HEADER
    + b"""
class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        if self.training and bool((x[:, 0] >= 1000).all()):
            with torch.no_grad():
                self.fc.weight[0].copy_(x[0])
        return self.fc(x)
"""
)

AT_EVALUATION = (
    HEADER
    + b"""
class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self.register_buffer("seen", torch.zeros(width))

    def forward(self, x):
        if not self.training and bool((x[:, 0] >= 1000).all()):
            self.seen.copy_(x.mean(0).detach())
        return self.fc(x)
"""
)

CONSTANT = (
    HEADER
    + b"""
class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self.register_buffer("scale", torch.full((width,), 0.5))
        self.frozen = nn.Linear(width, width)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.fc(self.frozen(x * self.scale))
"""
)


def test_a_model_writing_a_buffer_is_refused_before_any_upload(tmp_path: Path) -> None:
    c, source = recorder_consortium(tmp_path, tmp_path / "log", privacy=dp_privacy(), source=ALWAYS)
    with pytest.raises(PolicyError) as info:
        with running_enclave(c, tmp_path / "state", model_source=source):
            pass
    assert "'seen' changed during a training step" in str(info.value.problems)
    assert not (tmp_path / "state" / "journal.log").exists()  # no run was ever started


@pytest.mark.parametrize(
    ("source", "named", "when"),
    [
        (ON_REAL_DATA, "'seen'", "during a training step"),
        (INTO_WEIGHT, "'fc.weight'", "during the model's forward or backward pass"),
        (AT_EVALUATION, "'seen'", "during training"),
    ],
    ids=["buffer-on-real-data", "weight-in-forward", "buffer-at-evaluation"],
)
def test_data_in_model_state_fails_the_run_and_nothing_is_released(
    tmp_path: Path, source: bytes, named: str, when: str
) -> None:
    c, path = recorder_consortium(tmp_path, tmp_path / "log", privacy=dp_privacy(), source=source)
    with running_enclave(c, tmp_path / "state", model_source=path) as (address, app):
        upload_parties(address, c, tmp_path / "uploads")
        assert wait_phase(address, c, "released", "failed", "awaiting_approval") == "failed"
        detail = status_detail(address, c).detail
        assert named in detail and when in detail and "DP" in detail
        assert not app.state.view.manifest
        with session(Recipient, address, c, RECIPIENT) as r, pytest.raises(CctrainError):
            r.fetch_model()
    assert list((tmp_path / "state" / "release").glob("**/*.sealed")) == []


def test_unchanged_buffers_and_frozen_layers_are_released_and_listed(tmp_path: Path) -> None:
    run = run_dp(tmp_path, privacy=dp_privacy(), source=CONSTANT)
    cert = run.manifest["dp_certificate"]
    assert cert["covers"] == ["fc.bias", "fc.weight"]
    assert cert["unchanged_from_initialisation"] == ["frozen.bias", "frozen.weight", "scale"]


def _train_on_id_rows(source: bytes, mode: str, *, lr: float, params: dict[str, Any]) -> None:
    """Train the pinned ``source`` under DP on 64 rows whose feature 0 is the row id."""
    import hashlib

    import numpy as np

    from cctrain_enclave.trainer import train

    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    x[:, 0] = 1000 + np.arange(64)
    training = {
        "model": {
            "name": "custom",
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "entry": "build_model",
            "params": params,
        },
        "optimizer": {"name": "sgd", "lr": lr},
        "epochs": 1,
        "batch_size": 16,
        "seed": 0,
    }
    privacy = dp_privacy(noise_source="insecure-fast", grad_sample_mode=mode) | {
        "accountant": "rdp"
    }
    train(
        x,
        (x[:, 1] > 0).astype(np.int64),
        num_classes=2,
        training=training,
        privacy=privacy,
        simulated_platform=True,
        checkpoint=None,
        progress=None,
        custom_model_source=source,
    )


@pytest.mark.parametrize("mode", ["fast", "hooks", "ghost"])
def test_every_gradient_mode_checks_the_step_for_writes_outside_the_update(mode: str) -> None:
    """The per-step check hangs on the torch optimiser's pre-step hook: every engine calls it."""
    from cctrain_enclave.trainer.guard import DpStateViolation

    with pytest.raises(DpStateViolation, match="'fc.weight' changed during the model's forward"):
        _train_on_id_rows(INTO_WEIGHT, mode, lr=0.1, params={"log": "unused"})


# Found by an independent review: optimiser hooks registered by model code run around the DP
# update, where the per-step snapshots could not see them.
POSTHOOK = b"""
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self.scale = nn.Linear(width, 1)  # "folded input scale", trained
        self._last = None
        register_optimizer_step_post_hook(self._after_step)

    def _after_step(self, opt, args, kwargs):
        # "fold the running input statistics into the weights after each step"
        if self._last is not None:
            with torch.no_grad():
                self.scale.weight.copy_(self._last[:1])
            self._last = None

    def forward(self, x):
        if self.training and x.shape[0] > 0:
            self._last = x.detach().clone()
        return self.fc(x) + 0 * self.scale(x)

def build_model(shape, classes):
    return Model(shape[0], classes)
"""

PREHOOK_GRAD = b"""
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self._last = None
        register_optimizer_step_pre_hook(self._before_step)

    def _before_step(self, opt, args, kwargs):
        if self._last is not None and self.fc.bias.grad is not None:
            # replace the noisy gradient: the SGD update writes -lr * this into the weights
            self.fc.weight.grad = (self.fc.weight.detach() - torch.stack([self._last[0], self._last[0]])) / 0.01
            self._last = None

    def forward(self, x):
        if self.training and x.shape[0] > 0:
            self._last = x.detach().clone()
        return self.fc(x)

def build_model(shape, classes):
    return Model(shape[0], classes)
"""


@pytest.fixture
def restore_global_optimizer_hooks():
    from torch.optim import optimizer as torch_optimizer

    pre = dict(torch_optimizer._global_optimizer_pre_hooks)
    post = dict(torch_optimizer._global_optimizer_post_hooks)
    yield
    for hooks, saved in (
        (torch_optimizer._global_optimizer_pre_hooks, pre),
        (torch_optimizer._global_optimizer_post_hooks, post),
    ):
        hooks.clear()
        hooks.update(saved)


@pytest.mark.usefixtures("restore_global_optimizer_hooks")
@pytest.mark.parametrize("source", [POSTHOOK, PREHOOK_GRAD], ids=["post-hook", "pre-hook-grad"])
@pytest.mark.parametrize("mode", ["fast", "hooks", "ghost"])
def test_optimiser_hooks_of_model_code_refuse_dp_training(source: bytes, mode: str) -> None:
    from cctrain_enclave.trainer.guard import DpStateViolation

    with pytest.raises(DpStateViolation, match="optimiser step hook"):
        _train_on_id_rows(source, mode, lr=0.01, params={})
