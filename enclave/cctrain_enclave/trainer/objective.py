"""What training minimises and what it reports: the one seam every engine goes through.

An :class:`Objective` is built around a **per-sample loss**, ``per_sample(outputs, targets)
-> (B,)``: row i's loss depends on row i alone. Everything else follows from it: the plain
step minimises its mean over the batch; the DP engines clip the gradient of each row's loss
(:mod:`.fastclip` and Opacus's ghost clipping take the per-sample losses, Opacus's hooks the
mean), so the sensitivity the DP guarantee rests on is that of this one function. That a
custom per-sample loss really is per sample (does not mix the rows of a batch) is checked by
:func:`~.dp.clipping_problems` on a synthetic batch before a DP run uses it.

Built in, chosen by ``training.task``:

* :func:`classification` (``num_classes`` or the vocabulary's size outputs): int64 class
  indices, cross-entropy; metrics ``loss`` and ``accuracy``;
* :func:`regression` (one output): float32 targets, squared error; metrics ``loss`` (the
  mean squared error), ``mse`` (the same, by name) and ``mae``.

The trainer prefixes the metrics with ``train_`` (all training rows, the model as released)
and ``val_`` (held-out rows, at each epoch's end).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cctrain.errors import CctrainError

__all__ = [
    "CROSS_ENTROPY",
    "Objective",
    "ObjectiveCriterion",
    "PerSampleLoss",
    "Reduction",
    "classification",
    "objective_for",
    "regression",
]

Reduction = Literal["mean", "sum", "none"]
#: ``(outputs, targets) -> per-sample losses`` of shape ``(B,)``.
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(outputs, targets) -> per-sample values`` of a metric, averaged over the rows.
PerSampleMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_EVAL_CHUNK = 4096


@dataclass(frozen=True)
class Objective:
    """A task's loss and metrics.

    ``per_sample`` is the definition; ``fused`` (optional) computes the same reduced loss
    with one library kernel (the built-ins use torch's, so their runs are what they were
    before this seam existed, to the bit). ``metrics`` are per-sample functions averaged over
    the rows when evaluating; ``loss`` is always among the reported metrics.
    """

    task: str
    num_outputs: int
    #: The dtype the targets train in: int64 class indices or float32 values.
    target_dtype: torch.dtype
    per_sample: PerSampleLoss
    metrics: Mapping[str, PerSampleMetric] = field(default_factory=dict)
    fused: Callable[[torch.Tensor, torch.Tensor, Reduction], torch.Tensor] | None = None

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean"
    ) -> torch.Tensor:
        """The batch's loss: the mean or sum of the per-sample losses, or them (``none``)."""
        if self.fused is not None:
            return self.fused(outputs, targets, reduction)
        per_row = self.per_sample(outputs, targets)
        if per_row.shape != (outputs.shape[0],):
            raise CctrainError(
                f"the {self.task} loss gave shape {tuple(per_row.shape)} for a batch of "
                f"{outputs.shape[0]} rows; a per-sample loss gives one value per row"
            )
        if reduction == "none":
            return per_row
        return per_row.sum() if reduction == "sum" else per_row.mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Every metric's mean over the rows ``(x, y)`` (``loss`` first), in eval mode."""
        model.eval()
        sums = {"loss": 0.0} | {name: 0.0 for name in self.metrics}
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for xs, ys in zip(x.split(_EVAL_CHUNK), y.split(_EVAL_CHUNK), strict=True):
            if device.type != "cpu":  # the rows stay on the host; each chunk is copied over
                xs, ys = xs.to(device), ys.to(device)
            outputs = model(xs)
            sums["loss"] += float(self.loss(outputs, ys, "sum"))
            for name, metric in self.metrics.items():
                sums[name] += float(metric(outputs, ys).sum())
        model.train()
        return {name: total / len(y) for name, total in sums.items()}

    def synthetic_targets(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """Targets for a synthetic batch (model checks, the dry run): nothing private."""
        if self.target_dtype == torch.int64:
            return torch.arange(rows) % self.num_outputs
        return torch.randn(rows, generator=generator).to(self.target_dtype)

    def target_problems(self, targets: np.ndarray) -> list[str]:
        """What is wrong with training targets (empty: nothing)."""
        want = np.dtype(str(self.target_dtype).removeprefix("torch."))
        if targets.dtype != want or targets.ndim != 1:
            return [f"labels must be {want} shaped (N,), got {targets.dtype} {targets.shape}"]
        if not len(targets):
            return []
        if want.kind == "i" and (targets.min() < 0 or targets.max() >= self.num_outputs):
            return [f"labels must lie in [0, {self.num_outputs})"]
        if want.kind == "f" and not np.isfinite(targets).all():
            return ["regression targets must be finite"]
        return []


def _cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor, reduction: Reduction
) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction=reduction)


def _correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(1) == targets).to(torch.float64)


def classification(num_classes: int) -> Objective:
    """Cross-entropy over ``num_classes`` logits; int64 class-index targets."""
    return Objective(
        task="classification",
        num_outputs=int(num_classes),
        target_dtype=torch.int64,
        per_sample=lambda o, t: F.cross_entropy(o, t, reduction="none"),
        metrics={"accuracy": _correct},
        fused=_cross_entropy,
    )


def _predictions(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A regression model's ``(B, 1)`` (or ``(B,)``) outputs as ``(B,)``."""
    if outputs.shape not in ((targets.shape[0], 1), (targets.shape[0],)):
        raise CctrainError(
            f"a regression model has one output per row: got outputs of shape "
            f"{tuple(outputs.shape)} for {targets.shape[0]} rows"
        )
    return outputs.reshape(targets.shape[0])


def _squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (_predictions(outputs, targets) - targets).square()


def _mse(outputs: torch.Tensor, targets: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    return F.mse_loss(_predictions(outputs, targets), targets, reduction=reduction)


def regression() -> Objective:
    """Squared error of one output against float32 targets (the mean: MSE)."""
    return Objective(
        task="regression",
        num_outputs=1,
        target_dtype=torch.float32,
        per_sample=_squared_error,
        metrics={
            "mse": _squared_error,
            "mae": lambda o, t: (_predictions(o, t) - t).abs(),
        },
        fused=_mse,
    )


#: Cross-entropy, where only the loss matters (it does not depend on the number of classes):
#: the default of the DP checks and engines when no objective is given.
CROSS_ENTROPY = classification(num_classes=2)


def objective_for(task: str, *, num_outputs: int) -> Objective:
    """The built-in objective of ``training.task``."""
    if task == "regression":
        return regression()
    if task == "classification":
        return classification(num_outputs)
    raise CctrainError(f"training.task {task!r}: must be classification or regression")


class ObjectiveCriterion(nn.Module):
    """An objective's loss as a criterion module with a ``reduction`` attribute: the shape
    Opacus's ghost clipping wants (it sets ``reduction = "none"`` to get per-sample losses)."""

    def __init__(self, objective: Objective, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.objective = objective
        self.reduction: Reduction = reduction

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.objective.loss(outputs, targets, self.reduction)
