"""The ingest benchmark's smallest configuration runs end to end (numbers only, no targets)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ingest.py"


@pytest.mark.timeout(60)
def test_bench_ingest_smallest_config_produces_numbers(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_ingest", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_ingest", bench)
    spec.loader.exec_module(bench)

    result = bench.run(sizes_mib=[4], owners=[1], repeats=1, workdir=tmp_path)

    assert result["machine"]["cpu_count"] >= 1
    (res,) = result["results"]
    assert res["shard_bytes"] > 3 << 20
    assert res["cctrain_mbps"] > 0
    assert res["plain_mbps"] > 0
    assert res["ratio"] > 0
    if Path("/proc/self/status").exists():
        assert res["enclave_peak_rss_bytes"] > 0
    assert set(res["targets_met"]) == {
        "ratio>=0.6",
        "cctrain>=300MB/s@>=1024MiB",
        "of_bound>=90%",
        "peak_rss<2x_shard@>=64MiB",
    }
