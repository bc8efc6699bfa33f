"""`./dev demo --ranks 2` as a user runs it: the three-hospital demo on 2 enclave ranks, each
its own process; the release lists both ranks' evidence and the table is the one-rank one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.mark.slow
def test_the_demo_runs_on_two_ranks(tmp_path: Path) -> None:
    work = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "three_hospitals" / "demo.py"),
            "--ranks",
            "2",
            "--no-dp",
            "--workdir",
            str(work),
        ],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the release manifest lists 2 rank evidences" in proc.stdout
    manifest = json.loads((work / "research-lab" / "release" / "manifest.json").read_text())
    assert [m["rank"] for m in manifest["cluster"]["members"]] == [0, 1]
    rows = json.loads((work / "results.json").read_text())
    joint = next(r for r in rows if r["model"] == "joint (no DP)")
    assert joint["accuracy"] > max(r["accuracy"] for r in rows if r["model"].endswith("alone"))
