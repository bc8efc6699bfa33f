"""The Opacus half of the DP step engines (``hooks`` and ``ghost``), imported only when a DP
run uses one of them: :data:`.dp.GRAD_SAMPLE_MODES` builds them through a factory that
imports this module, so that a run without privacy (or with the fast engine) never loads
Opacus. The names stay importable from :mod:`.dp` as well.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from .dp import DpPlan, NoisePrefetcher, _EngineBase
from .noise import GaussianSource
from .objective import CROSS_ENTROPY, Objective, ObjectiveCriterion

__all__ = [
    "OpacusGhostEngine",
    "OpacusHooksEngine",
    "SourceNoiseDPOptimizer",
    "SourceNoiseDPOptimizerGhost",
]


class _SourceNoiseMixin:
    """Opacus DPOptimizer whose ``add_noise`` draws from our noise source, not torch.normal."""

    noise: NoisePrefetcher
    params: list[nn.Parameter]

    def add_noise(self) -> None:
        noises = self.noise.take()
        for p, noise in zip(self.params, noises, strict=True):
            _check_processed_flag(p.summed_grad)  # type: ignore[attr-defined]
            p.grad = (p.summed_grad + noise).view_as(p)  # type: ignore[attr-defined]
            _mark_as_processed(p.summed_grad)  # type: ignore[attr-defined]


class SourceNoiseDPOptimizer(_SourceNoiseMixin, DPOptimizer):  # type: ignore[misc]
    """Opacus's DPOptimizer (hooks mode) with our noise."""


class SourceNoiseDPOptimizerGhost(_SourceNoiseMixin, DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus's ghost-clipping DPOptimizer with our noise."""


class _OpacusEngine(_EngineBase):
    """A step through an Opacus GradSampleModule and DP optimizer (subclasses build them)."""

    gsm: Any
    dp_optimizer: Any

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.objective.loss(out, y, "mean")

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return self._noise_only_step()
        self.dp_optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self.gsm(x), y)
        loss.backward()
        self.dp_optimizer.step()
        return loss.detach() * len(x)

    def close(self) -> None:
        super().close()
        self.gsm._close()


class OpacusHooksEngine(_OpacusEngine):
    """Opacus GradSampleModule (per-sample gradients via hooks) + DPOptimizer."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DpPlan,
        noise: GaussianSource,
        *,
        objective: Objective = CROSS_ENTROPY,
    ) -> None:
        super().__init__(model, optimizer, plan, noise, objective=objective)
        self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self.dp_optimizer = SourceNoiseDPOptimizer(
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            expected_batch_size=plan.expected_batch_size,
            loss_reduction="mean",
        )
        self.dp_optimizer.noise = self.noise_draws


class OpacusGhostEngine(_OpacusEngine):
    """Opacus ghost clipping: per-sample norms in a first backward, clipped sum in a second."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DpPlan,
        noise: GaussianSource,
        *,
        objective: Objective = CROSS_ENTROPY,
    ) -> None:
        super().__init__(model, optimizer, plan, noise, objective=objective)
        self.gsm = GradSampleModuleFastGradientClipping(
            model, batch_first=True, loss_reduction="mean", max_grad_norm=plan.max_grad_norm
        )
        self.dp_optimizer = SourceNoiseDPOptimizerGhost(
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            expected_batch_size=plan.expected_batch_size,
            loss_reduction="mean",
        )
        self.dp_optimizer.noise = self.noise_draws
        self.criterion = DPLossFastGradientClipping(
            self.gsm, self.dp_optimizer, ObjectiveCriterion(self.objective, "mean"), "mean"
        )

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.criterion(out, y)
        return loss
