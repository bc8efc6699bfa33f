"""benchmarks/gpu_check.sh: its dry run (the same script, on the CPU, one tiny workload) runs in
CI so the GPU machine's one command cannot rot; without CUDA the real run refuses clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
torch = pytest.importorskip("torch")


def _run(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out))
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, text=True, capture_output=True, timeout=180
    )


def test_dry_run_prints_every_ratio(tmp_path: Path) -> None:
    proc = _run("--dry-run", out=tmp_path / "g.json")
    assert proc.returncode == 0, proc.stderr
    for way in ("plain", "cctrain", "dp-fast", "dp-hooks"):
        assert any(
            line.strip().startswith(way) and "x)" in line for line in proc.stdout.splitlines()
        ), way
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["device"] == "cpu"
    assert {r["way"] for r in doc["results"]} == {"plain", "cctrain", "dp-fast", "dp-hooks"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_real_run_without_cuda_says_so(tmp_path: Path) -> None:
    proc = _run(out=tmp_path / "g.json")
    assert proc.returncode == 1
    assert "no CUDA device here" in proc.stderr
    assert _run("--bogus", out=tmp_path / "g.json").returncode == 2
