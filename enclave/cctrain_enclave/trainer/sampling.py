"""Which rows each step sees.

Without DP: a fresh permutation per epoch, cut into batches (the usual PyTorch loop).
With DP: Poisson sampling, the assumption of the Sampled Gaussian Mechanism accountants: every
row joins each batch independently with probability ``q``. Like Opacus's ``DPDataLoader`` we
take ``q = 1 / ceil(N / batch_size)`` and that many steps per epoch.

Opacus's ``UniformWithReplacementSampler`` draws N uniforms per step (O(N), ~0.1 ms at N=20k);
we draw the same distribution in O(batch): the batch size ``K ~ Binomial(N, q)``, then a uniform
K-subset. Any subset S then has probability ``C(N,|S|) q^|S| (1-q)^(N-|S|) / C(N,|S|)``, exactly
the independent-Bernoulli law, so the privacy analysis is unchanged.

A whole epoch's batches are drawn at the epoch start, so a checkpoint needs only the
generator's state at that start plus the step reached.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["BatchPlanner", "PoissonBatches", "ShuffledBatches", "poisson_sample_rate"]


def poisson_sample_rate(*, num_rows: int, batch_size: int) -> tuple[float, int]:
    """``(q, steps_per_epoch)`` as Opacus's DPDataLoader derives them from a batch size."""
    steps = math.ceil(num_rows / batch_size)
    return 1.0 / steps, steps


class BatchPlanner(Protocol):
    steps_per_epoch: int

    def epoch_batches(self) -> list[torch.Tensor]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class _NumpyGeneratorState:
    _rng: np.random.Generator

    def state(self) -> dict[str, Any]:
        """The bit generator's state: a dict of str and int, safe for ``weights_only`` loads."""
        return dict(self._rng.bit_generator.state)

    def load_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state


class ShuffledBatches(_NumpyGeneratorState):
    """A random permutation per epoch, in consecutive batches (the last one may be short)."""

    def __init__(self, *, num_rows: int, batch_size: int, seed: int) -> None:
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.steps_per_epoch = math.ceil(num_rows / batch_size)
        self._rng = np.random.default_rng([seed, 1])

    def epoch_batches(self) -> list[torch.Tensor]:
        order = torch.from_numpy(self._rng.permutation(self.num_rows))
        return list(torch.split(order, self.batch_size))


class PoissonBatches(_NumpyGeneratorState):
    """``steps_per_epoch`` Poisson-sampled batches per epoch (batches may be empty)."""

    def __init__(self, *, num_rows: int, sample_rate: float, steps_per_epoch: int, seed: int):
        self.num_rows = num_rows
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self._rng = np.random.default_rng([seed, 1])

    def sample(self) -> torch.Tensor:
        size = int(self._rng.binomial(self.num_rows, self.sample_rate))
        return torch.from_numpy(self._rng.choice(self.num_rows, size=size, replace=False))

    def epoch_batches(self) -> list[torch.Tensor]:
        return [self.sample() for _ in range(self.steps_per_epoch)]
