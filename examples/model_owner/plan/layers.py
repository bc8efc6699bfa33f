"""Layers of the model owner's plan."""

from __future__ import annotations

import torch
from torch import nn


class Gate(nn.Module):
    """x -> tanh(W x) * sigmoid(V x): a gated unit built from Linear layers only."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Linear(width, hidden)
        self.gate = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))


class GatedNet(nn.Module):
    def __init__(self, width: int, hidden: int, outputs: int) -> None:
        super().__init__()
        # Input normalisation: the owner's own measurements, released unchanged.
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.first = Gate(width, hidden)
        self.second = Gate(hidden, hidden)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first((x.flatten(1) - self.mean) * self.scale)
        return self.head(self.second(h))
