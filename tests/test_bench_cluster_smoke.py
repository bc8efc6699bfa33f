"""The cluster benchmark's smallest configuration runs end to end (1, 2 sealed, 2 plain and 3
ranks, real worker processes) and its report renders; no timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytest.importorskip("torch")


def test_cluster_benchmark_smallest_config() -> None:
    sys.path.insert(0, str(BENCH))
    import bench_cluster

    out = bench_cluster.run(quick=True, repeats=1, rows=600)
    assert set(out["samples_per_s"]) == {"1", "2", "2-plain", "3"}
    assert all(d < 1e-4 for d in out["max_param_diff_to_one_rank"].values())
    assert "sealed / plain links" in bench_cluster.report(out)
    assert set(out["step_ms"]) == set(out["samples_per_s"])
