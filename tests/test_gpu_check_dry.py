"""benchmarks/gpu_check.sh: its dry run (the same script on the CPU, tiny sizes) runs in CI so
the GPU machine's one command cannot rot; without CUDA the real run refuses clearly."""

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
WAYS = ("plain", "cctrain", "dp-fast", "dp-hooks")


def _run(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out))
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, text=True, capture_output=True, timeout=180
    )


def test_dry_run_collects_the_device_tests_and_prints_every_ratio(tmp_path: Path) -> None:
    proc = _run("--dry-run", out=tmp_path / "g.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "gpu_check: [1/2] device tests: collected only" in lines
    assert any(" tests collected" in line for line in lines), proc.stdout
    assert "gpu_check: [2/2] training benchmark" in lines
    plain = next(line for line in lines if line.strip().startswith("plain"))
    assert "(1.000x)" in plain  # the baseline against itself
    for way in WAYS:
        assert any(line.strip().startswith(way) and "x)" in line for line in lines), way
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["device"] == "cpu"
    assert {r["way"] for r in doc["results"]} == set(WAYS)
    assert all(r["steady_ratio"] > 0 for r in doc["results"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_real_run_without_cuda_says_so(tmp_path: Path) -> None:
    proc = _run(out=tmp_path / "g.json")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"gpu_check: no CUDA device here: torch {torch.__version__} is "), line
    assert not (tmp_path / "g.json").exists()
    for bad in (("--bogus",), ("--dry-run", "--bogus")):
        proc = _run(*bad, out=tmp_path / "g.json")
        assert proc.returncode == 2 and "usage: benchmarks/gpu_check.sh" in proc.stderr
