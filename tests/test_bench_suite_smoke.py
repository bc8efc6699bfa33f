"""The benchmark suite's smallest configurations run and its report renders (no timing targets)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def benches() -> object:
    sys.path.insert(0, str(BENCH))
    import bench_attestation
    import bench_training
    import run_all

    return bench_training, bench_attestation, run_all


def test_training_and_report_smallest_config(benches: object, tmp_path: Path) -> None:
    bench_training, bench_attestation, run_all = benches  # type: ignore[misc]
    tiny = bench_training.Workload(
        "mlp-tiny", {"name": "mlp", "params": {"hidden": [8]}}, (16,), 1_200, 2, ("fast",)
    )
    training = bench_training.run(repeats=1, workloads=[tiny], log=lambda *_: None)
    ways = {r["way"] for r in training["results"]}
    assert ways == {"plain", "cctrain", "dp-fast"}
    assert all(r["steady_samples_per_s"] > 0 and r["steady_ratio"] > 0 for r in training["results"])

    attestation = bench_attestation.run(repeats=2, quick=True, fresh_repeats=1)
    results = {
        "machine": run_all.run_info(),
        "quick": True,
        "targets": run_all.TARGETS,
        "training": training,
        "attestation": attestation,
        "ingest": {},
        "e2e": {},
        "flower": {"skipped": "not in this smoke test"},
    }
    plots = run_all.render_plots(results, tmp_path)
    md = run_all.render_markdown(results, plots)
    assert "training.png" in plots and (tmp_path / "training.png").stat().st_size > 0
    assert "mlp-tiny: cctrain DP (fast) / plain, steady" in md
    assert "**met**" in md or "**missed**" in md
    if "skipped" not in attestation:
        assert "attestation: SEV-SNP report, certificates cached" in md
