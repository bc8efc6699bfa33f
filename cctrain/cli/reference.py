"""The CLI reference, generated from the click commands themselves (``docs/cli-reference.md``).

    python -m cctrain.cli.reference > docs/cli-reference.md

``tests/test_cli_reference.py`` fails when the committed file is not what this prints, so the
reference cannot drift from the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click

__all__ = ["render"]


def _commands(
    group: click.Group, ctx: click.Context, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command, click.Context]]:
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        yield (*path, name), cmd, sub
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub, (*path, name))


def _option_rows(cmd: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:  # an argument
            continue
        names, text = record
        if names.startswith("--help"):
            continue
        rows.append(f"| `{_cell(names)}` | {_cell(text)} |")
    return rows


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a `|` would end it)."""
    return text.replace("|", "\\|")


def render(root: click.Group, prog: str) -> str:
    """Markdown for every command under ``root`` (as ``prog``), in name order."""
    ctx = click.Context(root, info_name=prog)
    out = [
        f"# `{prog}` command reference",
        "",
        "Generated from the commands by `python -m cctrain.cli.reference`; do not edit by hand.",
        "Exit status everywhere: 0 success, 1 refused or verification failed, 2 usage or input "
        "error, 3 the enclave cannot be reached (run it again: an upload resumes), 130 "
        "interrupted.",
        "",
    ]
    for path, cmd, sub in _commands(root, ctx, (prog,)):
        out += [
            f"## `{' '.join(path)}`",
            "",
            "```",
            " ".join(path) + " " + " ".join(cmd.collect_usage_pieces(sub)),
            "```",
            "",
        ]
        help_text = (cmd.help or "").strip()
        if help_text:
            out += [click.unstyle(help_text).replace("\b\n", ""), ""]
        rows = _option_rows(cmd, sub)
        if rows and not isinstance(cmd, click.Group):
            out += ["| option | |", "|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    from cctrain.cli import main as cctrain_main

    sys.stdout.write(render(cctrain_main, "cctrain"))


if __name__ == "__main__":
    main()
