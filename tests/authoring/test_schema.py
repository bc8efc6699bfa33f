"""The shipped policy JSON Schema agrees with the checker (cctrain.policy), and the committed
schema and reference page are what ``python -m cctrain.schema`` generates."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import tomllib

from cctrain import policy as P
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PolicyError
from cctrain.schema import markdown, policy_schema, schema_json, shipped_schema
from tests.authoring.test_authoring import _filled
from tests.conftest import REPO
from tests.consortium import policy_document


def _plain(value: Any) -> Any:
    """A TOML document as JSON would hold it (a TOML datetime as its ISO-8601 text)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _corpus() -> list[dict[str, Any]]:
    keys = {p: PartyKeys.generate(p) for p in ("hospital-a", "hospital-b", "research-lab")}
    docs = [policy_document(keys)]
    for text in (
        _filled("hospitals", dp=True, ranks=2),
        _filled("hospitals", dp=False),
        _filled("model-owner", dp=False).replace("REPLACE-sha256-of-the-package", "ab" * 32),
    ):
        docs.append(_plain(tomllib.loads(text)))
    return docs


CORPUS = _corpus()
VALIDATOR = jsonschema.Draft202012Validator(policy_schema())


def _checker_accepts(doc: dict[str, Any]) -> bool:
    try:
        P.parse_policy(json.dumps(doc).encode(), "json")
    except PolicyError:
        return False
    return True


def _tables(doc: dict[str, Any]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Every table the checker walks in ``doc``: path -> (required, optional) keys."""
    seen: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    original = P._Checker.table

    def table(self: Any, d: Any, path: str, *, required: Any = (), optional: Any = ()) -> Any:
        seen[path] = (frozenset(required), frozenset(optional))
        return original(self, d, path, required=required, optional=optional)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P._Checker, "table", table)
        P.parse_policy(json.dumps(doc).encode(), "json")
    return seen


def _steps(path: str) -> Iterator[str | int]:
    for part in path.split(".") if path else ():
        name, *idx = re.split(r"\[(\d+)\]", part)
        yield name
        yield from (int(i) for i in idx if i)


def _node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    for step in _steps(path):
        schema = schema["items"] if isinstance(step, int) else schema["properties"][step]
    return schema


def _at(doc: Any, path: str) -> Any:
    for step in _steps(path):
        doc = doc[step]
    return doc


def test_the_committed_schema_and_reference_are_generated() -> None:
    assert (REPO / "cctrain" / "schema" / "policy.schema.json").read_text() == schema_json(), (
        "regenerate: python -m cctrain.schema > cctrain/schema/policy.schema.json"
    )
    assert shipped_schema() == policy_schema()
    assert (REPO / "docs" / "policy-reference.md").read_text() == markdown(), (
        "regenerate: python -m cctrain.schema --markdown > docs/policy-reference.md"
    )


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_schema())


@pytest.mark.parametrize("i", range(len(CORPUS)))
def test_schema_and_checker_accept_the_valid_policies(i: int) -> None:
    assert _checker_accepts(CORPUS[i])
    assert list(VALIDATOR.iter_errors(CORPUS[i])) == []


@pytest.mark.parametrize("i", range(len(CORPUS)))
def test_schema_allows_exactly_the_keys_the_checker_allows(i: int) -> None:
    for path, (required, optional) in _tables(CORPUS[i]).items():
        node = _node(policy_schema(), path)
        assert set(node["properties"]) == required | optional, path
        assert set(node.get("required", ())) == required, path
        assert node.get("additionalProperties") is False, path


def _broken(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, (required, _optional) in _tables(doc).items():
        try:
            _at(doc, path)
        except (KeyError, IndexError):
            continue  # a table the document leaves out (the checker walks its defaults)
        bad = copy.deepcopy(doc)
        _at(bad, path)["surplus_key"] = 1
        yield f"{path}.surplus_key", bad
        for key in sorted(required):
            bad = copy.deepcopy(doc)
            del _at(bad, path)[key]
            yield f"{path} without {key}", bad
    for path, value in (
        ("training.epochs", "3"),
        ("training.epochs", 0),
        ("training.batch_size", True),
        ("privacy.enabled", "yes"),
        ("data.features.dtype", "int8"),
        ("training.optimizer.name", "lion"),
        ("training.model.name", "transformer"),
        ("release.max_releases", 0),
        ("attestation.platforms", ["quantum"]),
        ("version", 2),
    ):
        bad = copy.deepcopy(doc)
        *parent, leaf = path.split(".")
        _at(bad, ".".join(parent))[leaf] = value
        yield f"{path} = {value!r}", bad
    bad = copy.deepcopy(doc)
    bad["parties"][0]["roles"] = ["data_owner"]
    yield "an unknown role", bad


@pytest.mark.parametrize("i", range(len(CORPUS)))
def test_schema_and_checker_refuse_the_same_broken_policies(i: int) -> None:
    disagree = []
    for what, bad in _broken(CORPUS[i]):
        schema_ok = not list(VALIDATOR.iter_errors(bad))
        if schema_ok or _checker_accepts(bad):
            disagree.append(f"{what}: schema accepts {schema_ok}, checker {_checker_accepts(bad)}")
    assert not disagree, disagree
