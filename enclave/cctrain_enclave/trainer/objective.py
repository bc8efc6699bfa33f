"""The training objective: one loss for every engine, chosen by the task the targets encode.

``training.task = "classification"``: targets are int64 class indices (``data.labels.num_classes``
or ``vocabulary``), the model has one output per class, the loss is cross-entropy.
``"regression"``: targets are float32, the model has one output, the loss is the squared error.
The trainer checks the targets' dtype against the task before the first step, so every engine
(plain, fast DP, Opacus hooks and ghost) can dispatch on it and computes the same per-sample
loss: the sensitivity DP-SGD clips is that of this one function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TaskLoss", "evaluate_batch", "is_regression", "loss"]


def is_regression(targets: torch.Tensor) -> bool:
    return bool(targets.is_floating_point())


def loss(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for class targets; squared error (outputs ``(B, 1)`` or ``(B,)``) for
    float targets. ``reduction``: "mean", "sum" or "none" (per sample)."""
    if is_regression(targets):
        return F.mse_loss(outputs.reshape(targets.shape), targets, reduction=reduction)
    return F.cross_entropy(outputs, targets, reduction=reduction)


class TaskLoss(nn.Module):
    """:func:`loss` as a module (Opacus's ghost clipping wraps a criterion module)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(outputs, targets, self.reduction)


def evaluate_batch(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Sums over one batch of the metrics the task reports (divided by the rows later):
    ``loss`` and ``accuracy`` for classification; ``loss`` (= squared error) and
    ``abs_error`` for regression."""
    out = {"loss": float(loss(outputs, targets, "sum"))}
    if is_regression(targets):
        out["abs_error"] = float((outputs.reshape(targets.shape) - targets).abs().sum())
    else:
        out["accuracy"] = float((outputs.argmax(1) == targets).sum())
    return out
