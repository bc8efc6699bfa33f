"""Learning-rate schedules: a multiplier of the optimizer's base rate at each global step.

Stateless (a function of the step and the planned total), so a run resumed from a checkpoint
continues the schedule exactly, and under DP the schedule is post-processing: it changes no
privacy accounting. ``training.lr_schedule`` names one:

* ``constant`` (default): 1;
* ``cosine``: from 1 down to ``min_lr_ratio`` along a half cosine;
* ``linear``: from 1 down to ``min_lr_ratio`` linearly;
* ``step``: times ``gamma`` every ``step_size`` steps;
* ``package``: the model package's ``lr_multiplier(step, total_steps) -> float``.

Each but ``package`` takes ``warmup_steps``: a linear ramp from 0 to the schedule's value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from cctrain.errors import CctrainError

__all__ = ["SCHEDULES", "Schedule", "build_schedule"]

Schedule = Callable[[int, int], float]
SCHEDULES = ("constant", "cosine", "linear", "step", "package")


def _base(cfg: Mapping[str, Any]) -> Schedule:
    name = cfg.get("name", "constant")
    floor = float(cfg.get("min_lr_ratio", 0.0))
    warmup = int(cfg.get("warmup_steps", 0))
    if name == "constant":
        return lambda step, total: 1.0
    if name == "cosine":

        def cosine(step: int, total: int) -> float:
            span = max(total - warmup, 1)
            t = min(max(step - warmup, 0) / span, 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return cosine
    if name == "linear":

        def linear(step: int, total: int) -> float:
            span = max(total - warmup, 1)
            t = min(max(step - warmup, 0) / span, 1.0)
            return 1 - (1 - floor) * t

        return linear
    if name == "step":
        size, gamma = int(cfg["step_size"]), float(cfg.get("gamma", 0.1))
        return lambda step, total: float(gamma ** (max(step - warmup, 0) // size))
    raise ValueError(f"unknown schedule {name!r}")


def build_schedule(cfg: Mapping[str, Any] | None, package_hook: Schedule | None) -> Schedule:
    """The multiplier at ``step`` (0-based: the step about to be taken) of ``total``."""
    cfg = cfg or {}
    if cfg.get("name") == "package":
        if package_hook is None:
            raise CctrainError(
                "training.lr_schedule.name is 'package', but the package defines no "
                "lr_multiplier(step, total_steps)"
            )
        hook = package_hook

        def checked(step: int, total: int) -> float:
            value = hook(step, total)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CctrainError("the package's lr_multiplier did not return a number")
            if not math.isfinite(value) or value < 0:
                raise CctrainError(
                    "the package's lr_multiplier returned a negative or non-finite value"
                )
            return float(value)

        return checked
    base = _base(cfg)
    warmup = int(cfg.get("warmup_steps", 0))
    if warmup <= 0:
        return base
    return lambda step, total: base(step, total) * min(1.0, (step + 1) / warmup)
