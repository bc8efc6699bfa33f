"""The model-owner demo, as `./dev demo model-owner` runs it: every party a process, the model
owner alone receives the weights, and the referee's table shows the joint model ahead."""

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
def test_model_owner_demo_runs(tmp_path: Path) -> None:
    work = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "model_owner" / "demo.py"),
            "--workdir",
            str(work),
        ],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hospital-a tries too: exit 1" in proc.stdout
    rows = json.loads((work / "results.json").read_text())
    joint = rows[-1]
    assert joint["model"] == "joint, in the enclave"
    assert set(joint["metrics"]) == {
        "train_accuracy",
        "val_accuracy",
        "val_loss",
        "val_brier",
        "steps",
    }
    assert joint["accuracy"] >= max(r["accuracy"] for r in rows[1:-1])
    # The package never reached the enclave's disk in plain text.
    marker = b"the model owner's secret"  # not in the source: take a line that is
    source = (REPO / "examples" / "model_owner" / "plan" / "layers.py").read_bytes()
    line = next(ln for ln in source.splitlines() if b"GatedNet" in ln)
    for path in (work / "enclave-state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert line not in data and marker not in data, path
