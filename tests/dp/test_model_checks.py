"""The training plan is checked before any data arrives: ``cctrain-enclave serve`` refuses to
start on a plan that cannot run, and ``cctrain policy check`` says the same to the
consortium before anyone signs. Each refusal lists every problem, naming it; no run starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cctrain.cli.main import main
from cctrain.errors import PolicyError
from tests.consortium import RECIPIENT, make_consortium, running_enclave

DP = {"enabled": True, "target_epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}

BATCHNORM_AND_FUNCTIONAL = b"""
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.norm = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return F.linear(self.fc(self.norm(x)), self.fc.weight.t()[:, : self.fc.out_features])


def build_model(shape, classes):
    return Model(shape[0], classes)
"""

FUNCTIONAL = b"""
import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.proj = nn.Linear(width, classes)
        self.mix = nn.Linear(classes, classes)

    def forward(self, x):
        return F.linear(torch.tanh(self.mix(self.proj(x))), self.mix.weight)


def build_model(shape, classes):
    return Model(shape[0], classes)
"""

WRONG_SHAPE = b"""
from torch import nn


def build_model(shape, classes):
    return nn.Linear(7, classes)  # the policy's rows have 4 features
"""

GOOD = b"""
from torch import nn


def build_model(shape, classes):
    return nn.Sequential(nn.Linear(shape[0], 8), nn.Tanh(), nn.Linear(8, classes))
"""


def _custom(tmp: Path, source: bytes, privacy: dict[str, Any]) -> tuple[Any, Path]:
    path = tmp / "model.py"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source)
    c = make_consortium(
        tmp / "c",
        training={
            "model": {"name": "custom", "source_sha256": hashlib.sha256(source).hexdigest()},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": 16,
        },
        privacy=privacy,
    )
    return c, path


def _refused(c: Any, state: Path, source: Path | None) -> list[str]:
    with pytest.raises(PolicyError, match="training plan cannot run") as info:
        with running_enclave(c, state, model_source=source):
            pass
    assert not (state / "journal.log").exists()  # no run, no keys, nothing to upload to
    return list(info.value.problems)


def _policy_check(c: Any, source: Path | None) -> tuple[int, str]:
    path = c.root / "policy.json"
    path.write_bytes(c.signed.policy.raw)
    args = ["policy", "check", str(path)] + (["--model-source", str(source)] if source else [])
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("source", "privacy", "expected"),
    [
        (BATCHNORM_AND_FUNCTIONAL, DP, ["BatchNorm cannot support training with differential"]),
        (FUNCTIONAL, DP, ["clips this model's per-sample gradients wrongly"]),
        (WRONG_SHAPE, DP, ["forward pass on a synthetic batch failed"]),
        (WRONG_SHAPE, {"enabled": False}, ["a training step on synthetic data failed"]),
    ],
    ids=["unsupported-layer", "weight-outside-its-layer", "wrong-shape-dp", "wrong-shape"],
)
def test_serve_and_policy_check_refuse_a_plan_that_cannot_run(
    tmp_path: Path, source: bytes, privacy: dict[str, Any], expected: list[str]
) -> None:
    c, path = _custom(tmp_path, source, privacy)
    problems = _refused(c, tmp_path / "state", path)
    for text in expected:
        assert any(text in p for p in problems), problems
    code, out = _policy_check(c, path)
    assert code != 0
    for text in expected:
        assert text in out


PRELU = b"""
from torch import nn


def build_model(shape, classes):
    # nn.PReLU's slope is a trainable parameter the fast path has no rule for.
    return nn.Sequential(nn.Linear(shape[0], 8), nn.PReLU(), nn.Linear(8, classes))
"""


def test_an_explicit_mode_that_cannot_clip_the_model_is_refused(tmp_path: Path) -> None:
    c, path = _custom(tmp_path, PRELU, DP | {"grad_sample_mode": "fast"})
    problems = _refused(c, tmp_path / "state", path)
    assert any(
        "grad_sample_mode 'fast'" in p and "PReLU layer, which has no fast-clipping rule" in p
        for p in problems
    ), problems


def test_a_plan_that_runs_passes_both_checks(tmp_path: Path) -> None:
    c, path = _custom(tmp_path, GOOD, DP)
    with running_enclave(c, tmp_path / "state", model_source=path) as (_address, app):
        assert app.state.view.phase == "collecting"
    code, out = _policy_check(c, path)
    assert code == 0, out
    assert "training plan: ok" in out
    code, out = _policy_check(c, None)
    assert code == 0 and "NOT CHECKED (custom model: pass --model-source FILE)" in out
    assert json.loads(c.signed.policy.raw)["release"]["recipients"] == [RECIPIENT]
