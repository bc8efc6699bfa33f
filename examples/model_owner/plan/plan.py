"""The model owner's training plan (its intellectual property: the host never sees it).

A small gated network: the inputs are normalised by constants the model owner measured on its
own data (buffers, shipped in the initial weights and never trained), then two gated hidden
layers. The initial weights are the model owner's pretraining on its own rows; the consortium
fine-tunes them on the hospitals' data inside the enclave.
"""

from __future__ import annotations

import torch
from torch import nn

from . import layers


def build_model(feature_shape: tuple[int, ...], num_outputs: int, *, hidden: int = 32) -> nn.Module:
    return layers.GatedNet(feature_shape[0], hidden, num_outputs)


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model owner's own metric, per patient: the Brier score (squared distance between the
    predicted probabilities and the diagnosis; lower is better calibrated). The policy names it
    (``training.metrics``) and releases it on the held-out rows (``val_brier``)."""
    p = outputs.softmax(1)
    onehot = nn.functional.one_hot(targets, p.shape[1]).to(p.dtype)
    return {"brier": (p - onehot).square().sum(1)}
