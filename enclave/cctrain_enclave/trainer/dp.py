"""Differential privacy for the trainer: config checks, noise calibration, the budget, DP steps.

Parts, each small:

* :func:`validate_dp_config` collects every problem with a DP configuration and model;
  :func:`plan_privacy` refuses with one :class:`~cctrain.errors.PolicyError` listing them all,
  then calibrates the noise multiplier with the named Opacus accountant.
* :class:`PrivacyLedger` holds the Opacus accountant; before each step the trainer asks it
  whether one more step keeps ε within the target, so a run never exceeds its budget.
* Step engines (registry ``GRAD_SAMPLE_MODES``) do one DP-SGD step on a Poisson batch:
  ``hooks`` and ``ghost`` are Opacus's GradSampleModule + DPOptimizer (assembled directly
  rather than through ``PrivacyEngine.make_private``, whose secure mode needs torchcsprng and
  whose DataLoader fetches rows one by one); ``fast`` is :mod:`.fastclip` for models
  built from the layers it has rules for (Linear, Conv1d/2d, Embedding, LayerNorm, RMSNorm,
  GroupNorm). All add noise from the configured :mod:`.noise` source, divide by the expected
  batch size, and share the sampler and accountant, so ε does not depend on the mode.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from cctrain.errors import PolicyError

from . import rdp
from .fastclip import FastClipper, fast_clip_runtime_reasons, fast_clip_unsupported_reasons
from .noise import NOISE_SOURCES, GaussianSource
from .objective import CROSS_ENTROPY, Objective, classification

# Opacus is imported only where a DP run needs it (its validator, the PRV accountant, the
# hooks and ghost engines in .dp_opacus): a run without privacy, the fast engine's accounting
# and the enclave's ``serve`` before training never load it (tests/enclave/test_trainer_rdp.py).

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "DpPlan",
    "DpStepEngine",
    "PrivacyLedger",
    "calibrate_noise",
    "clipping_problems",
    "plan_privacy",
    "resolve_grad_sample_mode",
    "synthetic_batch",
    "validate_dp_config",
]

#: Accountant names the policy may use (Opacus's names); ``cheap`` = ε can be evaluated per step.
ACCOUNTANTS: dict[str, bool] = {"rdp": True, "prv": False}
#: Opacus's ``RDPAccountant.DEFAULT_ALPHAS``; the RDP accountant is :mod:`.rdp`'s (equal).
_RDP_ORDERS = rdp.ORDERS


# --------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def synthetic_batch(
    feature_shape: tuple[int, ...], targets: int | Objective, rows: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of random features and targets (of the objective, or class indices for
    ``targets`` classes): what the model checks run on, so that no decision about a run (such
    as its gradient mode) depends on the private data."""
    objective = classification(targets) if isinstance(targets, int) else targets
    generator = torch.Generator().manual_seed(20261201)
    x = torch.randn((rows, *feature_shape), generator=generator)
    return x, objective.synthetic_targets(rows, generator)


def _on_a_copy(model: nn.Module, check: Callable[[nn.Module], list[str]]) -> list[str]:
    """Run ``check`` on a deep copy (its forward may touch buffers or consume RNG), on the
    CPU: the checks run on CPU synthetic batches, so a model trained on a GPU gets the same
    verdicts (and the same ``auto`` gradient mode) as on the CPU."""
    with torch.random.fork_rng(devices=[]):
        try:
            return check(copy.deepcopy(model).cpu())
        except Exception as exc:  # noqa: BLE001 - a model that cannot run its forward
            return [
                f"the model's forward pass on a synthetic batch failed: {type(exc).__name__}: {exc}"
            ]


def validate_dp_config(
    model: nn.Module,
    training: Mapping[str, Any],
    privacy: Mapping[str, Any],
    *,
    num_rows: int | None,
    simulated_platform: bool,
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    objective: Objective = CROSS_ENTROPY,
) -> list[str]:
    """Every reason this model + config cannot be trained with DP (empty list: it can).

    ``num_rows=None`` (before any upload) skips the checks that need the data's size;
    ``example`` (a :func:`synthetic_batch`) enables the checks that run the model, whose
    per-sample losses are ``objective``'s.
    """
    if not privacy.get("enabled", False):
        return []
    from opacus.validators import ModuleValidator

    problems = [f"model: {err}" for err in ModuleValidator.validate(model, strict=False)]

    eps = privacy.get("target_epsilon")
    if not _is_number(eps) or eps <= 0:
        problems.append(f"privacy.target_epsilon must be a number > 0, got {eps!r}")
    delta = privacy.get("delta")
    if not _is_number(delta) or not 0 < delta < 1:
        problems.append(f"privacy.delta must be a number in (0, 1), got {delta!r}")
    elif num_rows is not None and not delta < 1 / max(num_rows, 1):
        problems.append(
            f"privacy.delta must be in (0, 1/N) = (0, {1 / max(num_rows, 1):.3g}) for N={num_rows} "
            f"rows, got {delta!r}"
        )
    clip = privacy.get("max_grad_norm")
    if not _is_number(clip) or clip <= 0:
        problems.append(f"privacy.max_grad_norm must be a number > 0, got {clip!r}")
    accountant = privacy.get("accountant", "rdp")
    if accountant not in ACCOUNTANTS:
        problems.append(
            f"privacy.accountant {accountant!r} is not one of {', '.join(sorted(ACCOUNTANTS))}"
        )
    source = privacy.get("noise_source", "csprng")
    if source not in NOISE_SOURCES:
        problems.append(
            f"privacy.noise_source {source!r} is not one of {', '.join(sorted(NOISE_SOURCES))}"
        )
    elif not simulated_platform and not NOISE_SOURCES[source].allowed_off_simulated:
        problems.append(
            f"privacy.noise_source {source!r} is predictable and allowed only on the simulated "
            "platform"
        )
    mode = privacy.get("grad_sample_mode", "auto")
    if mode != "auto" and mode not in GRAD_SAMPLE_MODES:
        problems.append(
            f"privacy.grad_sample_mode {mode!r} is not one of auto, "
            f"{', '.join(sorted(GRAD_SAMPLE_MODES))}"
        )
    elif mode == "fast":
        reasons = fast_clip_unsupported_reasons(model)
        if not reasons and example is not None:
            reasons = _on_a_copy(
                model, lambda m: fast_clip_runtime_reasons(m, *example, objective=objective)
            )
        problems += [f"grad_sample_mode 'fast': {r}" for r in reasons]
    if example is not None and not problems and (mode == "auto" or mode in GRAD_SAMPLE_MODES):
        problems += clipping_problems(
            model,
            resolve_grad_sample_mode(model, mode, example, objective=objective),
            example,
            objective=objective,
        )
    # Poisson sampling is what the accountants assume; anything else voids the guarantee.
    if privacy.get("poisson_sampling", True) is not True:
        problems.append("privacy.poisson_sampling must be true: the accountants assume it")
    sampler = training.get("sampler", "poisson")
    if sampler != "poisson":
        problems.append(f"training.sampler {sampler!r}: DP training needs Poisson sampling")
    accumulation = training.get("gradient_accumulation_steps", 1)
    if accumulation != 1:
        problems.append(
            f"training.gradient_accumulation_steps={accumulation!r}: accumulating several "
            "Poisson batches into one step changes the sample rate the accountant assumes"
        )

    batch = training.get("batch_size")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        problems.append(f"training.batch_size must be a positive integer, got {batch!r}")
    elif num_rows is not None and batch > num_rows:
        problems.append(f"training.batch_size {batch} exceeds the {num_rows} rows available")
    epochs = training.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        problems.append(f"training.epochs must be a positive integer, got {epochs!r}")
    return problems


# --------------------------------------------------------------------------- calibration


def epsilon_options(accountant: str, target_epsilon: float) -> dict[str, float]:
    """Keyword arguments for ``get_epsilon`` of ``accountant`` at this target.

    PRV's ``eps_error`` is absolute (0.01 by default): at ε = 0.3 that put certificates 3%
    above Google's PLD. ``0.003 · target`` (at most the default) keeps PRV within 1% of PLD
    (measured: 0.003 gave ≤ 0.98% over ε in [0.3, 1]), at two to four times the cost per
    evaluation below ε = 1. PRV stays an upper bound either way (above PLD in every case
    measured).
    """
    return {"eps_error": min(0.01, 0.003 * target_epsilon)} if accountant == "prv" else {}


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The smallest noise multiplier with ε(steps) ≤ target, to within 0.5% of the target.

    Opacus's bisection tolerance is absolute (0.01): 2% of the budget unused at ε = 0.5.
    The σ returned always has ε strictly below the target (the search keeps the upper end).
    RDP: :func:`.rdp.calibrate_sigma` (the same ε as Opacus's RDP accountant, ~50× faster:
    Opacus's bisection was ~1 s of every run); PRV: Opacus's bisection.
    """
    tolerance = min(0.01, 0.005 * target_epsilon)
    if accountant == "rdp":
        return rdp.calibrate_sigma(target_epsilon, delta, sample_rate, steps, tolerance=tolerance)
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=tolerance,
            **epsilon_options(accountant, target_epsilon),
        )
    )


@dataclass(frozen=True)
class DpPlan:
    """The DP parameters of one run, fixed before the first step."""

    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps_planned: int
    max_grad_norm: float
    target_epsilon: float
    delta: float
    noise_source: str
    grad_sample_mode: str  # resolved: never "auto"
    #: N·q = N / steps_per_epoch, exactly (a truncated int shrinks it: N=392, B=8 gave 7).
    expected_batch_size: float


class _ZeroNoise:
    """No noise: the clipping check compares clipped sums exactly."""

    name = "zero-for-checks"

    def gaussian(self, shape: torch.Size, *, std: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype)

    def state(self) -> torch.Tensor | None:
        return torch.zeros(0)  # not None: drawn in step, no prefetch thread

    def load_state(self, state: torch.Tensor | None) -> None:
        """Nothing to restore."""


def clipping_problems(
    model: nn.Module,
    mode: str,
    example: tuple[torch.Tensor, torch.Tensor],
    *,
    objective: Objective = CROSS_ENTROPY,
) -> list[str]:
    """Whether ``mode`` computes the clipped per-sample gradient sum of ``model`` correctly,
    checked on a synthetic batch against the definition: one backward per sample (of the
    objective's loss on that row alone), each gradient clipped to norm C (half their median,
    so clipping is active), then summed. A loss that mixes the rows of a batch fails it too.

    Neither Opacus's validator nor any mode notices a parameter used outside its layer
    (``F.linear(h, emb.weight)``: 26% off in hooks, 4% in ghost), or a model that mixes
    the samples of a batch; both break the sensitivity bound the guarantee rests on. The
    model runs in train mode (Opacus captures activations only then) with its ``nn.Dropout``
    layers off, so that both computations see the same function.
    """

    def check(m: nn.Module) -> list[str]:
        m.train()
        for sub in m.modules():
            if isinstance(sub, nn.modules.dropout._DropoutNd):
                sub.eval()
        x, y = example
        params = [p for p in m.parameters() if p.requires_grad]
        per_sample = []
        for i in range(len(x)):
            loss = objective.loss(m(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            per_sample.append(
                [
                    torch.zeros_like(p) if g is None else g
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        norms = torch.stack(
            [torch.sqrt(sum((g.double() ** 2).sum() for g in gs)) for gs in per_sample]
        )
        clip = float(norms.median()) / 2 or 1.0
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        truth = [
            sum(float(f) * gs[k].double() for f, gs in zip(factors, per_sample, strict=True))
            for k in range(len(params))
        ]
        plan = DpPlan(
            accountant="rdp",
            noise_multiplier=0.0,
            sample_rate=1.0,
            steps_planned=1,
            max_grad_norm=clip,
            target_epsilon=1.0,
            delta=1e-5,
            noise_source=_ZeroNoise.name,
            grad_sample_mode=mode,
            expected_batch_size=1.0,
        )
        optimizer = torch.optim.SGD(params, lr=0.0)
        engine = GRAD_SAMPLE_MODES[mode](m, optimizer, plan, _ZeroNoise(), objective=objective)
        try:
            engine.step(x, y)
        finally:
            engine.close()
        got = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        err = sum(float((g.double() - t).norm()) ** 2 for g, t in zip(got, truth, strict=True))
        ref = sum(float(t.norm()) ** 2 for t in truth)
        relative = math.sqrt(err) / max(math.sqrt(ref), 1e-12)
        if relative > 1e-3:
            return [
                f"grad_sample_mode {mode!r} clips this model's per-sample gradients wrongly "
                f"(relative error {relative:.2g} on a synthetic batch): a parameter is used "
                "outside its layer (e.g. F.linear(h, emb.weight)), the model or its loss "
                "mixes the samples of a batch, or its forward draws randomness other than nn.Dropout"
            ]
        return []

    return _on_a_copy(model, check)


def resolve_grad_sample_mode(
    model: nn.Module,
    requested: str,
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    objective: Objective = CROSS_ENTROPY,
) -> str:
    """``auto``: the fastest mode that is exact for this model: fast, then ghost, then hooks.

    Fast needs every trainable parameter in a layer whose exact type has a rule in
    :data:`.fastclip.LAYER_RULES` (Linear, Conv1d/2d, Embedding, LayerNorm, RMSNorm,
    GroupNorm), none shared;
    Opacus's ghost clipping raises on tied Linear/Embedding weights. Given ``example`` (a
    :func:`synthetic_batch`), a mode is chosen only if its clipped gradient sum equals the
    per-sample definition on it (:func:`clipping_problems`); if none does, ``hooks`` is
    returned and validation reports why.
    """
    if requested != "auto":
        return requested
    for mode in ("fast", "ghost", "hooks"):
        if mode == "fast" and fast_clip_unsupported_reasons(model):
            continue
        if example is None or not clipping_problems(model, mode, example, objective=objective):
            return mode
    return "hooks"


def plan_privacy(
    model: nn.Module,
    training: Mapping[str, Any],
    privacy: Mapping[str, Any],
    *,
    num_rows: int,
    sample_rate: float,
    steps_per_epoch: int,
    simulated_platform: bool,
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    objective: Objective = CROSS_ENTROPY,
) -> DpPlan:
    """Validate (refusing with every problem at once), then calibrate the noise."""
    problems = validate_dp_config(
        model,
        training,
        privacy,
        num_rows=num_rows,
        simulated_platform=simulated_platform,
        example=example,
        objective=objective,
    )
    if problems:
        raise PolicyError("DP training refused", problems=problems)
    steps = steps_per_epoch * int(training["epochs"])
    try:
        sigma = calibrate_noise(
            target_epsilon=float(privacy["target_epsilon"]),
            delta=float(privacy["delta"]),
            sample_rate=sample_rate,
            steps=steps,
            accountant=privacy.get("accountant", "rdp"),
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise PolicyError("DP training refused", problems=[f"noise calibration: {exc}"]) from exc
    return DpPlan(
        accountant=privacy.get("accountant", "rdp"),
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps_planned=steps,
        max_grad_norm=float(privacy["max_grad_norm"]),
        target_epsilon=float(privacy["target_epsilon"]),
        delta=float(privacy["delta"]),
        noise_source=privacy.get("noise_source", "csprng"),
        grad_sample_mode=resolve_grad_sample_mode(
            model, privacy.get("grad_sample_mode", "auto"), example, objective=objective
        ),
        expected_batch_size=num_rows / steps_per_epoch,
    )


# --------------------------------------------------------------------------- the budget


class PrivacyLedger:
    """The accountant of a run, plus the guard that keeps ε ≤ target.

    ε grows with every step at fixed (σ, q), so the guard computes once (bisection over the
    accountant) how many more steps fit the budget; checking a step is then an integer
    comparison instead of an ε evaluation per step. RDP is :mod:`.rdp` (Opacus's formulas,
    its one-step curve cached: every ε is a few array operations); PRV is Opacus's.
    """

    def __init__(self, plan: DpPlan, history: list[list[float]] | None = None) -> None:
        self.plan = plan
        self._eps_options = epsilon_options(plan.accountant, plan.target_epsilon)
        #: (σ, q, steps) entries, merged as Opacus's accountants merge them.
        self._history: list[tuple[float, float, int]] = [
            (float(s), float(q), int(n)) for s, q, n in history or []
        ]
        self.steps_taken = sum(n for _, _, n in self._history)
        self.max_steps = self.steps_taken + self._steps_within_budget(plan.steps_planned)

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        if not history:
            return 0.0  # nothing composed (PRV would divide by zero)
        if self.plan.accountant == "rdp":
            return rdp.epsilon(history, self.plan.delta, _RDP_ORDERS)
        from opacus.accountants import create_accountant

        probe = create_accountant(self.plan.accountant)
        probe.history = list(history)
        return float(probe.get_epsilon(delta=self.plan.delta, **self._eps_options))

    def _epsilon_with(self, extra_steps: int) -> float:
        extra = [(self.plan.noise_multiplier, self.plan.sample_rate, extra_steps)]
        return self._epsilon_of(self._history + (extra if extra_steps else []))

    def _steps_within_budget(self, planned_total: int) -> int:
        """The most further steps (≤ what the plan has left) with ε ≤ target."""
        remaining = max(planned_total - self.steps_taken, 0)
        if remaining == 0 or self._epsilon_with(remaining) <= self.plan.target_epsilon:
            return remaining
        low, high = 0, remaining  # ε(low) ≤ target < ε(high)
        if self._epsilon_with(0) > self.plan.target_epsilon:
            return 0
        while high - low > 1:
            mid = (low + high) // 2
            if self._epsilon_with(mid) <= self.plan.target_epsilon:
                low = mid
            else:
                high = mid
        return low

    def can_step(self) -> bool:
        """Whether one more step keeps ε within the target."""
        return self.steps_taken + 1 <= self.max_steps

    def record_step(self) -> None:
        if not self.can_step():
            raise RuntimeError("privacy budget exhausted: the trainer must stop before this step")
        sigma, q = self.plan.noise_multiplier, self.plan.sample_rate
        if self._history and self._history[-1][:2] == (sigma, q):
            self._history[-1] = (sigma, q, self._history[-1][2] + 1)
        else:
            self._history.append((sigma, q, 1))
        self.steps_taken += 1

    def epsilon(self) -> float:
        """ε spent so far, from the accountant (authoritative; PRV's is slow)."""
        return self._epsilon_of(self._history)

    def epsilon_cheap(self) -> float | None:
        """ε spent so far if the accountant is cheap per step (RDP), else None."""
        if not ACCOUNTANTS[self.plan.accountant]:
            return None
        return self._epsilon_of(self._history)

    def history(self) -> list[list[float]]:
        """The accountant's history as plain lists (for ``weights_only`` checkpoints)."""
        return [[float(s), float(q), int(n)] for s, q, n in self._history]


# --------------------------------------------------------------------------- step engines


class DpStepEngine(Protocol):
    """One DP-SGD step: per-sample clip, sum, add N(0, σ²C²), divide by the expected batch."""

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one Poisson batch (possibly empty); returns the summed loss (detached)."""
        ...

    def close(self) -> None: ...


class NoisePrefetcher:
    """Noise for all parameters, drawn in blocks of steps, a block ahead on a worker thread.

    A block holds the noise of several steps, so the CSPRNG's per-call overhead (about 15
    small tensor ops) is paid once per block; drawing the next block on a worker thread overlaps
    the AES keystream and Box-Muller maths (torch and OpenSSL release the GIL) with training.
    Only stateless sources (a fresh secret key, nothing to checkpoint) are drawn ahead: a seeded
    source must stay in step with its checkpointed state, so it draws one step at a time.
    """

    _BLOCK_ELEMENTS = 1 << 20  # at most ~4 MiB (float32) of noise waiting

    def __init__(self, source: GaussianSource, params: list[nn.Parameter], *, std: float) -> None:
        self._source = source
        self._shapes = [p.shape for p in params]
        self._sizes = [p.numel() for p in params]
        self._total = sum(self._sizes)
        self._dtype = params[0].dtype
        #: Drawn on the CPU (the CSPRNG is AES on the host cores), copied to the parameters'
        #: device: no gradient ever comes back to host memory for the noise to be added.
        self._device = params[0].device
        self._std = std
        ahead = source.state() is None
        self._block = max(1, min(32, self._BLOCK_ELEMENTS // self._total)) if ahead else 1
        self._pool = ThreadPoolExecutor(1, "cctrain-noise") if ahead else None
        self._next: Future[list[torch.Tensor]] | None = None
        self._ready: list[torch.Tensor] = []

    def _draw(self) -> list[torch.Tensor]:
        shape = torch.Size([self._block * self._total])
        flat = self._source.gaussian(shape, std=self._std, dtype=self._dtype)
        if self._device.type != "cpu":
            flat = flat.to(self._device)
        return list(flat.split(self._total))[::-1]  # popped from the end, in order

    def take(self) -> list[torch.Tensor]:
        """Noise for this step, one tensor per parameter (each draw used exactly once)."""
        if not self._ready:
            if self._pool is None:
                self._ready = self._draw()
            else:
                self._ready = self._next.result() if self._next is not None else self._draw()
                self._next = self._pool.submit(self._draw)
        parts = self._ready.pop().split(self._sizes)
        return [n.view(shape) for n, shape in zip(parts, self._shapes, strict=True)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


#: Opacus's full backward hooks make torch warn that the (data) input needs no gradient. The
#: filter is set once, at import: ``warnings.catch_warnings`` is not thread-safe, and the
#: trainer runs on its own thread while the server's threads use the warnings machinery too
#: (restoring a saved filter list from one thread silently drops another thread's filters).
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


class _EngineBase:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DpPlan,
        noise: GaussianSource,
        *,
        objective: Objective = CROSS_ENTROPY,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.plan = plan
        self.noise = noise
        self.objective = objective
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.noise_draws = NoisePrefetcher(
            noise, self.params, std=plan.noise_multiplier * plan.max_grad_norm
        )
        #: A cluster's rank 0 (:meth:`.cluster.parallel.Coordinator.collect`): adds the other
        #: ranks' clipped sums of the same step to this rank's, before the noise.
        self.combine: Callable[..., Any] | None = None

    def _apply(self, sums: list[torch.Tensor | None]) -> None:
        """grad = (clipped sum + noise) / expected batch size, then the wrapped optimiser steps."""
        noises = self.noise_draws.take()
        scale = 1.0 / self.plan.expected_batch_size
        for p, total, noise in zip(self.params, sums, noises, strict=True):
            p.grad = (noise if total is None else noise.add_(total)).mul_(scale)
        self.optimizer.step()

    def _noise_only_step(self) -> torch.Tensor:
        # An empty Poisson batch is still a step of the mechanism: noise alone is released.
        self._apply([None] * len(self.params))
        return torch.zeros(())

    def close(self) -> None:
        self.noise_draws.close()


class FastEngine(_EngineBase):
    """:mod:`.fastclip` clipping; the wrapped optimiser is the plain torch one."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DpPlan,
        noise: GaussianSource,
        *,
        objective: Objective = CROSS_ENTROPY,
    ) -> None:
        super().__init__(model, optimizer, plan, noise, objective=objective)
        self.clipper = FastClipper(model)

    def clipped_sums(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        with self.clipper.capture():
            logits = self.model(x)
        loss = self.objective.loss(logits, y, "sum")
        grads = dict(
            (id(p), g)
            for p, g in self.clipper.clipped_gradient_sum(
                loss, max_grad_norm=self.plan.max_grad_norm
            )
        )
        return [grads.get(id(p)) for p in self.params], loss.detach()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.combine is not None:  # rank 0 of a cluster: every rank's sums, then the noise
            sums, loss = (
                self.clipped_sums(x, y) if len(x) else ([None] * len(self.params), torch.zeros(()))
            )
            sums, loss = self.combine(sums, loss)
            self._apply(sums)
            return loss
        if len(x) == 0:
            return self._noise_only_step()
        sums, loss = self.clipped_sums(x, y)
        self._apply(sums)
        return loss

    def close(self) -> None:
        super().close()
        self.clipper.close()


#: The engine's name when the fast path clipped Linear layers only.
FastLinearEngine = FastEngine


class EngineFactory(Protocol):
    def __call__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DpPlan,
        noise: GaussianSource,
        *,
        objective: Objective = ...,
    ) -> DpStepEngine: ...


def _opacus_engine(name: str) -> EngineFactory:
    """A factory for :mod:`.dp_opacus`'s engine ``name`` that imports Opacus when called."""

    def build(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DpPlan,
        noise: GaussianSource,
        *,
        objective: Objective = CROSS_ENTROPY,
    ) -> DpStepEngine:
        from . import dp_opacus

        engine: DpStepEngine = getattr(dp_opacus, name)(
            model, optimizer, plan, noise, objective=objective
        )
        return engine

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Opacus's engine :class:`.dp_opacus.{name}` (imports Opacus)."
    return build


GRAD_SAMPLE_MODES: dict[str, EngineFactory] = {
    "fast": FastEngine,
    "hooks": _opacus_engine("OpacusHooksEngine"),
    "ghost": _opacus_engine("OpacusGhostEngine"),
}

#: Names that moved to :mod:`.dp_opacus` (so that importing this module loads no Opacus).
_OPACUS_NAMES = frozenset(
    {
        "OpacusGhostEngine",
        "OpacusHooksEngine",
        "SourceNoiseDPOptimizer",
        "SourceNoiseDPOptimizerGhost",
    }
)


def __getattr__(name: str) -> Any:
    if name in _OPACUS_NAMES:
        from . import dp_opacus

        return getattr(dp_opacus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
