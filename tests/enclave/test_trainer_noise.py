"""The CSPRNG Gaussian source and the Poisson sampler, checked statistically."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from cctrain_enclave.trainer.noise import AesCtrGaussian, TorchGaussian
from cctrain_enclave.trainer.sampling import SecretPoissonBatches, SeededPoissonBatches

KEY = bytes(range(32))


def test_csprng_gaussian_is_standard_normal():
    z = AesCtrGaussian.from_key_insecure_for_tests(KEY).standard_normal(300_000).numpy()
    # 300k samples: the standard error of the mean is 0.0018, of the variance 0.0026.
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1.0) < 0.015
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(stats.skew(z)) < 0.03
    assert abs(stats.kurtosis(z)) < 0.05
    # Both halves of each Box-Muller pair are normal, and uncorrelated with each other.
    half = len(z) // 2
    assert abs(np.corrcoef(z[:half], z[half : 2 * half])[0, 1]) < 0.01


def test_csprng_gaussian_scales_and_casts():
    source = AesCtrGaussian.from_key_insecure_for_tests(KEY)
    noise = source.gaussian(torch.Size([200, 500]), std=3.0, dtype=torch.float32)
    assert noise.shape == (200, 500)
    assert noise.dtype == torch.float32
    assert noise.std().item() == pytest.approx(3.0, rel=0.02)


def test_fixed_key_reproduces_and_the_stream_advances():
    a = AesCtrGaussian.from_key_insecure_for_tests(KEY)
    b = AesCtrGaussian.from_key_insecure_for_tests(KEY)
    first = a.standard_normal(1001)
    assert torch.equal(first, b.standard_normal(1001))
    assert not torch.equal(first, a.standard_normal(1001))  # no keystream reuse


def test_different_keys_and_fresh_sources_differ():
    other = AesCtrGaussian.from_key_insecure_for_tests(bytes(32)).standard_normal(1000)
    assert not torch.equal(
        AesCtrGaussian.from_key_insecure_for_tests(KEY).standard_normal(1000), other
    )
    # The production constructor draws a fresh key from os.urandom each time.
    assert not torch.equal(
        AesCtrGaussian().standard_normal(1000), AesCtrGaussian().standard_normal(1000)
    )
    assert AesCtrGaussian().state() is None  # the key is never checkpointed


def test_insecure_source_state_roundtrip():
    a = TorchGaussian(seed=3)
    state = a.state()
    first = a.gaussian(torch.Size([10]), std=1.0, dtype=torch.float32)
    a.load_state(state)
    assert torch.equal(first, a.gaussian(torch.Size([10]), std=1.0, dtype=torch.float32))


def _sampler(kind: str, rows: int, q: float, steps: int):
    if kind == "secret":  # a fixed key: deterministic, like every test here
        return SecretPoissonBatches(
            num_rows=rows, sample_rate=q, steps_per_epoch=steps, key=bytes(range(32))
        )
    return SeededPoissonBatches(num_rows=rows, sample_rate=q, steps_per_epoch=steps, seed=0)


@pytest.mark.parametrize("kind", ["secret", "seeded"])
def test_poisson_batches_are_independent_bernoulli(kind):
    rows, q, draws = 50, 0.1, 20_000
    sampler = _sampler(kind, rows, q, draws)
    counts = np.zeros(rows)
    sizes = []
    for batch in sampler.epoch_batches():
        assert len(set(batch.tolist())) == len(batch)  # no row twice in a batch
        counts[batch.numpy()] += 1
        sizes.append(len(batch))
    # Each row's inclusion frequency is q; the batch size is Binomial(rows, q).
    assert np.abs(counts / draws - q).max() < 0.01
    assert np.mean(sizes) == pytest.approx(rows * q, rel=0.02)
    assert np.var(sizes) == pytest.approx(rows * q * (1 - q), rel=0.05)
    assert stats.chisquare(counts).pvalue > 1e-3
    assert sizes.count(0) > 0  # empty batches happen (0.9^50 ~ 0.5%) and must be handled


def test_secret_sampler_rate_is_q_rounded_down_and_its_key_is_fresh():
    s = SecretPoissonBatches(num_rows=10, sample_rate=1 / 3, steps_per_epoch=3)
    assert s.realised_rate <= Fraction(1 / 3)
    assert Fraction(1 / 3) - s.realised_rate < Fraction(1, 1 << 64)
    assert s.state() == {}  # nothing to checkpoint: after a restart, a fresh key
    # Without a key each sampler draws its own: two never agree on 200 steps of 1000 rows.
    a, b = (
        SecretPoissonBatches(num_rows=1000, sample_rate=0.5, steps_per_epoch=200) for _ in range(2)
    )
    assert not all(
        torch.equal(x, y) for x, y in zip(a.epoch_batches(), b.epoch_batches(), strict=True)
    )
    full = SecretPoissonBatches(num_rows=7, sample_rate=1.0, steps_per_epoch=1)
    assert full.epoch_batches()[0].tolist() == list(range(7))


def test_secret_sampler_resumes_mid_epoch_with_only_the_steps_left():
    s = _sampler("secret", 100, 0.2, 5)
    assert len(s.epoch_batches(3)) == 2


def test_seeded_poisson_state_resumes_the_same_batches():
    a = SeededPoissonBatches(num_rows=100, sample_rate=0.2, steps_per_epoch=5, seed=7)
    a.epoch_batches()
    state = a.state()
    second = a.epoch_batches()
    b = SeededPoissonBatches(num_rows=100, sample_rate=0.2, steps_per_epoch=5, seed=999)
    b.load_state(state)
    assert all(torch.equal(x, y) for x, y in zip(second, b.epoch_batches(), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(second[2:], b_again(state), strict=True))


def b_again(state):
    c = SeededPoissonBatches(num_rows=100, sample_rate=0.2, steps_per_epoch=5, seed=0)
    c.load_state(state)
    return c.epoch_batches(2)
