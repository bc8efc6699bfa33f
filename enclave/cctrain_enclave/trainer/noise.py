"""Gaussian noise sources for DP-SGD.

Opacus's ``secure_mode`` needs ``torchcsprng``, which cannot be installed here, and
``torch.normal`` draws from a Mersenne Twister whose state an observer of enough outputs can
recover. DP-SGD's guarantee assumes nobody can predict or reconstruct the noise, so by default
the noise comes from :class:`AesCtrGaussian`: an AES-256-CTR keystream (``cryptography``) under a
key drawn from ``os.urandom`` and never stored, turned into 53-bit uniform doubles and then into
normals by the Box-Muller transform, all vectorised in torch (float64, rounded to the gradient's
dtype only at the end).

``insecure-fast`` uses torch's seeded generator; it is reproducible and fast, and therefore
allowed only on the simulated platform (``dp.validate_dp_config`` enforces it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "NOISE_SOURCES",
    "AesCtrGaussian",
    "GaussianSource",
    "NoiseSourceSpec",
    "TorchGaussian",
]

_TWO_POW_MINUS_53 = 2.0**-53
_MASK_53 = (1 << 53) - 1


class GaussianSource(Protocol):
    """Draws i.i.d. N(0, std²) tensors; ``name`` is written into the DP certificate."""

    name: str

    def gaussian(self, shape: torch.Size, *, std: float, dtype: torch.dtype) -> torch.Tensor: ...

    def state(self) -> torch.Tensor | None:
        """Resumable state, or None when the source must not be resumed (fresh secret key)."""
        ...

    def load_state(self, state: torch.Tensor | None) -> None: ...


class AesCtrGaussian:
    """Standard normals from an AES-256-CTR keystream (a CSPRNG) via Box-Muller.

    Each normal consumes one 64-bit keystream word: pairs of words give two 53-bit uniforms
    ``u1 ∈ (0, 1]`` and ``u2 ∈ [0, 1)``, and ``sqrt(-2 ln u1) · (cos 2πu2, sin 2πu2)`` are two
    independent normals. The key is drawn from ``os.urandom`` and kept only in this object.
    """

    name = "csprng-aes256ctr-gaussian"

    def __init__(self) -> None:
        self._init_key(os.urandom(32))

    @classmethod
    def from_key_insecure_for_tests(cls, key: bytes) -> AesCtrGaussian:
        """A source with a caller-chosen key: reproducible, hence for statistical tests only."""
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        source = cls.__new__(cls)
        source._init_key(key)
        return source

    def _init_key(self, key: bytes) -> None:
        # A fresh key per source makes a fixed all-zero initial counter safe: the keystream
        # never repeats within 2^128 blocks, far beyond any training run.
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def _uniform_words(self, count: int) -> torch.Tensor:
        """``count`` keystream words as int64 (encrypting zeros yields the raw keystream)."""
        words = np.frombuffer(self._encryptor.update(bytes(8 * count)), dtype=np.int64)
        return torch.from_numpy(words.copy())

    def standard_normal(self, count: int) -> torch.Tensor:
        """``count`` float64 standard normals."""
        pairs = (count + 1) // 2
        words = self._uniform_words(2 * pairs)
        # Top 53 bits of each word -> a double in [0, 1) with every value equally likely.
        # (int64 shifts are arithmetic, hence the mask.)
        uniform = ((words >> 11) & _MASK_53).to(torch.float64).mul_(_TWO_POW_MINUS_53)
        # 1 - u is exact for u on the 2^-53 grid and lies in (0, 1], so the log is finite.
        radius = torch.rsub(uniform[:pairs], 1.0).log_().mul_(-2.0).sqrt_()
        angle = uniform[pairs:].mul_(2.0 * math.pi)
        out = torch.empty(2 * pairs, dtype=torch.float64)
        torch.mul(radius, torch.cos(angle), out=out[:pairs])
        torch.mul(radius, torch.sin(angle), out=out[pairs:])
        return out[:count]

    def gaussian(self, shape: torch.Size, *, std: float, dtype: torch.dtype) -> torch.Tensor:
        count = math.prod(shape)
        return self.standard_normal(count).mul_(std).to(dtype).reshape(shape)

    def state(self) -> torch.Tensor | None:
        return None

    def load_state(self, state: torch.Tensor | None) -> None:
        """Nothing to restore: after a restart the noise continues under a fresh key."""


class TorchGaussian:
    """torch's seeded Mersenne Twister: reproducible and fast, not secure."""

    name = "insecure-torch-default"

    def __init__(self, *, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def gaussian(self, shape: torch.Size, *, std: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.normal(0.0, std, size=tuple(shape), generator=self._generator, dtype=dtype)

    def state(self) -> torch.Tensor | None:
        return self._generator.get_state()

    def load_state(self, state: torch.Tensor | None) -> None:
        if state is not None:
            self._generator.set_state(state)


@dataclass(frozen=True)
class NoiseSourceSpec:
    """How a ``privacy.noise_source`` name is built and where it may run."""

    build: Callable[[int], GaussianSource]  # seed -> source (the CSPRNG ignores the seed)
    allowed_off_simulated: bool


NOISE_SOURCES: dict[str, NoiseSourceSpec] = {
    "csprng": NoiseSourceSpec(build=lambda _seed: AesCtrGaussian(), allowed_off_simulated=True),
    "insecure-fast": NoiseSourceSpec(
        build=lambda seed: TorchGaussian(seed=seed), allowed_off_simulated=False
    ),
}
