"""Batch selection is secret: replaying the sampler from everything public (the signed policy,
the manifest, the receipts' row order) does not reproduce the batches a real enclave trained
on, and two runs of the same policy sample differently.

The pinned custom model records the row ids of every batch it sees (feature 0 is the id), so
the test compares what the trainer did with what an observer can compute. The positive
control is the ``insecure-fast`` source (simulated only), which samples from the public seed:
there the replay reproduces every batch, so a replay that fails is evidence, not a bug.

Thresholds: 90 rows, q = 1/3, 12 steps. Under secret sampling each recorded membership is
in the replayed batch independently with probability 1/3; the test fails if more than 60%
are (Hoeffding: P ≤ exp(-2·n·0.267²) < 1e-20 for the n ≈ 360 memberships). A step with an
empty batch has probability (2/3)^90 < 2e-16.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cctrain.release import unb64
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.trainer.sampling import SeededPoissonBatches
from tests.consortium import PROVIDERS
from tests.dp.conftest import ID_BASE, ROWS_PER_PARTY, DpRun, dp_privacy, run_dp


def replay_from_public(run: DpRun) -> list[list[int]]:
    """The batches an observer computes from the policy's seed and the receipts' order."""
    policy = run.consortium.signed.policy
    training = policy.training
    order = []
    for r in run.manifest["receipts"]:
        body = pb.ReceiptBody()
        body.ParseFromString(unb64(r["body"]))
        order.append(body.party_id)
    ids = np.concatenate(
        [ID_BASE + PROVIDERS.index(p) * ROWS_PER_PARTY + np.arange(ROWS_PER_PARTY) for p in order]
    )
    steps_per_epoch = math.ceil(len(ids) / int(training["batch_size"]))
    planner = SeededPoissonBatches(
        num_rows=len(ids),
        sample_rate=1 / steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        seed=int(training["seed"]),
    )
    batches = []
    for _ in range(int(training["epochs"])):
        batches += [sorted(ids[b.numpy()].tolist()) for b in planner.epoch_batches()]
    return batches


def agreement(actual: list[list[int]], predicted: list[list[int]]) -> float:
    """The share of the rows the trainer used that the prediction put in the same step."""
    assert len(actual) == len(predicted) == 12
    hits = sum(len(set(a) & set(p)) for a, p in zip(actual, predicted, strict=True))
    return hits / sum(len(a) for a in actual)


def test_public_seed_reproduces_insecure_batches_exactly(tmp_path: Path) -> None:
    """Positive control: with sampling from the public seed, the replay is exact."""
    run = run_dp(tmp_path, privacy=dp_privacy(noise_source="insecure-fast"))
    assert run.manifest["dp_certificate"]["sampling"] == "insecure-seeded-poisson"
    assert run.recorded_batches() == replay_from_public(run)


def test_secret_batches_are_not_reproducible_from_anything_public(tmp_path: Path) -> None:
    first = run_dp(tmp_path / "one", privacy=dp_privacy())
    cert = first.manifest["dp_certificate"]
    assert cert["sampling"] == "csprng-aes256ctr-poisson"
    assert cert["noise_source"] == "csprng-aes256ctr-gaussian"
    actual = first.recorded_batches()
    # Poisson at the certified rate: 12 steps × 90 rows × 1/3 = 360 memberships (σ ≈ 15.5).
    assert abs(sum(len(b) for b in actual) - 360) < 120
    assert agreement(actual, replay_from_public(first)) < 0.6

    # The same policy run again samples afresh: nothing about the batches is in the policy.
    second = run_dp(tmp_path / "two", privacy=dp_privacy())
    assert replay_from_public(second) == replay_from_public(first)  # same public record
    assert agreement(second.recorded_batches(), actual) < 0.6
