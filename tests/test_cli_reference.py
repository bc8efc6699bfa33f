"""docs/cli-reference.md and docs/python-api.md are what the code says about itself, regenerated."""

from __future__ import annotations

from cctrain.cli import main
from cctrain.cli.reference import render
from tests.conftest import REPO


def test_the_cli_reference_is_current() -> None:
    committed = (REPO / "docs" / "cli-reference.md").read_text()
    assert committed == render(main, "cctrain"), (
        "docs/cli-reference.md is stale: python -m cctrain.cli.reference > docs/cli-reference.md"
    )


def test_every_command_has_help() -> None:
    text = render(main, "cctrain")
    sections = text.split("\n## ")[1:]
    assert len(sections) > 20
    for section in sections:
        name = section.splitlines()[0]
        body = section.split("```", 2)[2].strip()
        assert body, f"{name} has no help text"


def test_the_python_api_reference_is_current() -> None:
    from cctrain.apiref import render as render_api

    committed = (REPO / "docs" / "python-api.md").read_text()
    assert committed == render_api(), (
        "docs/python-api.md is stale: python -m cctrain.apiref > docs/python-api.md"
    )
    assert "(no docstring)" not in committed
