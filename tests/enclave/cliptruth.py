"""The DP clipping truth the trainer's clipping paths are held to: Opacus's own per-sample
clipping (hooks mode, no noise), and the fast path's answer on the same batch, for a loss
the test names (classification, regression, ...)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer

from cctrain_enclave.trainer.fastclip import LinearClipper

#: ``loss(outputs, targets)``: the batch's summed loss (``reduction="sum"``).
SummedLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def opacus_clipped_sum(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_grad_norm: float,
    loss: SummedLoss,
) -> list[torch.Tensor]:
    """Opacus's clipped per-sample gradient sum, one tensor per parameter in
    ``model.parameters()`` order. The model's ``.grad`` are left cleared."""
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=len(x),
        loss_reduction="sum",
    )
    loss(gsm(x), y).backward()
    opt.clip_and_accumulate()
    sums = [p.summed_grad.detach().clone() for p in model.parameters()]
    gsm._close()
    model.zero_grad(set_to_none=True)
    return sums


def fast_clipped_sum(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_grad_norm: float,
    loss: SummedLoss,
) -> dict[int, torch.Tensor]:
    """The fast path's (:class:`LinearClipper`) clipped per-sample gradient sum, by
    ``id(parameter)``."""
    clipper = LinearClipper(model)
    try:
        with clipper.capture():
            outputs = model(x)
        return {
            id(p): g
            for p, g in clipper.clipped_gradient_sum(loss(outputs, y), max_grad_norm=max_grad_norm)
        }
    finally:
        clipper.close()


def assert_same_sums(
    model: torch.nn.Module, got: dict[int, torch.Tensor], expected: list[torch.Tensor]
) -> None:
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got[id(p)], e, atol=1e-5, rtol=1e-5)
