"""A model owner's training plan: the model (and initial weights) from a pinned package.

The package's ``training.model.module`` (default ``plan``) defines
``training.model.entry`` (default ``build_model``)::

    def build_model(feature_shape: tuple[int, ...], num_outputs: int, **params) -> torch.nn.Module

called with the policy's ``training.model.params``. When the package carries initial weights
they are loaded into the model (every tensor by name and shape, nothing missing or left
over), so a model owner can fine-tune a model nobody else sees. Messages about a mismatch
give counts, not tensor names: every party reads a failed run's reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cctrain.errors import CctrainError, PolicyError
from cctrain.package import PackageError
from cctrain_enclave.package import LoadedPackage, initial_weights, load_package

__all__ = ["build_package_model", "load_plan_package"]


def load_plan_package(data: bytes, spec: Mapping[str, Any]) -> LoadedPackage:
    """The package, its hash checked against the pin before any of its code runs."""
    try:
        return load_package(data, expected_sha256=str(spec["package_sha256"]))
    except PackageError as exc:
        raise CctrainError(f"model package refused: {exc}") from None


def _load_initial(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        k
        for k in own
        if k in weights
        and (tuple(weights[k].shape) != tuple(own[k].shape) or weights[k].dtype != own[k].dtype)
    ]
    if missing or unexpected or wrong:
        raise CctrainError(
            "the package's initial weights do not fit its model: "
            f"{len(missing)} tensor(s) missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} of another shape or dtype"
        )
    with torch.no_grad():
        model.load_state_dict(dict(weights), strict=True)


def build_package_model(
    data: bytes,
    spec: Mapping[str, Any],
    *,
    feature_shape: Sequence[int],
    num_classes: int,
) -> nn.Module:
    """``entry(feature_shape, num_outputs, **params)`` from the pinned package, with its
    initial weights loaded."""
    package = load_plan_package(data, spec)
    try:
        module = package.module(str(spec["module"]))
    except PackageError as exc:
        raise PolicyError("model package has no such module", problems=[str(exc)]) from None
    entry = str(spec["entry"])
    builder = getattr(module, entry, None)
    if not callable(builder):
        raise PolicyError(
            "model package entry point missing",
            problems=[f"module {spec['module']!r} of the package defines no callable {entry!r}"],
        )
    params = dict(spec.get("params") or {})
    model = builder(tuple(feature_shape), num_classes, **params)
    if not isinstance(model, nn.Module):
        raise PolicyError(
            "model package entry point returned no model",
            problems=[f"{entry}(...) returned {type(model).__name__}, not torch.nn.Module"],
        )
    weights = initial_weights(package)
    if weights is not None:
        _load_initial(model, weights)  # type: ignore[arg-type]
    return model
