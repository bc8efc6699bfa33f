"""A worker whose arithmetic is wrong (a fault, or code that is not what was attested):
rank 0 checks every reply against what the DP noise is calibrated to, so a clipped sum over n
rows with norm above n*C, or a non-finite one, stops the run instead of entering the model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cctrain.errors import CctrainError
from cctrain.policy import thaw
from tests.cluster.conftest import DP, cluster
from tests.consortium import make_consortium

torch = pytest.importorskip("torch")
from cctrain_enclave.cluster.parallel import Coordinator  # noqa: E402
from cctrain_enclave.trainer.train import TrainingRandomness, train  # noqa: E402

#: The worker's clipping, made wrong: its sums scaled (the bound) or poisoned (finiteness).
ROGUE = """
import sys
from cctrain_enclave.trainer import fastclip
real = fastclip.LinearClipper.clipped_gradient_sum
def rogue(self, loss, *, max_grad_norm):
    return [(p, g * {factor}) for p, g in real(self, loss, max_grad_norm=max_grad_norm)]
fastclip.LinearClipper.clipped_gradient_sum = rogue
from cctrain_enclave.cli import main
sys.argv = ["cctrain-enclave", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize(
    ("factor", "match"),
    [("10.0", "more than the bound"), ("float('nan')", "non-finite gradient sums")],
    ids=["scaled", "nan"],
)
def test_a_worker_whose_sums_break_the_bound_stops_the_run(
    tmp_path: Path, factor: str, match: str
) -> None:
    c = make_consortium(
        tmp_path / "c",
        training={
            "model": {"name": "logreg"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": 16,
        },
        privacy=DP,
        cluster={"ranks": 2, "timeout_s": 20},
    )

    def rogue(rank: int, argv: list[str]) -> list[str]:
        return [sys.executable, "-c", ROGUE.format(factor=factor), *argv[3:]]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    policy = c.signed.policy
    with cluster(policy, c.policy_path, tmp_path, worker_argvs=rogue) as (session, _):
        with pytest.raises(CctrainError, match=match):
            train(
                x,
                y,
                num_classes=2,
                training=thaw(policy.training),
                privacy=thaw(policy.privacy),
                simulated_platform=True,
                checkpoint=None,
                progress=None,
                randomness=TrainingRandomness.fixed_for_tests(1),
                cluster=Coordinator(session),
            )
