"""The end-to-end benchmark's smallest configuration runs (numbers only, no timing targets)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_e2e.py"


@pytest.mark.timeout(60)
def test_bench_e2e_two_parties_quick_produces_positive_phase_times(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_e2e", bench)
    spec.loader.exec_module(bench)

    result = bench.run(parties=[2], repeats=1, quick=True, workdir=tmp_path)

    (res,) = result["results"]
    assert res["parties"] == 2
    assert set(res["phases_s"]) == set(bench.PHASES)
    for phase, seconds in res["phases_s"].items():
        assert seconds > 0, phase
    assert res["total_s"] > 0
