"""The fast path's per-layer rules (``fastclip.LAYER_RULES``), layer type by layer type.

For each layer type and a spread of its configurations, in float64, the fast path's per-sample
gradient norms and clipped gradient sums equal Opacus's hooks mode (``GradSampleModule``,
per-sample gradients materialised) to 1e-10, and equal the per-sample definition (one
backward per sample) in every case. Where Opacus 1.6 itself is wrong or refuses the layer,
the case says so (``opacus=False``) and only the definition is the reference; the test then
also asserts that Opacus does differ, so a fixed Opacus shows up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from cctrain_enclave.trainer.fastclip import (
    LAYER_RULES,
    FastClipper,
    FastClipUnsupported,
    LinearClipper,
    fast_clip_unsupported_reasons,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # torch's own note on padding="same" with an even kernel (a padded copy of the input).
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]

BATCH = 5
TOL = 1e-10


@dataclass(frozen=True)
class Case:
    id: str
    layer: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], torch.Tensor]
    #: True: Opacus's hooks mode is exact here; False: it is wrong (asserted) or raises.
    #: Checked with Opacus 1.6: its conv sampler unfolds with zero padding whatever the
    #: ``padding_mode`` (norms and sums wrong), its embedding sampler gives the
    #: ``padding_idx`` row a gradient (wrong), and its LayerNorm sampler raises on
    #: ``bias=False`` (reads ``layer.bias.requires_grad``).
    opacus: bool = True


def _normal(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(BATCH, *shape, generator=g, dtype=torch.float64)


def _tokens(vocab: int, *shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    # A small vocabulary, so tokens repeat within a sample (the cross terms of the norm).
    return lambda g: torch.randint(0, vocab, (BATCH, *shape), generator=g)


CASES = [
    Case("linear", lambda: nn.Linear(6, 4), _normal(6)),
    Case("linear-no-bias", lambda: nn.Linear(6, 4, bias=False), _normal(6)),
    Case("linear-sequence", lambda: nn.Linear(6, 4), _normal(3, 6)),
    Case("linear-long-sequence", lambda: nn.Linear(3, 2), _normal(2, 9, 3)),
    Case("conv1d", lambda: nn.Conv1d(3, 4, 3), _normal(3, 10)),
    Case("conv1d-stride-pad-dil", lambda: nn.Conv1d(3, 4, 3, 2, 2, 2), _normal(3, 11)),
    Case("conv1d-groups", lambda: nn.Conv1d(4, 6, 3, padding=1, groups=2), _normal(4, 9)),
    Case("conv1d-same", lambda: nn.Conv1d(3, 2, 4, padding="same"), _normal(3, 9)),
    Case(
        "conv1d-circular",
        lambda: nn.Conv1d(3, 2, 3, padding=2, padding_mode="circular"),
        _normal(3, 8),
        opacus=False,
    ),
    Case("conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), _normal(3, 6, 6)),
    Case("conv2d-no-bias", lambda: nn.Conv2d(3, 4, 3, bias=False), _normal(3, 6, 6)),
    Case(
        "conv2d-stride-dil-rect",
        lambda: nn.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        _normal(2, 7, 8),
    ),
    Case("conv2d-groups", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), _normal(4, 5, 5)),
    Case("conv2d-depthwise", lambda: nn.Conv2d(3, 6, 3, groups=3), _normal(3, 6, 6)),
    Case("conv2d-same-even", lambda: nn.Conv2d(2, 3, 4, padding="same"), _normal(2, 6, 7)),
    Case("conv2d-big-image", lambda: nn.Conv2d(1, 2, 3, padding=1), _normal(1, 12, 12)),
    Case(
        "conv2d-reflect",
        lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
        _normal(2, 6, 6),
        opacus=False,
    ),
    Case(
        "conv2d-replicate",
        lambda: nn.Conv2d(2, 3, 3, padding=2, padding_mode="replicate"),
        _normal(2, 6, 6),
        opacus=False,
    ),
    Case(
        "conv2d-circular-groups",
        lambda: nn.Conv2d(4, 2, 3, padding=1, padding_mode="circular", groups=2),
        _normal(4, 5, 6),
        opacus=False,
    ),
    Case("embedding", lambda: nn.Embedding(7, 4), _tokens(7, 6)),
    Case("embedding-one-token", lambda: nn.Embedding(7, 4), _tokens(7)),
    Case("embedding-2d-tokens", lambda: nn.Embedding(5, 3), _tokens(5, 2, 3)),
    Case(
        "embedding-padding-idx",
        lambda: nn.Embedding(6, 4, padding_idx=0),
        _tokens(6, 8),
        opacus=False,
    ),
    Case("layernorm", lambda: nn.LayerNorm(6), _normal(6)),
    Case("layernorm-sequence", lambda: nn.LayerNorm(6), _normal(4, 6)),
    Case("layernorm-2d-shape", lambda: nn.LayerNorm((3, 4)), _normal(2, 3, 4)),
    Case("layernorm-no-bias", lambda: nn.LayerNorm(6, bias=False), _normal(4, 6), opacus=False),
    Case("rmsnorm", lambda: nn.RMSNorm(6), _normal(4, 6)),
    Case("rmsnorm-eps", lambda: nn.RMSNorm((2, 6), eps=1e-3), _normal(2, 6)),
    Case("groupnorm", lambda: nn.GroupNorm(2, 4), _normal(4, 5, 5)),
    Case("groupnorm-1d", lambda: nn.GroupNorm(3, 6), _normal(6, 7)),
    Case("groupnorm-one-group", lambda: nn.GroupNorm(1, 4), _normal(4, 3, 3)),
]


def _setup(case: Case) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(case.layer()).double()
    with torch.no_grad():  # away from the initial values (LayerNorm's 1 and 0, ...)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = case.inputs(g)
    with torch.no_grad():
        target = torch.randn(model(x).shape, generator=g, dtype=torch.float64)
    # Samples differ in scale, so some are clipped and some are not.
    target *= torch.linspace(0.2, 3.0, BATCH, dtype=torch.float64).view(
        -1, *[1] * (target.dim() - 1)
    )
    return model, x, target


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A per-sample loss (no mixing across the batch), summed; nonlinear in the output."""
    return ((out - target) ** 2).sum() + (out * target).tanh().sum()


def _definition(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, clip: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One backward per sample: the norms, and the Opacus-style clipped sum."""
    params = list(model.parameters())
    grads = [
        torch.autograd.grad(_loss(model(x[i : i + 1]), target[i : i + 1]), params)
        for i in range(len(x))
    ]
    norms = torch.stack([torch.sqrt(sum(g.square().sum() for g in gs)) for gs in grads])
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    sums = [
        sum(f * gs[k] for f, gs in zip(factors, grads, strict=True)) for k in range(len(params))
    ]
    return norms, sums


def _opacus(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, clip: float
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """Opacus's hooks mode: its per-sample gradients, their norms and clipped sum (the
    factor as DPOptimizer computes it). ``None`` if Opacus refuses the layer."""
    try:
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    except NotImplementedError:
        return None
    try:
        _loss(gsm(x), target).backward()
        per = [p.grad_sample for p in model.parameters()]
    except AttributeError:  # its LayerNorm sampler reads ``layer.bias`` even when it is None
        return None
    finally:
        gsm._close()
        model.zero_grad(set_to_none=True)
    norms = torch.stack([g.reshape(len(x), -1).norm(dim=1) for g in per], 1).norm(dim=1)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    return norms, [torch.einsum("i,i...->...", factors, g) for g in per]


def _fast(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, clip: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    clipper = FastClipper(model)
    try:
        with clipper.capture():
            out = model(x)
        norms = clipper.per_sample_norms(_loss(out, target))
        with clipper.capture():
            out = model(x)
        got = dict(clipper.clipped_gradient_sum(_loss(out, target), max_grad_norm=clip))
    finally:
        clipper.close()
    return norms, [got[p] for p in model.parameters()]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=TOL, atol=TOL))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_layer_rule_equals_opacus_and_the_definition(case: Case) -> None:
    model, x, target = _setup(case)
    assert fast_clip_unsupported_reasons(model) == []
    norms, _ = _definition(model, x, target, 1.0)
    clip = float(norms.median())  # about half the samples are clipped
    assert (norms > clip).any() and (norms < clip).any()
    want_norms, want_sums = _definition(model, x, target, clip)
    got_norms, got_sums = _fast(model, x, target, clip)
    torch.testing.assert_close(got_norms, want_norms, rtol=TOL, atol=TOL)
    for got, want in zip(got_sums, want_sums, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    opacus = _opacus(model, x, target, clip)
    if case.opacus:
        assert opacus is not None
        torch.testing.assert_close(got_norms, opacus[0], rtol=TOL, atol=TOL)
        for got, want in zip(got_sums, opacus[1], strict=True):
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    elif opacus is not None:
        # Opacus is wrong here (see the case): its norms or sums differ from the definition.
        o_norms, o_sums = opacus
        assert not _close(o_norms, want_norms) or not all(
            _close(o, w) for o, w in zip(o_sums, want_sums, strict=True)
        )


def test_the_table_covers_the_layer_types_of_the_issue() -> None:
    for t in (
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Embedding,
        nn.LayerNorm,
        nn.RMSNorm,
        nn.GroupNorm,
    ):
        assert t in LAYER_RULES
    assert LinearClipper is FastClipper


class _Unruled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * self.scale)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (_Unruled(), "'scale' is in a _Unruled layer, which has no fast-clipping rule"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), "BatchNorm2d layer"),
        (nn.Sequential(nn.Conv3d(1, 2, 3)), "Conv3d layer"),
        (nn.Sequential(nn.MultiheadAttention(4, 2)), "MultiheadAttention layer"),
        (nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True)), "mixes samples"),
        (nn.Sequential(nn.Embedding(5, 3, sparse=True)), "sparse=True"),
        (nn.Sequential(nn.Embedding(5, 3, max_norm=1.0)), "max_norm"),
    ],
    ids=["own-parameter", "batchnorm", "conv3d", "attention-module", "freq", "sparse", "max-norm"],
)
def test_trainable_parameters_outside_the_rules_are_refused(model: nn.Module, reason: str) -> None:
    reasons = fast_clip_unsupported_reasons(model)
    assert any(reason in r for r in reasons), reasons
    with pytest.raises(FastClipUnsupported, match="fast clipping unsupported"):
        FastClipper(model)


def test_parameterless_layers_frozen_layers_and_functional_attention_are_fine() -> None:
    frozen = nn.LayerNorm(4)
    frozen.requires_grad_(False)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.LayerNorm(8, elementwise_affine=False),
        nn.BatchNorm1d(8, affine=False),
        nn.Linear(8, 4),
        frozen,
    )
    assert fast_clip_unsupported_reasons(model) == []


def test_a_norm_layer_run_twice_or_tied_embeddings_are_refused() -> None:
    norm = nn.LayerNorm(4)
    model = nn.Sequential(nn.Linear(4, 4), norm, nn.Linear(4, 4), norm)
    clipper = FastClipper(model)
    with clipper.capture():
        out = model(torch.randn(3, 4))
    with pytest.raises(FastClipUnsupported, match=r"nn.LayerNorm\) ran twice"):
        clipper.clipped_gradient_sum(out.sum(), max_grad_norm=1.0)
    clipper.close()
    emb, head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    assert any("tied weights" in r for r in fast_clip_unsupported_reasons(nn.Sequential(emb, head)))


def test_a_layer_without_a_batch_dimension_is_refused() -> None:
    """A positional embedding looked up with ``arange(T)`` (no batch dimension): the rule
    cannot split its gradient by sample, so the fast path says so instead of guessing."""

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(5, 4), nn.Embedding(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.tok(x) + self.pos(torch.arange(3))).sum((1, 2))

    model = Positional()
    clipper = FastClipper(model)
    with clipper.capture():
        out = model(torch.randint(0, 5, (2, 3)))
    with pytest.raises(FastClipUnsupported, match="first dimension is not the batch"):
        clipper.clipped_gradient_sum(out.sum(), max_grad_norm=1.0)
    clipper.close()


def test_the_registry_cnn_trains_the_same_with_fast_and_with_opacus_hooks() -> None:
    """End to end through ``train`` (float32, same seed, same sampler and noise keys): the
    registry CNN (Conv2d + GroupNorm + Linear) under ``fast`` ends at Opacus hooks' weights."""
    from cctrain_enclave.trainer import TrainingRandomness, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 1, 8, 8)).astype(np.float32)
    y = (x.reshape(256, -1) @ rng.normal(size=(64, 3))).argmax(1).astype(np.int64)
    training = {
        "task": "classification",
        "model": {"name": "cnn", "params": {"channels": [4, 8], "hidden": 8, "groups": 2}},
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.5, "weight_decay": 0.0},
        "epochs": 1,
        "batch_size": 16,
        "seed": 0,
    }
    results = {}
    for mode in ("fast", "hooks"):
        privacy = {
            "enabled": True,
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "max_grad_norm": 0.5,
            "accountant": "rdp",
            "noise_source": "insecure-fast",
            "grad_sample_mode": mode,
        }
        results[mode] = train(
            x,
            y,
            num_classes=3,
            training=training,
            privacy=privacy,
            simulated_platform=True,
            checkpoint=None,
            progress=None,
            randomness=TrainingRandomness.fixed_for_tests(0),
        )
    fast, hooks = results["fast"], results["hooks"]
    assert fast.dp_certificate is not None and hooks.dp_certificate is not None
    assert fast.dp_certificate["grad_sample_mode"] == "fast"
    assert fast.dp_certificate["steps"] == hooks.dp_certificate["steps"] > 0
    assert fast.state_dict.keys() == hooks.state_dict.keys()
    for name, value in fast.state_dict.items():
        torch.testing.assert_close(value, hooks.state_dict[name], rtol=1e-4, atol=1e-5)
    start = train(  # the same initial weights, (almost) not trained
        x,
        y,
        num_classes=3,
        training=training | {"epochs": 1, "optimizer": {"name": "sgd", "lr": 1e-12}},
        privacy={"enabled": False},
        simulated_platform=True,
        checkpoint=None,
        progress=None,
        randomness=TrainingRandomness.fixed_for_tests(0),
    )
    moved = max(float((fast.state_dict[k] - v).abs().max()) for k, v in start.state_dict.items())
    assert moved > 100 * 1e-4  # it trained, far beyond the tolerance of the comparison
