"""Policy validation of tasks and data formats: training.task, data.labels (classes, a
vocabulary, regression targets), the task's metrics, and data.parquet. Every problem is
reported at once, each naming its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PolicyError
from cctrain.policy import MAX_LABEL_CHARS, MAX_VOCABULARY, Policy, parse_policy
from tests.consortium import RECIPIENT, policy_document

KEYS = {pid: PartyKeys.generate(pid) for pid in ("hospital-a", RECIPIENT)}


def _doc(**overrides: Any) -> dict[str, Any]:
    doc = policy_document(KEYS)
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(doc.get(section), dict):
            doc[section] = doc[section] | values
        else:
            doc[section] = values
    return doc


def _parse(doc: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps(doc).encode(), "json")


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        _parse(doc)
    return list(info.value.problems)


def _has(problems: list[str], field: str, text: str = "") -> bool:
    return any(p.startswith(f"{field}:") and text in p for p in problems)


REGRESSION = {"task": "regression"}


def test_classification_is_the_default_task_with_classes_or_a_vocabulary() -> None:
    p = _parse(_doc())
    assert p.task == "classification" and p.num_outputs == 2
    p = _parse(_doc(data={"labels": {"vocabulary": ["benign", "malignant", "unsure"]}}))
    assert p.num_outputs == 3
    assert p.data["labels"]["vocabulary"] == ("benign", "malignant", "unsure")


def test_regression_takes_float_targets_and_one_output() -> None:
    p = _parse(_doc(training=REGRESSION, data={"labels": {"dtype": "float32"}}))
    assert p.task == "regression" and p.num_outputs == 1
    p = _parse(_doc(training=REGRESSION, data={"labels": {}}))
    assert p.data["labels"]["dtype"] == "float32"  # the default, recorded


def test_labels_must_fit_the_task() -> None:
    problems = _problems(_doc(training=REGRESSION, data={"labels": {"num_classes": 2}}))
    assert _has(problems, "data.labels.num_classes", "regression")
    problems = _problems(_doc(training=REGRESSION, data={"labels": {"vocabulary": ["a", "b"]}}))
    assert _has(problems, "data.labels.vocabulary", "regression")
    problems = _problems(_doc(training=REGRESSION, data={"labels": {"dtype": "float64"}}))
    assert _has(problems, "data.labels.dtype", "want 'float32'")
    problems = _problems(_doc(data={"labels": {"dtype": "float32"}}))
    assert _has(problems, "data.labels.dtype", 'training.task = "regression"')
    assert _has(problems, "data.labels", "exactly one of num_classes")
    problems = _problems(_doc(data={"labels": {}}))
    assert _has(problems, "data.labels", "exactly one of num_classes")
    problems = _problems(_doc(data={"labels": {"num_classes": 2, "vocabulary": ["a", "b"]}}))
    assert _has(problems, "data.labels", "exactly one of num_classes")
    problems = _problems(_doc(training={"task": "ranking"}))
    assert _has(problems, "training.task")


@pytest.mark.parametrize(
    ("vocabulary", "field", "text"),
    [
        (["only"], "data.labels.vocabulary", "at least 2"),
        ("benign", "data.labels.vocabulary", "list of strings"),
        (["a", 3], "data.labels.vocabulary", "list of strings"),
        (["a", "b", "a"], "data.labels.vocabulary", "names ['a'] more than once"),
        (["a", ""], "data.labels.vocabulary[1]", "must not be empty"),
        (["a", "x" * (MAX_LABEL_CHARS + 1)], "data.labels.vocabulary[1]", "characters"),
        (["a", " b"], "data.labels.vocabulary[1]", "no leading or trailing space"),
        (["a", "b\x00"], "data.labels.vocabulary[1]", "control characters"),
        ([f"l{i}" for i in range(MAX_VOCABULARY + 1)], "data.labels.vocabulary", "at most"),
    ],
)
def test_vocabulary_problems(vocabulary: Any, field: str, text: str) -> None:
    problems = _problems(_doc(data={"labels": {"vocabulary": vocabulary}}))
    assert _has(problems, field, text), problems


def test_metrics_must_be_the_tasks() -> None:
    problems = _problems(
        _doc(
            training=REGRESSION,
            data={"labels": {"dtype": "float32"}},
            release={"recipients": [RECIPIENT], "metrics": ["train_accuracy", "train_mse"]},
        )
    )
    assert problems == [
        "release.metrics: 'train_accuracy' is not a metric of training.task = 'regression'"
    ]
    problems = _problems(
        _doc(release={"recipients": [RECIPIENT], "metrics": ["train_mae", "val_mse"]})
    )
    assert _has(problems, "release.metrics", "'train_mae' is not a metric")
    assert _has(problems, "release.metrics", "'val_mse' is not a metric")
    regression = _doc(
        training=REGRESSION,
        data={"labels": {"dtype": "float32"}},
        validation={"fraction": 0.2, "early_stopping": {"metric": "val_accuracy"}},
    )
    assert _has(_problems(regression), "validation.early_stopping.metric", "not a metric")
    regression["validation"]["early_stopping"]["metric"] = "val_mae"
    regression["release"] = {"recipients": [RECIPIENT], "metrics": ["val_mae", "train_mse"]}
    assert _parse(regression).validation["early_stopping"]["metric"] == "val_mae"


def test_regression_metrics_are_non_private_under_dp() -> None:
    dp = {
        "enabled": True,
        "target_epsilon": 4.0,
        "delta": 1e-6,
        "max_grad_norm": 1.0,
    }
    doc = _doc(
        training=REGRESSION,
        data={"labels": {"dtype": "float32"}},
        privacy=dp,
        release={"recipients": [RECIPIENT], "metrics": ["train_mse", "train_mae", "steps"]},
    )
    problems = _problems(doc)
    assert _has(problems, "release.metrics", "'train_mse' is computed exactly")
    assert _has(problems, "release.metrics", "'train_mae' is computed exactly")
    doc["release"]["non_private"] = ["train_mse", "train_mae"]
    assert _parse(doc).release["non_private"] == ("train_mse", "train_mae")


def test_parquet_table() -> None:
    p = _parse(_doc(data={"formats": ["parquet"]}))
    assert p.data["parquet"]["label_column"] == "label"
    assert p.data["parquet"]["max_row_group_bytes"] == 128 << 20
    p = _parse(
        _doc(
            data={
                "formats": ["npz", "parquet"],
                "parquet": {
                    "label_column": "y",
                    "feature_columns": ["a", "b", "c", "d"],
                    "ignore_extra_columns": True,
                    "max_row_group_bytes": 1 << 20,
                },
            }  # fmt: skip
        )
    )
    assert p.data["parquet"]["feature_columns"] == ("a", "b", "c", "d")
    assert "parquet" not in _parse(_doc()).data  # not allowed, not defaulted
    problems = _problems(
        _doc(
            data={
                "formats": ["parquet"],
                "features": {"shape": [2, 2], "dtype": "float32"},
                "parquet": {
                    "feature_columns": ["a", "a", "label"],
                    "row_groups": 3,
                    "max_row_group_bytes": 0,
                    "label_column": "",
                },
            }  # fmt: skip
        )
    )
    for field, text in [
        ("data.formats", "parquet shards need 1-D features"),
        ("data.parquet.row_groups", "unknown key"),
        ("data.parquet.max_row_group_bytes", "must be in [1,"),
        ("data.parquet.label_column", "must not be empty"),
        ("data.parquet.feature_columns", "names ['a'] more than once"),
    ]:
        assert _has(problems, field, text), (field, problems)
    problems = _problems(_doc(data={"formats": ["parquet"], "parquet": {"feature_columns": ["a"]}}))
    assert _has(problems, "data.parquet.feature_columns", "data.features.shape wants 4")
    problems = _problems(
        _doc(data={"formats": ["parquet"], "parquet": {"ignore_extra_columns": True}})
    )
    assert _has(problems, "data.parquet.ignore_extra_columns", "applies only with")


def test_every_problem_at_once() -> None:
    problems = _problems(
        _doc(
            training=REGRESSION,
            data={
                "labels": {"num_classes": 1, "vocabulary": ["a", "a"], "dtype": "int8"},
                "formats": ["parquet", "xlsx"],
            },  # fmt: skip
            release={"recipients": [RECIPIENT], "metrics": ["train_accuracy"]},
        )
    )
    for field in (
        "data.labels.num_classes",
        "data.labels.vocabulary",
        "data.labels.dtype",
        "data.formats",
        "release.metrics",
    ):
        assert _has(problems, field), (field, problems)
