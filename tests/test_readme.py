"""The README's code runs as shown, so it cannot rot.

Every fenced ``python`` and ``console`` block of README.md is either run here, against a real
simulated enclave on a loopback port, or marked ``<!-- not-tested: reason -->`` on the line
before it; the marked ones are listed in NOT_TESTED (so marking one is a visible change here)
and each shows up as a skip with its reason. (The CLI is shown by the tutorials,
docs/tutorial-*.md, which tests/authoring/test_tutorial.py runs.)

What runs is the README's text with only these rewrites, each checked to apply:
``"10.0.0.5:7443"`` becomes the local enclave's address, and ``allow_simulated=True`` is added
where the enclave's evidence is verified, as the README says to for the local simulated TEE.

Between snippets the test plays the other parties (their keys, their signatures, their
uploads) and the operator (the enclave, started on the simulated platform).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from cctrain.client import SimulatedEvidenceWarning
from tests.conftest import REPO
from tests.consortium import make_consortium, running_enclave
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


OWNER, RECIPIENT_SDK, AUDITOR = (("Data owner", 0), ("Recipient", 0), ("Auditor", 0))
#: The blocks the tests below run.
RUN = frozenset({OWNER, RECIPIENT_SDK, AUDITOR})
#: The blocks marked not-tested, on purpose (the marker in README.md says why).
NOT_TESTED = [("Quick start", 0)]


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
