"""Multi-rank training is single-process training: the same DP-SGD steps on the same sampled
batches (float tolerance: only the order of a sum differs), the same ε; and without DP the
same mean-gradient steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.policy import thaw
from tests.cluster.conftest import DP, cluster
from tests.consortium import make_consortium

torch = pytest.importorskip("torch")
from cctrain_enclave.cluster.parallel import Coordinator, partition  # noqa: E402
from cctrain_enclave.trainer.train import TrainingRandomness, train  # noqa: E402

TRAINING = {
    "model": {"name": "mlp", "params": {"hidden": [16]}},
    "optimizer": {"name": "sgd", "lr": 0.2},
    "epochs": 2,
    "batch_size": 32,
    "seed": 5,
}


def _data(rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    return x, (x[:, 0] - x[:, 2] > 0).astype(np.int64)


def _train(policy: Any, cluster_: Any = None) -> Any:
    """The policy's own (normalised) plan: what rank 0 sends and every worker checks against
    its own signed copy."""
    x, y = _data()
    return train(
        x,
        y,
        num_classes=2,
        training=thaw(policy.training),
        privacy=thaw(policy.privacy),
        simulated_platform=True,
        checkpoint=None,
        progress=None,
        randomness=TrainingRandomness.fixed_for_tests(3),
        cluster=cluster_,
    )


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("privacy", [DP, {"enabled": False}], ids=["dp", "plain"])
def test_multi_rank_training_equals_one_rank(
    tmp_path: Path, ranks: int, privacy: dict[str, Any]
) -> None:
    c = make_consortium(
        tmp_path / "c", training=TRAINING, privacy=privacy, cluster={"ranks": ranks}
    )
    with cluster(c.signed.policy, c.policy_path, tmp_path) as (session, procs):
        multi = _train(c.signed.policy, Coordinator(session))
    for p in procs:
        out = p.output  # type: ignore[attr-defined]
        assert p.returncode == 0, out[-2000:]
        assert "run done" in out
    single = _train(c.signed.policy)
    assert multi.metrics["steps"] == single.metrics["steps"] > 0
    assert multi.metrics["samples"] == single.metrics["samples"]
    for k, v in single.state_dict.items():
        assert torch.allclose(multi.state_dict[k], v, atol=1e-5, rtol=0), k
    if privacy["enabled"]:
        assert multi.dp_certificate["epsilon"] == single.dp_certificate["epsilon"]
        assert multi.dp_certificate["sample_rate"] == single.dp_certificate["sample_rate"]


def test_partition_covers_every_row_once() -> None:
    for n in (0, 1, 7, 400):
        for w in (1, 2, 3, 5):
            parts = partition(n, w)
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))


@pytest.mark.parametrize("mode", ["auto", "fast"])
def test_a_cluster_plan_check_accepts_the_cnn_with_fast_clipping(tmp_path: Path, mode: str) -> None:
    """A cluster runs cctrain's fast clipping only (a plan naming Opacus's modes is refused when
    the policy is checked). The registry CNN (Conv2d + GroupNorm) has fast rules now, so the
    plan check (the enclave's at start, `cctrain policy check`'s) finds nothing against it."""
    from cctrain_enclave.trainer.precheck import check_training_plan

    c = make_consortium(
        tmp_path / "c",
        data={
            "formats": ["npz"],
            "features": {"shape": [1, 8, 8], "dtype": "float32"},
            "labels": {"num_classes": 2},
            "max_rows": 1000,
            "max_bytes": 1 << 20,
        },
        training={
            "model": {"name": "cnn"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": 16,
        },
        privacy=DP | {"grad_sample_mode": mode},
        cluster={"ranks": 2},
    )
    problems = check_training_plan(
        c.signed.policy, custom_model_source=None, simulated_platform=True
    )
    assert problems == []
