"""The README's code runs as shown, so it cannot rot.

Every fenced ``python`` and ``console`` block of README.md is either run here, against a real
simulated enclave on a loopback port, or marked ``<!-- not-tested: reason -->`` on the line
before it; the marked ones are listed in NOT_TESTED (so marking one is a visible change here)
and each shows up as a skip with its reason.

What runs is the README's text with only these rewrites, each checked to apply:

* ``HOST:PORT`` (CLI) and ``"10.0.0.5:7443"`` (SDK) become the local enclave's address;
* ``--allow-simulated`` (CLI) and ``allow_simulated=True`` (SDK) are added where the
  enclave's evidence is verified, as the README says to for the local simulated TEE.

Between commands the test plays the other parties (their keys, their signatures, their
uploads) and the operator (the enclave, started on the simulated platform).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cctrain.client import SimulatedEvidenceWarning
from cctrain.crypto.keys import PartyKeys
from cctrain.policy import SignedPolicy
from tests.cli_process import cctrain, environment
from tests.conftest import REPO
from tests.consortium import Consortium, make_consortium, running_enclave
from tests.ingest.conftest import make_owner, write_shard

README = REPO / "README.md"
CODE_LANGUAGES = frozenset({"python", "console", "bash", "sh", "shell"})
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_TESTED_MARKER = re.compile(r"^<!-- not-tested: (.+) -->$")


@dataclass(frozen=True)
class Block:
    heading: str  # the section it is in
    index: int  # its place among the code blocks of that section
    language: str
    line: int  # of the opening fence
    code: str
    not_tested: str | None  # the marker's reason

    @property
    def key(self) -> tuple[str, int]:
        return (self.heading, self.index)

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.heading!r} block {self.index})"


def readme_blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    counts: dict[str, int] = {}
    heading, i = "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        language = fence[1]
        if language in CODE_LANGUAGES:
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_TESTED_MARKER.match(before.strip())
            index = counts.get(heading, 0)
            counts[heading] = index + 1
            blocks.append(
                Block(
                    heading=heading,
                    index=index,
                    language=language,
                    line=i + 1,
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    not_tested=marker[1] if marker else None,
                )
            )
        i = end + 1
    return blocks


CLI = "As a consortium (CLI)"
CLI_SETUP, CLI_SESSION, CLI_LEDGER = (CLI, 0), (CLI, 2), (CLI, 4)
OWNER, RECIPIENT_SDK, AUDITOR = (
    ("As a data owner (Python SDK)", 0),
    ("As a recipient (Python SDK)", 0),
    ("As an auditor (any party)", 0),
)
#: The blocks the tests below run.
RUN = frozenset({CLI_SETUP, CLI_SESSION, CLI_LEDGER, OWNER, RECIPIENT_SDK, AUDITOR})
#: The blocks marked not-tested, on purpose (the marker in README.md says why).
NOT_TESTED = [
    ("Quick start", 0),
    (CLI, 1),
    (CLI, 3),
    ("The state key and `cctrain unlock`", 0),
]


def block(key: tuple[str, int]) -> Block:
    found = [b for b in readme_blocks() if b.key == key]
    assert len(found) == 1, f"README.md has no code block {key}; update tests/test_readme.py"
    return found[0]


def test_every_code_block_is_run_or_marked_not_tested() -> None:
    blocks = readme_blocks()
    neither = [b.where for b in blocks if b.not_tested is None and b.key not in RUN]
    assert not neither, f"run these in tests/test_readme.py, or mark them not-tested: {neither}"
    both = [b.where for b in blocks if b.not_tested is not None and b.key in RUN]
    assert not both, f"marked not-tested, but run: {both}"
    assert RUN <= {b.key for b in blocks}, "a block this test runs is gone from README.md"
    marked = [b.key for b in blocks if b.not_tested is not None]
    assert marked == NOT_TESTED, "the not-tested blocks changed: update NOT_TESTED, on purpose"


def test_the_block_parser() -> None:
    text = (
        "# A\n```python\nx = 1\n```\n```\nnot code\n```\n## B\n\n"
        "<!-- not-tested: why -->\n\n```console\ncctrain measure\n```\n```python\ny\n```\n"
    )
    got = [(b.key, b.language, b.line, b.code, b.not_tested) for b in readme_blocks(text)]
    assert got == [
        (("A", 0), "python", 2, "x = 1\n", None),
        (("B", 0), "console", 12, "cctrain measure\n", "why"),
        (("B", 1), "python", 15, "y\n", None),
    ]


@pytest.mark.parametrize(
    "marked", [b for b in readme_blocks() if b.not_tested], ids=lambda b: f"line{b.line}"
)
def test_not_tested(marked: Block) -> None:
    pytest.skip(f"{marked.where}: not-tested: {marked.not_tested}")


# --------------------------------------------------------------------------- the CLI blocks

HOST_PORT = "HOST:PORT"
OTHER_PARTIES = ("hospital-b", "hospital-c", "research-lab")


def commands(b: Block) -> list[str]:
    """The block's command lines, without their comments."""
    out = []
    for line in b.code.splitlines():
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            out.append(command)
    return out


def on_the_local_enclave(command: str, address: str) -> str:
    assert HOST_PORT in command or command.startswith(
        ("cctrain release verify", "cctrain audit")
    ), command
    return command.replace(HOST_PORT, address) + " --allow-simulated"


def _digits_like_shard(path: Path, seed: int) -> Path:
    """Rows the example policy takes (64 features, 10 classes)."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        features=rng.normal(size=(120, 64)).astype(np.float32),
        labels=rng.integers(0, 10, size=120).astype(np.int64),
    )
    return path


def _write_example_policy(work: Path, measurement: str) -> None:
    """What the consortium writes: the example policy, with every party's public keys and
    the pinned measurement; a short run; hospital-a must approve the release."""
    text = (REPO / "examples" / "three_hospitals" / "policy.toml.in").read_text()
    for pid in ("hospital-a", *OTHER_PARTIES):
        pub = json.loads((work / f"{pid}.pub.json").read_text())
        text = text.replace(f"@{pid}.signing@", pub["signing_key"])
        text = text.replace(f"@{pid}.hpke@", pub["hpke_key"])
    values = {
        "@NAME_SUFFIX@": "-readme",
        "@EXPIRES@": "2099-01-01T00:00:00Z",
        "@MEASUREMENT@": measurement,
        "@PRIVACY@": "enabled = false",
        "@LR@": "0.05",
        "@EPOCHS@": "2",
        "@BATCH@": "32",
        "@METRICS@": '["train_loss", "steps"]',
        "@NON_PRIVATE@": "",
        "approvals_required_from = []": 'approvals_required_from = ["hospital-a"]',
    }
    for k, v in values.items():
        assert k in text, k
        text = text.replace(k, v)
    (work / "policy.toml").write_text(text)


def test_the_cli_blocks(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shim = tmp_path / "bin" / "cctrain"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cctrain.cli "$@"\n')
    shim.chmod(0o755)
    env = environment(tmp_path / "home", PATH=f"{shim.parent}{os.pathsep}{os.environ['PATH']}")

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=work,
            env=env,
            text=True,
            capture_output=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        return proc

    for pid in OTHER_PARTIES:  # the other parties made their keys too
        PartyKeys.generate(pid).save(work)
    for command in commands(block(CLI_SETUP)):
        proc = sh(command)
        if command.startswith("cctrain measure"):
            _write_example_policy(work, proc.stdout.strip())
        if command.startswith("cctrain policy sign"):
            for pid in OTHER_PARTIES:  # every party signs
                signed = cctrain(
                    "policy", "sign", "policy.toml", "--key", f"{pid}.key", cwd=work, env=env
                )
                assert signed.returncode == 0, signed.stderr
        if command.startswith("cctrain policy verify"):
            assert "status:  complete" in proc.stdout

    keys = {pid: PartyKeys.load(work / f"{pid}.key") for pid in ("hospital-a", *OTHER_PARTIES)}
    consortium = Consortium(work, keys, SignedPolicy.load(work / "policy.signed.json"))
    _digits_like_shard(work / "hospital-a.npz", seed=0)
    out = []
    with running_enclave(consortium, tmp_path / "state") as (address, _app):
        for i, pid in enumerate(("hospital-b", "hospital-c"), start=1):  # the other providers
            with make_owner(address, consortium, pid) as owner:
                owner.upload(_digits_like_shard(tmp_path / f"{pid}.npz", i), state_dir=tmp_path)
        for command in commands(block(CLI_SESSION)):
            out.append(sh(on_the_local_enclave(command, address)).stdout)
    text = "\n".join(out)
    assert "receipt verified: party=hospital-a shard=hospital-a rows=120" in text
    assert "approved; approvals so far: hospital-a" in text
    assert "verified and unsealed" in text and "release verified and unsealed" in text
    assert (work / "release" / "model.safetensors").is_file()
    assert out[-1].rstrip().endswith("phase: released")  # the saved journal, verified offline
    ledger = [sh(command).stdout for command in commands(block(CLI_LEDGER))]
    # This example policy has no DP: its grant has no bound, which the ledger says.
    assert "lifetime budget of hospital-a.npz" in ledger[0], ledger[0]
    assert "granted so far: unbounded (no DP)" in ledger[0], ledger[0]
    assert "ε granted unbounded (no DP), budget 8" in ledger[1], ledger[1]


# --------------------------------------------------------------------------- the SDK blocks

README_ADDRESS = '"10.0.0.5:7443"'


def run_snippet(b: Block, address: str) -> None:
    code = b.code
    assert code.count(README_ADDRESS) == 1, b.where
    code = code.replace(README_ADDRESS, repr(address))
    code, n = re.subn(r'(key="[^"]+\.key")\)', r"\1, allow_simulated=True)", code)
    assert n == 1, f"{b.where}: where does allow_simulated=True go?"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        exec(compile(code, b.where, "exec"), {"__name__": "readme"})  # noqa: S102 - our README


def test_the_sdk_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    c = make_consortium(tmp_path)  # policy.signed.json, here
    for keys in c.keys.values():
        keys.save(tmp_path)
    write_shard(tmp_path / "hospital-a.npz", seed=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CCTRAIN_HOME", str(tmp_path / "home"))
    with running_enclave(c, tmp_path / "state") as (address, _app):
        for i, pid in enumerate(("hospital-b", "hospital-c"), start=1):  # the other providers
            with make_owner(address, c, pid) as owner:
                owner.upload(write_shard(tmp_path / f"{pid}.npz", seed=i))
        run_snippet(block(OWNER), address)
        assert capsys.readouterr().out.startswith(f"200 {c.signed.digest.hex()}")
        with make_owner(address, c) as owner:
            assert owner.wait_for_phase(("released",), timeout=300) == "released"
        run_snippet(block(RECIPIENT_SDK), address)
        assert (tmp_path / "release.json").is_file()
        assert capsys.readouterr().out.startswith("None {")  # no DP certificate; the metrics
        run_snippet(block(AUDITOR), address)
    history = capsys.readouterr().out.splitlines()
    assert history[0].startswith("0 genesis ") and history[-1].split()[1] == "released"
