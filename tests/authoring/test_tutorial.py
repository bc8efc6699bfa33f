"""The tutorials (docs/tutorial-*.md) run as written: every command of their code blocks, in
order, as a new user types them (the ``cctrain`` command in a shell, a fresh interpreter each),
against the simulated enclave the page starts. The commands are read from the pages, so a page
and this test cannot drift apart.

The only rewrite: ``HOST:PORT`` becomes the address the enclave wrote to its endpoint file. The
``enclave serve`` line runs in the background (the pages say: a second terminal), and is
stopped at the end. Each page runs in its own directory with its own enclave.

Every command must exit 0, except one right after a ``# expect: exit N`` comment line in a
console block (a refusal the page shows): that one must exit N.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cctrain.policy import SignedPolicy, thaw
from tests.cli_process import environment
from tests.conftest import REPO
from tests.test_readme import readme_blocks

TUTORIAL = REPO / "docs" / "tutorial-consortium.md"
SERVE = "cctrain enclave serve "
EXPECT = re.compile(r"#\s*expect:\s*exit\s+(\d+)\s*$")


def _steps(page: Path = TUTORIAL) -> list[tuple[str, str, int]]:
    """(language, code, expected exit status) of every command of the page: one per console
    line, one per python block. A console comment ``# expect: exit N`` sets the status of the
    command right after it (0 for every other)."""
    out: list[tuple[str, str, int]] = []
    for b in readme_blocks(page.read_text()):
        if b.language == "python":
            out.append(("python", b.code, 0))
            continue
        expected: int | None = None
        for line in b.code.splitlines():
            text = line.strip()
            if not text:
                continue
            if text.startswith("#"):
                if (m := EXPECT.match(text)) is not None:
                    assert expected is None, f"{page.name}: two '# expect' lines in a row"
                    expected = int(m[1])
                continue
            out.append(("console", text, 0 if expected is None else expected))
            expected = None
        assert expected is None, f"{page.name}: '# expect' with no command after it"
    return out


def test_the_page_has_the_whole_sequence() -> None:
    commands = [code.split(" --")[0] for lang, code, _ in _steps() if lang == "console"]
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
    stdout (stdout and stderr for one expected to fail), keyed by the command up to its first
    option."""
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
        for lang, code, expected in _steps(page):
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
            assert proc.returncode == expected, (
                f"{code}\nexit {proc.returncode}, want {expected}\n{proc.stdout}\n{proc.stderr}"
            )
            outputs[code.split(" --")[0]] = proc.stdout + (proc.stderr if expected else "")
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


def test_an_expected_exit_status_is_checked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n# a comment\ntrue\n# expect: exit 1\nfalse\ntrue\n```\n"
        "```console\n# expect: exit 1\ntrue\n```\n"
    )
    assert [(code, rc) for _, code, rc in _steps(page)] == [
        ("true", 0),
        ("false", 1),
        ("true", 0),
        ("true", 1),
    ]
    # The last step exits 0 where the page expects 1: the page fails, naming it.
    with pytest.raises(AssertionError, match="exit 0, want 1"):
        run_page(page, tmp_path)
    (tmp_path / "again").mkdir()
    page.write_text("```console\nfalse\n```\n")  # and an unexpected failure fails too
    with pytest.raises(AssertionError, match="exit 1, want 0"):
        run_page(page, tmp_path / "again")
    page.write_text("```console\ntrue\n# expect: exit 1\n```\n")
    with pytest.raises(AssertionError, match="no command after it"):
        _steps(page)


def test_the_model_owner_tutorial_runs_as_written(tmp_path: Path) -> None:
    work, outputs = run_page(REPO / "docs" / "tutorial-model-owner.md", tmp_path)
    package_sha = hashlib.sha256((work / "model.pkg").read_bytes()).hexdigest()
    assert (
        f'package_sha256 = "{package_sha}"' in outputs["cctrain model package my-plan -o model.pkg"]
    )
    pinned = outputs["cctrain policy pin-package policy.toml model.pkg"]
    assert f"REPLACE-sha256-of-the-package -> {package_sha}" in pinned
    # The signed policy pins that package, provided by the model owner, released to it alone.
    policy = SignedPolicy.load(work / "policy.signed.json").policy
    model = thaw(policy.training)["model"]
    assert (model["name"], model["provider"], model["package_sha256"]) == (
        "package",
        "model-owner",
        package_sha,
    )
    assert list(thaw(policy.release)["recipients"]) == ["model-owner"]
    assert "status:  complete" in outputs["cctrain policy verify policy.signed.json"]
    assert (
        f"party=model-owner model package sha256={package_sha}"
        in (outputs["cctrain model upload model.pkg"])
    )
    receipt = json.loads((work / "model.receipt.json").read_text())
    assert (receipt["party_id"], receipt["shard_id"], receipt["rows"]) == (
        "model-owner",
        "model-package",
        0,
    )
    assert receipt["package_sha256"] == package_sha
    # Before the package came, the hospitals' rows were in and the run waited for it.
    assert "phase: collecting" in outputs["cctrain status"]
    assert "providers_missing: model-owner" in outputs["cctrain status"]
    # The release: the signed manifest names the package; the weights are sealed to the owner.
    bundle = json.loads((work / "release" / "release.json").read_text())
    manifest = json.loads(base64.b64decode(bundle["manifest"]))
    assert manifest["model"]["package_sha256"] == package_sha
    assert manifest["recipients"] == ["model-owner"]
    assert bundle["recipient"] == "model-owner"
    assert "release verified and unsealed" in outputs["cctrain release verify release/release.json"]
    assert (work / "model-again.safetensors").read_bytes() == (
        work / "release" / "model.safetensors"
    ).read_bytes()

    # A hospital's fetch is refused (exit 1, checked by run_page) and writes nothing.
    refused = outputs["cctrain release fetch"]
    assert "'hospital-a' is not a recipient of this policy" in refused, refused
    assert not (work / "hospital-a-release" / "model.safetensors").exists()
