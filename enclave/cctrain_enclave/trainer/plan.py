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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cctrain.errors import CctrainError, PolicyError
from cctrain.package import PackageError
from cctrain_enclave.package import LoadedPackage, initial_weights, load_package

__all__ = [
    "PlanHooks",
    "apply_augment",
    "build_package_model",
    "load_plan_hooks",
    "load_plan_package",
    "package_optimizer",
]


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


@dataclass(frozen=True)
class PlanHooks:
    """What a package's plan module supplies besides the model (each optional).

    * ``configure_optimizer(params, *, lr, **training.optimizer.params) -> Optimizer``, used
      when ``training.optimizer.name = "package"``;
    * ``lr_multiplier(step, total_steps) -> float``, used when
      ``training.lr_schedule.name = "package"``;
    * ``augment(features, targets, generator) -> (features, targets)``: a per-sample
      transform of each training batch (under DP the enclave calls it one row at a time, so
      rows cannot mix whatever the code does); ``generator`` is a ``torch.Generator`` the
      enclave seeds from the public seed and the step.
    """

    configure_optimizer: Callable[..., Any] | None = None
    lr_multiplier: Callable[[int, int], float] | None = None
    augment: Callable[..., Any] | None = None

    @property
    def names(self) -> list[str]:
        return [n for n in ("configure_optimizer", "lr_multiplier", "augment") if getattr(self, n)]


def load_plan_hooks(data: bytes | None, spec: Mapping[str, Any]) -> PlanHooks:
    """The hooks of a package's plan module (none for a built-in or custom model)."""
    if spec.get("name") != "package" or data is None:
        return PlanHooks()
    module = load_plan_package(data, spec).module(str(spec["module"]))

    def hook(name: str) -> Callable[..., Any] | None:
        fn = getattr(module, name, None)
        return fn if callable(fn) else None

    return PlanHooks(hook("configure_optimizer"), hook("lr_multiplier"), hook("augment"))


def apply_augment(
    hooks: PlanHooks,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    step: int,
    per_row: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's augmentation of one batch, checked: same rows, shapes and dtypes."""
    if hooks.augment is None or len(x) == 0:
        return x, y
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (1 << 63))
    if per_row:
        parts = [
            _augment_checked(hooks.augment, x[i : i + 1], y[i : i + 1], generator)
            for i in range(len(x))
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _augment_checked(hooks.augment, x, y, generator)


def _augment_checked(
    fn: Callable[..., Any], x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    out = fn(x, y, generator)
    if (
        not isinstance(out, tuple)
        or len(out) != 2
        or not all(isinstance(t, torch.Tensor) for t in out)
        or out[0].shape != x.shape
        or out[0].dtype != x.dtype
        or out[1].shape != y.shape
        or out[1].dtype != y.dtype
    ):
        raise CctrainError(
            "the package's augment must return (features, targets) of the shapes and dtypes "
            "it was given"
        )
    return out[0], out[1]


def package_optimizer(
    hooks: PlanHooks, params: Any, optimizer_cfg: Mapping[str, Any]
) -> torch.optim.Optimizer:
    if hooks.configure_optimizer is None:
        raise CctrainError(
            "training.optimizer.name is 'package', but the package defines no configure_optimizer"
        )
    opt = hooks.configure_optimizer(
        params, lr=float(optimizer_cfg["lr"]), **dict(optimizer_cfg.get("params") or {})
    )
    if not isinstance(opt, torch.optim.Optimizer):
        raise CctrainError("the package's configure_optimizer returned no torch.optim.Optimizer")
    return opt
