"""Which rows each step sees.

Without DP: a fresh permutation per epoch, cut into batches (the usual PyTorch loop), from the
public ``training.seed``: nothing private rests on it.

With DP: Poisson sampling, the assumption of the Sampled Gaussian Mechanism accountants: every
row joins each batch independently with probability ``q``. Like Opacus's ``DPDataLoader`` we
take ``q = 1 / ceil(N / batch_size)`` and that many steps per epoch.

The accountants also assume the subsample is *secret*: amplification by sampling is what buys
the small ε, and it is void if an observer can tell which rows a step used. ``training.seed``
is in the signed policy and the manifest, and the receipts give the row order, so batches drawn
from it can be recomputed by anyone. :class:`SecretPoissonBatches` therefore draws from an
AES-256-CTR keystream under a key from ``os.urandom`` that lives only in the trainer's memory
(fresh at every start, never stored, never released): row ``i`` joins a step when its 64-bit
keystream word is below ``floor(q · 2^64)``. The realised rate is that threshold over ``2^64``,
at most ``q`` and less than ``2^-64`` below it, and a smaller rate only strengthens the
guarantee the accountant computes for ``q``.

Steps are independent, so a restart does not need the old key: the steps left are sampled
under the new one, each still Poisson with rate ``q``. Nothing about sampling is checkpointed.

:class:`SeededPoissonBatches` draws the same distribution from the public seed. It is used only
with the ``insecure-fast`` noise source (simulated platform only, where nothing is private
anyway) so that tests are reproducible; its certificate says ``sampling`` is insecure.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "BatchPlanner",
    "SecretPoissonBatches",
    "SeededPoissonBatches",
    "ShuffledBatches",
    "poisson_sample_rate",
]


def poisson_sample_rate(*, num_rows: int, batch_size: int) -> tuple[float, int]:
    """``(q, steps_per_epoch)`` as Opacus's DPDataLoader derives them from a batch size."""
    steps = math.ceil(num_rows / batch_size)
    return 1.0 / steps, steps


class BatchPlanner(Protocol):
    #: Written into the DP certificate (``sampling``).
    name: str
    steps_per_epoch: int

    def epoch_batches(self, start: int = 0) -> list[torch.Tensor]:
        """The batches of one epoch's steps ``start, start+1, ...`` (row indices)."""
        ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class _NumpyGeneratorState:
    _rng: np.random.Generator

    def state(self) -> dict[str, Any]:
        """The bit generator's state: a dict of str and int, safe for ``weights_only`` loads."""
        return dict(self._rng.bit_generator.state)

    def load_state(self, state: dict[str, Any]) -> None:
        if state:
            self._rng.bit_generator.state = state


class ShuffledBatches(_NumpyGeneratorState):
    """A random permutation per epoch, in consecutive batches (the last one may be short)."""

    name = "shuffled-seeded"

    def __init__(self, *, num_rows: int, batch_size: int, seed: int) -> None:
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.steps_per_epoch = math.ceil(num_rows / batch_size)
        self._rng = np.random.default_rng([seed, 1])

    def epoch_batches(self, start: int = 0) -> list[torch.Tensor]:
        order = torch.from_numpy(self._rng.permutation(self.num_rows))
        return list(torch.split(order, self.batch_size))[start:]


class SeededPoissonBatches(_NumpyGeneratorState):
    """Poisson batches from the public seed: reproducible, hence *not* private (tests only).

    The size ``K ~ Binomial(N, q)`` then a uniform K-subset: the independent-Bernoulli law.
    A whole epoch is drawn at its start so that a checkpoint needs only the generator's
    state at that start.
    """

    name = "insecure-seeded-poisson"

    def __init__(self, *, num_rows: int, sample_rate: float, steps_per_epoch: int, seed: int):
        self.num_rows = num_rows
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        self._rng = np.random.default_rng([seed, 1])

    def sample(self) -> torch.Tensor:
        size = int(self._rng.binomial(self.num_rows, self.sample_rate))
        return torch.from_numpy(self._rng.choice(self.num_rows, size=size, replace=False))

    def epoch_batches(self, start: int = 0) -> list[torch.Tensor]:
        return [self.sample() for _ in range(self.steps_per_epoch)][start:]


class SecretPoissonBatches:
    """Poisson batches from a CSPRNG keyed inside the enclave (see the module docstring)."""

    name = "csprng-aes256ctr-poisson"

    def __init__(
        self, *, num_rows: int, sample_rate: float, steps_per_epoch: int, key: bytes | None = None
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample rate {sample_rate} outside (0, 1]")
        if key is None:
            key = os.urandom(32)
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        self.num_rows = num_rows
        self.sample_rate = sample_rate
        self.steps_per_epoch = steps_per_epoch
        # floor(q · 2^64) from the exact value of the float q: the realised rate is ≤ q.
        threshold = math.floor(Fraction(sample_rate) * (1 << 64))
        self._all = threshold >= (1 << 64)
        self._threshold = np.uint64(min(threshold, (1 << 64) - 1))
        # A fresh key per sampler makes the fixed all-zero initial counter safe.
        self._keystream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @property
    def realised_rate(self) -> Fraction:
        return Fraction(1) if self._all else Fraction(int(self._threshold), 1 << 64)

    def sample(self) -> torch.Tensor:
        if self._all:
            return torch.arange(self.num_rows)
        words = np.frombuffer(self._keystream.update(bytes(8 * self.num_rows)), dtype=np.uint64)
        return torch.from_numpy(np.flatnonzero(words < self._threshold))

    def epoch_batches(self, start: int = 0) -> list[torch.Tensor]:
        return [self.sample() for _ in range(start, self.steps_per_epoch)]

    def state(self) -> dict[str, Any]:
        return {}  # nothing to resume: the steps left are sampled under a fresh key

    def load_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state`)."""
