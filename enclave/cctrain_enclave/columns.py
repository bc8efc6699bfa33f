"""Named columns: which of a shard's columns are the label and the features.

CSV (its header row) and Parquet (its schema) name their columns; the policy's ``data.csv`` /
``data.parquet`` table says which is the label (``label_column``) and which are the features
(``feature_columns``, in that order; or, when it names none, every other column in the
shard's order), and whether other columns may be present (``ignore_extra_columns``). Both
parsers resolve them here, so the same names mean the same columns in either format.

Problems name columns (structure), never a value; long lists are shortened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def shown_names(names: Sequence[str]) -> str:
    """Column names for an error message (the header is structure, but keep it short)."""
    shown = [n if len(n) <= 40 else n[:40] + "…" for n in names[:10]]
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return f"{shown}{more}"


def repeated_name_problems(names: Sequence[str]) -> list[str]:
    """The problem of names that stand more than once (every name must be distinct)."""
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    return [f"names the columns {shown_names(twice)} more than once"] if twice else []


def feature_positions(
    names: Sequence[str],
    *,
    label: str,
    wanted: Sequence[str] | None,
    ignore_extra: bool,
    width: int,
    table: str,
) -> tuple[list[int], list[str]]:
    """The positions in ``names`` of the feature columns, in feature order, and every problem
    of the label and feature columns. ``wanted``: the policy's ``feature_columns`` (None: every
    column but the label); ``width``: the features' count the schema wants; ``table``: the
    policy table the options come from (``data.csv``), for the messages."""
    problems: list[str] = []
    position: dict[str, int] = {}
    for i, c in enumerate(names):
        position.setdefault(c, i)  # the first, as names.index (a repeated name is refused)
    present = position.keys()
    if label not in present:
        problems.append(f"has no label column {label!r}")
    if wanted is not None:
        named = set(wanted)
        missing = [c for c in wanted if c not in present]
        extra = [c for c in names if c != label and c not in named]
        if missing:
            problems.append(
                f"lacks the feature columns {shown_names(missing)} ({table}.feature_columns)"
            )
        if extra and not ignore_extra:
            problems.append(
                f"has columns the policy does not name: {shown_names(extra)} "
                f"({table}.ignore_extra_columns = true ignores them)"
            )
        at = [position[c] for c in wanted if c in present]
    else:
        at = [i for i, c in enumerate(names) if c != label]
        if len(at) != width:
            problems.append(
                f"has {len(at)} feature columns (all but {label!r}), "
                f"data.features.shape wants {width}"
            )
    return at, problems
