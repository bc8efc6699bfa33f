"""``./dev bench`` writes to an untracked folder unless asked to publish: a local run (a
``--quick`` one above all) must never overwrite the committed ``benchmarks/results/latest.*``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return run_all


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def test_the_default_is_the_local_folder_and_publish_the_committed_one(run_all: ModuleType) -> None:
    assert run_all.results_dir(None, publish=False) == ROOT / "benchmarks/results/local"
    assert run_all.results_dir(None, publish=True) == ROOT / "benchmarks/results"
    assert run_all.results_dir(Path("/x"), publish=False) == Path("/x")
    with pytest.raises(SystemExit, match="--out and --publish"):
        run_all.results_dir(Path("/x"), publish=True)


def test_the_default_folder_is_ignored_and_holds_nothing_tracked(run_all: ModuleType) -> None:
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    local = run_all.results_dir(None, publish=False)
    for name in ("latest.json", "latest.md", "training.png"):
        path = str((local / name).relative_to(ROOT))
        assert _git("check-ignore", "-q", path).returncode == 0, f"{path} is not git-ignored"
    assert _git("ls-files", str(local.relative_to(ROOT))).stdout == ""
    published = run_all.results_dir(None, publish=True) / "latest.json"
    assert _git("ls-files", "--error-unmatch", str(published.relative_to(ROOT))).returncode == 0
