"""The tutorials (docs/tutorial-*.md) run as written: every command of their code blocks, in
order, as a new user types them (the ``cctrain`` command in a shell, a fresh interpreter each),
against the simulated enclave the page starts. The commands are read from the pages, so a page
and this test cannot drift apart.

The only rewrite: ``HOST:PORT`` becomes the address the enclave wrote to its endpoint file. The
``enclave serve`` line runs in the background (the pages say: a second terminal), and is
stopped at the end. Each page runs in its own directory with its own enclave.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli_process import environment
from tests.conftest import REPO
from tests.test_readme import readme_blocks

TUTORIAL = REPO / "docs" / "tutorial-consortium.md"
SERVE = "cctrain enclave serve "


def _steps(page: Path = TUTORIAL) -> list[tuple[str, str]]:
    """(language, code) of every command of the page: one per console line, one per
    python block."""
    out: list[tuple[str, str]] = []
    for b in readme_blocks(page.read_text()):
        if b.language == "python":
            out.append(("python", b.code))
            continue
        for line in b.code.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(("console", line.strip()))
    return out


def test_the_page_has_the_whole_sequence() -> None:
    commands = [code.split(" --")[0] for lang, code in _steps() if lang == "console"]
    for expected in (
        "cctrain keygen hospital-a",
        "cctrain policy init",
        "cctrain policy add-party hospital-a",
        "cctrain policy check policy.toml",
        "cctrain policy sign policy.toml",
        "cctrain policy merge hospital-a.signed.json research-lab.signed.json -o policy.signed.json",
        "cctrain policy verify policy.signed.json",
        "cctrain enclave serve",
        "cctrain upload hospital-a.npz",
        "cctrain release fetch",
    ):
        assert any(c.startswith(expected) for c in commands), expected


def run_page(page: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Run every step of ``page`` in a fresh directory; return it and each console command's
    stdout, keyed by the command up to its first option."""
    work = tmp_path / "work"
    work.mkdir()
    shim = tmp_path / "bin" / "cctrain"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cctrain.cli "$@"\n')
    shim.chmod(0o755)
    env = environment(tmp_path / "home", PATH=f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    server: subprocess.Popen[bytes] | None = None
    address = ""
    outputs: dict[str, str] = {}
    try:
        for lang, code in _steps(page):
            if lang == "python":
                argv = [sys.executable, "-c", code]
            elif code.startswith(SERVE):
                assert server is None, "the page starts the enclave twice"
                state = work / shlex.split(code)[shlex.split(code).index("--state-dir") + 1]
                with open(tmp_path / "enclave.log", "wb") as log:
                    server = subprocess.Popen(
                        ["/bin/sh", "-c", f"exec {code}"],
                        cwd=work,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                deadline = time.monotonic() + 120
                while not (state / "endpoint.json").exists():
                    assert server.poll() is None, (tmp_path / "enclave.log").read_text()
                    assert time.monotonic() < deadline, "the enclave did not start"
                    time.sleep(0.05)
                address = json.loads((state / "endpoint.json").read_text())["address"]
                continue
            else:
                if "HOST:PORT" in code:
                    assert address, f"{code}: the page uses HOST:PORT before it starts the enclave"
                    code = code.replace("HOST:PORT", address)
                argv = ["/bin/sh", "-c", code]
            proc = subprocess.run(
                argv, cwd=work, env=env, text=True, capture_output=True, timeout=300
            )
            assert proc.returncode == 0, f"{code}\n{proc.stdout}\n{proc.stderr}"
            outputs[code.split(" --")[0]] = proc.stdout
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return work, outputs


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    work, outputs = run_page(TUTORIAL, tmp_path)
    measurement = (work / "measurement.txt").read_text().strip()
    assert re.fullmatch("[0-9a-f]{96}", measurement), measurement
    # the page's edit applied: the policy the enclave served (and the party attested) pins it
    assert f'measurements = ["{measurement}"]' in (work / "policy.toml").read_text()
    assert "status:  complete" in outputs["cctrain policy verify policy.signed.json"]
    assert (work / "release" / "model.safetensors").is_file()
    assert (work / "release" / "release.json").is_file()


def test_the_data_owner_tutorial_runs_as_written(tmp_path: Path) -> None:
    work, outputs = run_page(REPO / "docs" / "tutorial-data-owner.md", tmp_path)
    assert "providers_missing: hospital-b" in outputs["cctrain status"]
    assert "shard=hospital-a-draft" in outputs["cctrain withdraw"]
    assert "approved; approvals so far: hospital-a" in outputs["cctrain release approve"]
    journal = outputs["cctrain audit"]
    assert "shard withdrawn hospital-a/hospital-a-draft" in journal
    assert "phase: released" in journal
    assert (work / "journal.log").is_file()
    assert (work / "draft.deletion.json").is_file()
    # This policy has no DP: its grant has no bound, which the ledger says.
    budget = outputs["cctrain ledger budget hospital-a.npz"]
    assert "lifetime budget of hospital-a.npz" in budget, budget
    assert "granted so far: unbounded (no DP)" in budget, budget
    assert "ε granted unbounded (no DP), budget 8" in outputs["cctrain ledger"]


def test_the_recipient_tutorial_runs_as_written(tmp_path: Path) -> None:
    work, outputs = run_page(REPO / "docs" / "tutorial-recipient.md", tmp_path)
    assert "verified and unsealed" in outputs["cctrain release fetch"]
    assert "release verified and unsealed" in outputs["cctrain release verify release/release.json"]
    assert (work / "model-again.safetensors").read_bytes() == (
        work / "release" / "model.safetensors"
    ).read_bytes()


def test_the_auditor_tutorial_runs_as_written(tmp_path: Path) -> None:
    work, outputs = run_page(REPO / "docs" / "tutorial-auditor.md", tmp_path)
    assert "phase: released" in outputs["cctrain audit"]
    assert "release verified" in outputs["cctrain release verify release/release.json"]
    live = outputs["cctrain attest verify evidence/evidence.bin"]
    assert live.startswith("VERIFIED (simulated)")
    assert "verify it offline with:" in outputs["cctrain attest enclave"]
    assert sorted(p.name for p in (work / "evidence").iterdir()) == ["cert-0.der", "evidence.bin"]
    released = outputs["cctrain attest verify release-evidence.bin"]
    assert released.startswith("VERIFIED (simulated)")
    # The same enclave: the live evidence and the release's carry one measurement.
    measurement = [line for line in live.splitlines() if "measurement:" in line]
    assert measurement and measurement[0] in released.splitlines()
    assert (work / "journal.log").read_bytes() == (
        work / "enclave-state" / "journal.log"
    ).read_bytes()
