"""The training plan checked before any data arrives.

Unsupported layers, a gradient mode that cannot clip the model, buffers a pinned model writes:
found only when training starts, these would fail a run after every party uploaded (or, worse,
release something the certificate does not cover). :func:`check_training_plan` finds them
first: ``cctrain-enclave serve`` refuses to start on a plan with problems, and
``cctrain policy check`` runs the same check for the consortium before anyone signs.

It builds the model exactly as training will (built-in, or the pinned custom source), runs
Opacus's validator and the gradient-mode checks, and then trains it for one epoch on a small
synthetic batch of the policy's shape through the real trainer (DP engine, state guard and
all). Every problem is listed, each naming what failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cctrain.errors import CctrainError, PolicyError
from cctrain.policy import Policy, thaw

from .dp import synthetic_batch, validate_dp_config
from .objective import objective_for
from .train import _model_spec, _training_problems, build_model_from_spec, train

__all__ = ["check_training_plan"]

_DRY_ROWS = 32
_DRY_BATCH = 2  # q = 1/16: fast to calibrate, still a real Poisson batch of the real engine


def _describe(exc: BaseException) -> list[str]:
    if isinstance(exc, PolicyError) and exc.problems:
        return list(exc.problems)
    return [f"{type(exc).__name__}: {exc}"]


def check_training_plan(
    policy: Policy,
    *,
    custom_model_source: bytes | None,
    simulated_platform: bool,
    model_package: bytes | None = None,
    device: str = "cpu",
) -> list[str]:
    """Every reason the policy's model and training cannot run (empty list: they can).

    A model package arrives only after the enclave started: without ``model_package`` its
    model is not checked (the model owner runs this check with it: ``cctrain policy check --model-package``).

    ``device`` ("cpu" or "cuda") is where the epoch on synthetic rows runs: the enclave passes
    the ``training.device`` it resolved at start (:func:`.train.resolve_device`, which refuses
    a device this machine lacks); ``cctrain policy check``, on a signer's machine that need
    not have the enclave's GPU, checks the plan on the CPU.
    """
    training: dict[str, Any] = thaw(policy.training)
    privacy: dict[str, Any] = thaw(policy.privacy)
    data: Mapping[str, Any] = policy.data
    shape = tuple(int(d) for d in data["features"]["shape"])
    problems = _training_problems(training)
    if problems:
        return problems
    objective = objective_for(str(training["task"]), num_outputs=policy.num_outputs)
    classes = objective.num_outputs
    if training["model"]["name"] == "package" and model_package is None:
        return []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(training.get("seed", 0)))
        try:
            model = build_model_from_spec(
                _model_spec(training),
                shape,
                classes,
                custom_model_source=custom_model_source,
                model_package=model_package,
            )
        except Exception as exc:  # noqa: BLE001 - model code may raise anything
            return [f"building the model failed: {p}" for p in _describe(exc)]
    if model_package is not None:  # the package's loss and metrics, as training will use them
        from .plan import load_plan_hooks, plan_objective

        try:
            hooks = load_plan_hooks(model_package, _model_spec(training), training)
        except CctrainError as exc:
            return [str(exc)]
        objective = plan_objective(objective, hooks, training, per_row=bool(privacy.get("enabled")))
    example = synthetic_batch(shape, objective)
    if privacy.get("enabled"):
        problems = validate_dp_config(
            model,
            training,
            privacy,
            num_rows=None,
            simulated_platform=simulated_platform,
            example=example,
            objective=objective,
        )
        if problems:
            return problems
        ranks = int(policy.cluster["ranks"])
        if ranks > 1:
            from .dp import resolve_grad_sample_mode

            mode = resolve_grad_sample_mode(
                model, str(privacy.get("grad_sample_mode", "auto")), example, objective=objective
            )
            if mode != "fast":
                return [
                    f"cluster.ranks = {ranks} needs cctrain's fast per-sample clipping (Linear "
                    f"layers), but this model's grad_sample_mode resolves to {mode!r}"
                ]
    # One epoch of the real trainer on synthetic rows: what fails at step 1 fails here.
    dry_training = training | {"batch_size": _DRY_BATCH, "epochs": 1, "device": device}
    dry_privacy = privacy
    if privacy.get("enabled"):
        # ε and δ of the dry run only set the noise (large noise calibrates fastest); the
        # real calibration runs when the real rows are known. The trainer resolves ``auto``
        # on the same synthetic batch the check above used.
        dry_privacy = privacy | {"delta": 1e-3, "target_epsilon": 1.0}
    generator = torch.Generator().manual_seed(7)
    features = torch.randn((_DRY_ROWS, *shape), generator=generator).numpy()
    labels = objective.synthetic_targets(_DRY_ROWS, generator).numpy()
    try:
        train(
            features.astype(np.float32),
            labels,
            objective=objective,
            training=dry_training,
            privacy=dry_privacy,
            simulated_platform=simulated_platform,
            checkpoint=None,
            progress=None,
            custom_model_source=custom_model_source,
            model_package=model_package,
        )
    except CctrainError as exc:
        if str(exc).startswith("training diverged"):
            return []  # random rows may diverge where real ones do not: not a plan problem
        return [f"a training step on synthetic data failed: {p}" for p in _describe(exc)]
    except Exception as exc:  # noqa: BLE001 - whatever the model's code raises
        return [f"a training step on synthetic data failed: {type(exc).__name__}: {exc}"]
    return []
