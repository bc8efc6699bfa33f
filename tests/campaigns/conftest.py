"""Print each campaign's figure in the test summary (pytest captures what tests print)."""

from __future__ import annotations

from typing import Any

from tests.campaigns._common import FULL, REPORTED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTED:
        return
    terminalreporter.section(f"campaign figures ({'full' if FULL else 'small'} versions)")
    for figures in REPORTED:
        terminalreporter.write_line(figures.line)
