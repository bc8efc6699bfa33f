"""``requires-python`` says what works: the parties' tools import ``tomllib`` and
``typing.Self`` (Python 3.11) with no fallback, so pip must refuse 3.10 rather than install a
``cctrain`` whose first command dies on an ImportError."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

#: What the code needs, and where it would show: (minimum minor version of Python 3, pattern).
NEEDS = ((11, re.compile(r"^import tomllib$|^from typing import .*\bSelf\b", re.M)),)


def _lower_bound() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    assert m, f"requires-python: got {spec!r}, want '>=3.N'"
    return 3, int(m.group(1))


def test_requires_python_covers_what_the_code_imports() -> None:
    sources = [*(ROOT / "cctrain").rglob("*.py"), *(ROOT / "enclave").rglob("*.py")]
    needed = max(
        (minor for minor, pattern in NEEDS for src in sources if pattern.search(src.read_text())),
        default=0,
    )
    assert needed == 11  # the code does use them: otherwise this test checks nothing
    assert _lower_bound() >= (3, needed)


def test_this_interpreter_is_one_it_allows() -> None:
    assert sys.version_info[:2] >= _lower_bound()
