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
from cctrain.policy import package_metrics
from cctrain_enclave.package import LoadedPackage, initial_weights, load_package

from .objective import Objective

__all__ = [
    "PlanHooks",
    "apply_augment",
    "plan_objective",
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
      enclave seeds from the public seed and the step;
    * ``loss(outputs, targets) -> Tensor`` of shape ``(B,)``, one loss per row, used when
      ``training.loss = "package"`` (under DP called one row at a time, as ``augment``);
    * ``metrics(outputs, targets) -> {name: Tensor (B,)}``, exactly the names
      ``training.metrics`` lists, each averaged over the rows it is computed on.
    """

    configure_optimizer: Callable[..., Any] | None = None
    lr_multiplier: Callable[[int, int], float] | None = None
    augment: Callable[..., Any] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], Any] | None = None
    metrics: Callable[[torch.Tensor, torch.Tensor], Any] | None = None

    @property
    def names(self) -> list[str]:
        return [n for n in _HOOKS if getattr(self, n)]


_HOOKS = ("configure_optimizer", "lr_multiplier", "augment", "loss", "metrics")


def load_plan_hooks(
    data: bytes | None, spec: Mapping[str, Any], training: Mapping[str, Any] | None = None
) -> PlanHooks:
    """The hooks of a package's plan module (none for a built-in or custom model).

    ``loss`` and ``metrics`` are taken only when the policy's ``training`` asks for them
    (``training.loss = "package"``, ``training.metrics``): the manifest's ``model.hooks`` lists
    what the run used. Asked for but not defined is an error here, not a silent default."""
    if spec.get("name") != "package" or data is None:
        return PlanHooks()
    module = load_plan_package(data, spec).module(str(spec["module"]))

    def hook(name: str, wanted: bool = True) -> Callable[..., Any] | None:
        if not wanted:
            return None
        fn = getattr(module, name, None)
        return fn if callable(fn) else None

    training = training or {}
    wants_loss = training.get("loss", "task") == "package"
    wants_metrics = bool(package_metrics(training))
    hooks = PlanHooks(
        hook("configure_optimizer"),
        hook("lr_multiplier"),
        hook("augment"),
        hook("loss", wants_loss),
        hook("metrics", wants_metrics),
    )
    for name, wanted, what in (
        ("loss", wants_loss, "training.loss is 'package'"),
        ("metrics", wants_metrics, "training.metrics names the package's metrics"),
    ):
        if wanted and getattr(hooks, name) is None:
            raise CctrainError(
                f"{what}, but the package's plan defines no {name}(outputs, targets)"
            )
    return hooks


def plan_objective(
    base: Objective, hooks: PlanHooks, training: Mapping[str, Any], *, per_row: bool
) -> Objective:
    """The task's objective with the package's loss and metrics in it (``base`` itself when
    the policy uses neither).

    The package's loss replaces the task's (no fused kernel: its per-sample values are the
    definition); under DP (``per_row``) it is called on one row at a time, so the loss of
    row i is a function of row i alone whatever the code does, which is what per-sample
    clipping bounds. Its metrics join the task's; the trainer reports them as ``train_*``
    and ``val_*``."""
    if hooks.loss is None and hooks.metrics is None:
        return base
    per_sample = base.per_sample
    fused = base.fused
    if hooks.loss is not None:
        loss_fn = hooks.loss
        fused = None

        def per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if not per_row:
                return _loss_checked(loss_fn, outputs, targets)
            return torch.cat(
                [
                    _loss_checked(loss_fn, outputs[i : i + 1], targets[i : i + 1])
                    for i in range(outputs.shape[0])
                ]
            )

    metrics = dict(base.metrics)
    if hooks.metrics is not None:
        names = sorted(package_metrics(training))
        metric_fn = hooks.metrics
        for name in names:
            metrics[name] = _metric_picker(metric_fn, name, names)
    return Objective(
        task=base.task,
        num_outputs=base.num_outputs,
        target_dtype=base.target_dtype,
        per_sample=per_sample,
        metrics=metrics,
        fused=fused,
    )


def _loss_checked(
    fn: Callable[..., Any], outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    out = fn(outputs, targets)
    if (
        not isinstance(out, torch.Tensor)
        or out.shape != (outputs.shape[0],)
        or not out.is_floating_point()
    ):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CctrainError(
            f"the package's loss must return one floating-point loss per row, shape "
            f"({outputs.shape[0]},): got {got}"
        )
    return out


def _metric_picker(
    fn: Callable[..., Any], name: str, names: Sequence[str]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One metric of the package's ``metrics`` hook, its result checked."""

    def metric(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = fn(outputs, targets)
        if not isinstance(out, Mapping) or sorted(out) != list(names):
            got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise CctrainError(
                f"the package's metrics must return exactly training.metrics {list(names)}: "
                f"got {got}"
            )
        value = out[name]
        if not isinstance(value, torch.Tensor) or value.shape != (outputs.shape[0],):
            raise CctrainError(
                f"the package's metric {name!r} must be one value per row, shape "
                f"({outputs.shape[0]},)"
            )
        return value.to(torch.float64)

    return metric


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
