"""Every relative link of README.md and docs/*.md resolves: the file (or folder) it names is in
the repository, and its ``#anchor``, if any, is a heading of that page (GitHub's slugs). A page
moved, renamed or a heading reworded breaks a link here, not in a reader's browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")


def _prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercased, markup and punctuation dropped (letters of
    any script, digits, ``-`` and ``_`` kept), spaces become hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(page.read_text()):
        m = HEADING.match(line)
        if m is None:
            continue
        s = slug(m[2])
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")  # GitHub numbers repeated headings
    return out


def links(page: Path) -> list[str]:
    found = []
    for line in _prose(page.read_text()):
        found += LINK.findall(INLINE_CODE.sub("", line))
    return found


def test_the_slugs_are_githubs() -> None:
    assert slug("The state key and `cctrain unlock`") == "the-state-key-and-cctrain-unlock"
    assert slug("The owner's ε ledger") == "the-owners-ε-ledger"
    assert slug("Composite CPU + GPU") == "composite-cpu--gpu"
    assert slug("No forks, no rollback: the parties are the counter") == (
        "no-forks-no-rollback-the-parties-are-the-counter"
    )


def test_the_link_reader(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# A `b`: c\n[x](other.md#y) ![img](pic.png) `[not](a-link.md)`\n"
        "```\n[in](code.md)\n# not a heading\n```\n## A `b`: c\n"
    )
    assert links(page) == ["other.md#y"]
    assert anchors(page) == {"a-b-c", "a-b-c-1"}


def problems(page: Path, root: Path = REPO) -> list[str]:
    root = root.resolve()
    out = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page.resolve()
        if root not in dest.parents:
            continue  # outside the repository (../shared/DESIGN.md): not this test's to check
        where = f"{page.relative_to(root)}: ({target})"
        if not dest.exists():
            out.append(f"{where}: no such file {dest.relative_to(root)}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{where}: no heading #{anchor} in {dest.name}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page: Path) -> None:
    assert not problems(page)


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B\n## The owner's ε ledger\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# A\n[ok](b.md#the-owners-ε-ledger) [self](#a) [up](../docs/b.md) [web](https://x.org/y)\n"
        "[bad anchor](b.md#no-such-heading) [gone](no-such-page.md) [here](#nowhere)\n"
    )
    assert problems(page, tmp_path) == [
        "docs/a.md: (b.md#no-such-heading): no heading #no-such-heading in b.md",
        "docs/a.md: (no-such-page.md): no such file docs/no-such-page.md",
        "docs/a.md: (#nowhere): no heading #nowhere in a.md",
    ]
