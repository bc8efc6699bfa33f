"""Run the command lines as a user does: a fresh interpreter, real argv, real exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The banner a command prints for --allow-simulated (a warning, not an error).
SIMULATED_BANNER = "WARNING: accepting SIMULATED attestation."

#: Hides the trainer's libraries from an interpreter, as on a host installed without the
#: ``enclave`` extra (nothing is uninstalled): run as ``python -c HIDE_TRAINER ENTRY ARGS...``.
HIDE_TRAINER = """
import runpy, sys

class HideTrainer:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "opacus", "safetensors"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, HideTrainer())
for name in [m for m in sys.modules if m.split(".")[0] in ("torch", "opacus", "safetensors")]:
    del sys.modules[name]
entry = sys.argv.pop(1)
runpy.run_module(entry, run_name="__main__", alter_sys=True)
"""


def environment(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment, with the SDK's state (resume files, receipts) under ``home``."""
    return dict(os.environ, CCTRAIN_HOME=str(home), **extra)


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout
    )


def run_module(
    module: str,
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    hide_trainer: bool = False,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """``python -m module args...`` (with ``hide_trainer``: as if torch were not installed)."""
    prefix = ["-c", HIDE_TRAINER] if hide_trainer else ["-m"]
    return run([sys.executable, *prefix, module, *args], cwd=cwd, env=env, timeout=timeout)


def cctrain(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_module("cctrain.cli", *args, cwd=cwd, **kw)


def cctrain_enclave(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_module("cctrain_enclave", *args, cwd=cwd, **kw)


def error_lines(stderr: str) -> list[str]:
    """What a failed command said on stderr, less the --allow-simulated banner. The contract:
    one ``error: ...`` line, then (for a policy) only its problems, one ``  - ...`` line each."""
    return [line for line in stderr.splitlines() if not line.startswith(SIMULATED_BANNER)]


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """Exit status ``code`` and one clear error line (no traceback, no parser exception
    text); return that line."""
    where = f"argv={proc.args!r}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    assert proc.returncode == code, where
    lines = error_lines(proc.stderr)
    assert lines, where
    assert lines[0].startswith("error: "), where
    assert all(line.startswith("  - ") for line in lines[1:]), where
    for text in ("Traceback", "KeyError", "TOMLDecodeError", "JSONDecodeError", "Usage:"):
        assert text not in proc.stderr, where
    return lines[0]
