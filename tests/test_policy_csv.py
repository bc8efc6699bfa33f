"""The policy's CSV column keys: data.csv.feature_columns and data.csv.ignore_extra_columns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PolicyError
from cctrain.policy import parse_policy
from tests.consortium import RECIPIENT, policy_document


def _doc(**csv: Any) -> dict[str, Any]:
    keys = {pid: PartyKeys.generate(pid) for pid in ("hospital-a", RECIPIENT)}
    doc = policy_document(keys)
    doc["data"]["csv"] = csv
    return doc


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc).encode(), "json")
    return list(info.value.problems)


def test_feature_columns_are_kept_in_order() -> None:
    doc = _doc(feature_columns=["d", "c", "b", "a"], ignore_extra_columns=True)
    data = parse_policy(json.dumps(doc).encode(), "json").data
    assert data["csv"]["feature_columns"] == ("d", "c", "b", "a")
    assert data["csv"]["ignore_extra_columns"] is True
    assert data["csv"]["label_column"] == "label"


def test_policies_without_the_keys_are_unchanged() -> None:
    data = parse_policy(json.dumps(_doc()).encode(), "json").data
    assert dict(data["csv"]) == {"header": True, "label_column": "label"}


@pytest.mark.parametrize(
    ("csv", "text"),
    [
        ({"feature_columns": ["a", "b", "c"]}, "names 3 columns, data.features.shape wants 4"),
        ({"feature_columns": ["a", "b", "a", "c"]}, "names ['a'] more than once"),
        ({"feature_columns": ["a", "b", "c", "label"]}, "includes the label column 'label'"),
        (
            {"feature_columns": ["a", "b", "c", "y"], "label_column": "y"},
            "includes the label column 'y'",
        ),
        ({"feature_columns": []}, "must be a non-empty list of column names"),
        ({"feature_columns": "a,b,c,d"}, "must be a non-empty list of column names"),
        ({"feature_columns": ["a", "b", "c", 4]}, "must be a non-empty list of column names"),
        ({"feature_columns": ["a", "b", "c", ""]}, "column names must not be empty"),
        ({"ignore_extra_columns": True}, "applies only with data.csv.feature_columns"),
        (
            {"feature_columns": ["a", "b", "c", "d"], "ignore_extra_columns": "yes"},
            "data.csv.ignore_extra_columns: must be true or false",
        ),
        ({"columns": ["a"]}, "data.csv.columns: unknown key"),
    ],
)
def test_bad_csv_column_keys(csv: dict[str, Any], text: str) -> None:
    problems = _problems(_doc(**csv))
    assert any(text in p for p in problems), problems
    assert all(p.startswith("data.") for p in problems), problems
