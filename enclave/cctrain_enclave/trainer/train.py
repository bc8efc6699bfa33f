"""The training loop run inside the enclave.

``train`` builds the model the policy names, trains it (with DP-SGD when ``privacy.enabled``),
checkpoints and resumes, and returns plain weights plus a DP certificate.

Randomness: the model's initialisation (and dropout) comes from the public ``training.seed``;
nothing private rests on it. Under DP the two random choices the guarantee rests on, which
rows each step samples and the Gaussian noise, come from AES-256-CTR keystreams under keys
from ``os.urandom`` that never leave the trainer's memory (:class:`TrainingRandomness`). Only
the ``insecure-fast`` noise source (simulated platform only) draws both from the seed, so that
tests are reproducible; its certificate says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cctrain.dpcheck import LISTED
from cctrain.errors import CctrainError, PolicyError, ShardError
from cctrain.policy import metric_direction
from cctrain_enclave.errors import TrainingDeviceError

from .checkpoint import Checkpointer, CheckpointError
from .dp import (
    GRAD_SAMPLE_MODES,
    DpPlan,
    DpStepEngine,
    FastEngine,
    PrivacyLedger,
    plan_privacy,
    synthetic_batch,
)
from .guard import StateGuard
from .models import MODEL_BUILDERS, build_builtin_model, load_custom_model
from .noise import NOISE_SOURCES, AesCtrGaussian, GaussianSource
from .objective import Objective, objective_for
from .sampling import (
    BatchPlanner,
    SecretPoissonBatches,
    SeededPoissonBatches,
    ShuffledBatches,
    poisson_sample_rate,
)

__all__ = [
    "OPTIMIZERS",
    "ProgressEvent",
    "TrainingDeviceError",
    "TrainingRandomness",
    "TrainingResult",
    "TrainingStopped",
    "build_model_from_spec",
    "describe_device",
    "resolve_device",
    "train",
]

_CHECKPOINT_FORMAT = 2
#: ``training.task`` values the trainer knows (the policy checks the same list).
TASKS = ("classification", "regression")


class _ValidationTracker:
    """Scores the held-out rows at each epoch's end; decides early stopping; checkpointed."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        early_stopping: Mapping[str, Any] | None,
        objective: Objective,
        *,
        maximize: bool = False,
    ) -> None:
        self.x, self.y = x, y
        self.objective = objective
        self.rule = dict(early_stopping) if early_stopping else None
        self.maximize = maximize
        self.best: float | None = None
        self.bad_epochs = 0
        self.last: dict[str, float] | None = None
        self.stopped_at: int | None = None

    def _score(self, model: nn.Module) -> dict[str, float]:
        return {f"val_{k}": v for k, v in self.objective.evaluate(model, self.x, self.y).items()}

    def after_epoch(self, model: nn.Module, epochs_done: int) -> bool:
        """True when training should stop now."""
        self.last = self._score(model)
        if self.rule is None:
            return False
        value = self.last[self.rule["metric"]]
        sign = 1.0 if self.maximize else -1.0  # +1: larger is better
        if self.best is None or sign * (value - self.best) > float(self.rule["min_delta"]):
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= int(self.rule["patience"]):
            self.stopped_at = epochs_done
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "last": self.last,
            "stopped_at": self.stopped_at,
        }

    def load_state(self, saved: Mapping[str, Any] | None) -> None:
        if saved:
            self.best, self.bad_epochs = saved["best"], int(saved["bad_epochs"])
            self.last, self.stopped_at = saved["last"], saved["stopped_at"]

    def final(self, model: nn.Module) -> dict[str, float | int]:
        """The released validation metrics: of the model as released."""
        out: dict[str, float | int] = dict(self._score(model))
        if self.stopped_at is not None:
            out["stopped_at_epoch"] = self.stopped_at
        return out


@dataclass(frozen=True)
class ProgressEvent:
    """Where training is; ``epsilon`` is ε spent so far (None without DP, or when the accountant
    is too slow to evaluate at every event: PRV reports it at epoch ends and the last step)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    epsilon: float | None


@dataclass(frozen=True)
class TrainingResult:
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float | int]
    dp_certificate: dict[str, Any] | None
    model_spec: dict[str, Any]
    #: Where it trained: "cpu", or "cuda:0 <device name>".
    device: str = "cpu"


DEVICES = ("auto", "cpu", "cuda")


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"


def resolve_device(requested: str, *, allow_gpu: bool = True) -> torch.device:
    """``training.device`` on this machine. ``cpu``: the CPU. ``auto``: the current CUDA
    device when there is one and ``allow_gpu`` (:func:`cctrain.policy.gpu_allowed`), else the
    CPU. ``cuda``: the current CUDA device, refused (never silently the CPU) where there is
    none or where GPUs are not allowed."""
    if requested not in DEVICES:
        raise PolicyError(
            "training config invalid",
            problems=[f"training.device: got {requested!r}, want one of {', '.join(DEVICES)}"],
        )
    if requested == "cpu" or (requested == "auto" and not allow_gpu):
        return torch.device("cpu")
    if requested == "cuda" and not allow_gpu:
        raise TrainingDeviceError(
            "training.device: got 'cuda', but the policy lets no GPU see the data here "
            "(attestation.gpu must be 'required' off the simulated platform)"
        )
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise TrainingDeviceError(
            "training.device: got 'cuda', want a CUDA device, but this machine has none "
            f"({_why_no_cuda()}); refusing to train on the CPU instead"
        )
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """How the manifest names it: ``cpu``, or ``cuda:0 NVIDIA H200``."""
    if device.type == "cuda":
        return f"cuda:{device.index} {torch.cuda.get_device_name(device)}"
    return "cpu"


def _rng_devices(device: torch.device) -> dict[str, Any]:
    """``fork_rng`` arguments that also fork the CUDA generator the model's dropout draws
    from on a GPU (seeded by ``torch.manual_seed`` like the CPU's), so that training leaves
    the process's generators as it found them."""
    if device.type == "cuda":
        return {"devices": [device.index], "device_type": "cuda"}
    return {"devices": []}


def _to_cpu(value: Any) -> Any:
    """A checkpoint's tensors as CPU copies: it loads on any machine (``auto`` may resume a
    GPU run on the CPU), and the device they came from is decided by the policy, not the file."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _gather(x: torch.Tensor, idx: torch.Tensor, *, pinned: bool) -> torch.Tensor:
    """The rows ``idx`` of ``x``. For a GPU they are gathered straight into page-locked memory
    (torch's caching host allocator: reused, and not handed out again before the copy from
    it finished), so the copy to the device is asynchronous. Indexing a pinned tensor would
    not do: its result is ordinary pageable memory."""
    if not pinned:
        return x[idx]
    out = torch.empty((len(idx), *x.shape[1:]), dtype=x.dtype, pin_memory=True)
    return torch.index_select(x, 0, idx, out=out)


@dataclass(frozen=True)
class TrainingRandomness:
    """The secret keys of a DP run's sampling and noise.

    The enclave never passes one: :func:`train` draws both keys from ``os.urandom``. Tests pass
    fixed keys to make a run with the secure sources reproducible.
    """

    sampling_key: bytes
    noise_key: bytes

    @classmethod
    def fixed_for_tests(cls, seed: int) -> TrainingRandomness:
        digest = hashlib.sha512(f"cctrain test randomness {seed}".encode()).digest()
        return cls(digest[:32], digest[32:])


class TrainingStopped(CctrainError):
    """``stop`` was set; the position was checkpointed (when a store was given) for resuming."""


@dataclass(frozen=True)
class OptimizerSpec:
    factory: Callable[..., torch.optim.Optimizer]
    allowed: frozenset[str]


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(
        torch.optim.SGD, frozenset({"lr", "momentum", "weight_decay", "nesterov", "dampening"})
    ),
    "adam": OptimizerSpec(torch.optim.Adam, frozenset({"lr", "betas", "eps", "weight_decay"})),
    "adamw": OptimizerSpec(torch.optim.AdamW, frozenset({"lr", "betas", "eps", "weight_decay"})),
    # The model package's configure_optimizer(params, lr=..., **params): see .plan.
    "package": OptimizerSpec(torch.optim.SGD, frozenset({"lr", "params"})),
}


# --------------------------------------------------------------------------- configuration


def _training_problems(training: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    if training.get("task", "classification") not in TASKS:
        problems.append(
            f"training.task {training.get('task')!r}: must be one of {', '.join(TASKS)}"
        )
    for key, minimum in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
        value = training.get(key, 0 if key == "seed" else None)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            problems.append(f"training.{key} must be an integer >= {minimum}, got {value!r}")
    opt = dict(training.get("optimizer") or {})
    spec = OPTIMIZERS.get(opt.pop("name", None))
    if spec is None:
        problems.append(f"training.optimizer.name must be one of {', '.join(sorted(OPTIMIZERS))}")
    else:
        problems += [
            f"training.optimizer: unknown key {k!r} (allowed: {', '.join(sorted(spec.allowed))})"
            for k in sorted(set(opt) - spec.allowed)
        ]
        lr = opt.get("lr")
        if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
            problems.append(f"training.optimizer.lr must be a number > 0, got {lr!r}")
    model = training.get("model")
    if not isinstance(model, Mapping) or "name" not in model:
        problems.append("training.model must be a table with a name")
    return problems


def _model_spec(training: Mapping[str, Any]) -> dict[str, Any]:
    model = training["model"]
    spec = {"name": model["name"], "params": dict(model.get("params") or {})}
    if model["name"] == "custom":
        spec |= {"source_sha256": model["source_sha256"], "entry": model["entry"]}
    if model["name"] == "package":
        spec |= {
            "package_sha256": model["package_sha256"],
            "module": model["module"],
            "entry": model["entry"],
        }
    return spec


def build_model_from_spec(
    model_spec: Mapping[str, Any],
    feature_shape: Sequence[int],
    num_classes: int,
    *,
    custom_model_source: bytes | None = None,
    model_package: bytes | None = None,
) -> nn.Module:
    """Rebuild the architecture of a :class:`TrainingResult` (weights then load into it).

    A model package's model comes with its initial weights loaded (when it has any)."""
    params = dict(model_spec.get("params") or {})
    if model_spec["name"] == "package":
        if model_package is None:
            raise PolicyError(
                "model package missing",
                problems=["the policy names a model package but none was supplied"],
            )
        from .plan import build_package_model

        return build_package_model(
            model_package, model_spec, feature_shape=feature_shape, num_classes=num_classes
        )
    if model_spec["name"] == "custom":
        if custom_model_source is None:
            raise PolicyError(
                "custom model source missing",
                problems=["the policy names a custom model but no source was supplied"],
            )
        return load_custom_model(
            custom_model_source,
            expected_sha256=model_spec["source_sha256"],
            entry=model_spec["entry"],
            feature_shape=feature_shape,
            num_classes=num_classes,
            params=params,
        )
    return build_builtin_model(model_spec["name"], feature_shape, num_classes, params)


def _check_data(features: np.ndarray, labels: np.ndarray, objective: Objective) -> None:
    problems: list[str] = []
    if features.dtype != np.float32 or features.ndim < 2:
        problems.append(
            f"features must be float32 shaped (N, ...), got {features.dtype} {features.shape}"
        )
    target_problems = objective.target_problems(labels)
    if target_problems:
        problems += target_problems
    elif len(labels) != len(features):
        problems.append(f"{len(features)} feature rows but {len(labels)} labels")
    elif len(labels) == 0:
        problems.append("no rows to train on")
    if problems:
        raise ShardError("training data invalid: " + "; ".join(problems))


def _config_digest(
    training: Mapping[str, Any],
    privacy: Mapping[str, Any],
    features: np.ndarray,
    num_classes: int,
) -> str:
    """Binds a checkpoint to this run: resuming under another config or data size is refused."""
    doc = {
        "training": training,
        "privacy": privacy,
        "rows": int(features.shape[0]),
        "feature_shape": list(features.shape[1:]),
        "num_classes": num_classes,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- the loop


class _PlainStep:
    """One ordinary (non-private) optimisation step: the reference PyTorch loop, minimising
    the mean of the objective's per-sample losses over the batch."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.objective = objective

    #: A cluster's rank 0 (:meth:`.cluster.parallel.Coordinator.collect`): adds the other
    #: ranks' gradients of the same step to this rank's.
    combine: Callable[..., Any] | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.combine is None:
            loss = self.objective.loss(self.model(x), y, "mean")
            loss.backward()
            self.optimizer.step()
            return loss.detach() * len(x)
        # This rank's rows of a ``batch``-row global batch: its share of the batch's mean.
        n = float(batch if batch is not None else len(x))
        params = [p for p in self.model.parameters() if p.requires_grad]
        loss = torch.zeros(())
        if len(x):
            loss = self.objective.loss(self.model(x), y, "sum") / n
            loss.backward()
        total, loss_sum = self.combine([p.grad for p in params], loss.detach() * n)
        for p, g in zip(params, total, strict=True):
            p.grad = g
        self.optimizer.step()
        return loss_sum

    def close(self) -> None:
        """Nothing to release."""


def _dp_parts(
    plan: DpPlan,
    *,
    num_rows: int,
    steps_per_epoch: int,
    seed: int,
    randomness: TrainingRandomness | None,
) -> tuple[BatchPlanner, GaussianSource]:
    """The sampler and noise source of a DP run: both secret unless the noise is insecure."""
    if plan.noise_source == "insecure-fast":
        return (
            SeededPoissonBatches(
                num_rows=num_rows,
                sample_rate=plan.sample_rate,
                steps_per_epoch=steps_per_epoch,
                seed=seed,
            ),
            NOISE_SOURCES["insecure-fast"].build(seed),
        )
    planner = SecretPoissonBatches(
        num_rows=num_rows,
        sample_rate=plan.sample_rate,
        steps_per_epoch=steps_per_epoch,
        key=randomness.sampling_key if randomness is not None else None,
    )
    noise = (
        AesCtrGaussian.from_key_insecure_for_tests(randomness.noise_key)
        if randomness is not None
        else NOISE_SOURCES[plan.noise_source].build(seed)
    )
    return planner, noise


def train(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    objective: Objective | None = None,
    training: dict[str, Any],
    privacy: dict[str, Any],
    simulated_platform: bool,
    checkpoint: Checkpointer | None,
    progress: Callable[[ProgressEvent], None] | None,
    custom_model_source: bytes | None = None,
    model_package: bytes | None = None,
    stop: threading.Event | None = None,
    progress_every: int = 10,
    randomness: TrainingRandomness | None = None,
    validation: Any = None,
    early_stopping: Mapping[str, Any] | None = None,
    allow_gpu: bool = True,
    cluster: Any = None,
) -> TrainingResult:
    """Train the policy's model on ``features``/``labels`` and return weights + DP certificate.

    Resumes from ``checkpoint`` when it holds a checkpoint of this same run; the accountant
    history in it makes ε cover every step taken before a crash. With DP, a step is taken only
    if ε after it stays within ``privacy.target_epsilon``; otherwise training stops early and
    the certificate says so. Under DP the release holds only what the DP step trained plus
    tensors still at their initial value (:mod:`.guard`); anything else refuses the release.

    ``objective`` is what the model minimises and the metrics it reports (by default the
    built-in one of ``training.task``: cross-entropy over ``num_classes`` classes, or the
    squared error of a regression); ``labels`` are its targets (int64 class indices or
    float32 values).

    ``validation`` (arrays with ``features`` and ``labels``, held out of training) is scored
    at every epoch's end; ``early_stopping`` (``metric``, ``patience``, ``min_delta``) stops
    after ``patience`` epochs without an improvement of more than ``min_delta``.

    ``training.device`` (:func:`resolve_device`; ``allow_gpu`` is the policy's
    :func:`cctrain.policy.gpu_allowed`): the model, the optimiser, each batch, the DP step
    (per-sample clipping, the noise added) and the evaluation run there; the sampler's
    indices and the CSPRNG noise are drawn on the CPU, the noise copied to the device, and no
    gradient comes back to host memory during a step. Checkpoints hold CPU copies and load
    onto the device; the returned weights are CPU tensors. On the CPU nothing changes: the
    same operations as before devices existed, bit for bit.
    """
    problems = _training_problems(training)
    if problems:
        raise PolicyError("training config invalid", problems=problems)
    if training["model"]["name"] not in MODEL_BUILDERS and training["model"]["name"] not in (
        "custom",
        "package",
    ):
        raise PolicyError(
            "unknown model",
            problems=[f"model {training['model']['name']!r} is neither built in nor 'custom'"],
        )
    if objective is None:
        task = str(training.get("task", "classification"))
        if task == "classification" and num_classes is None:
            raise PolicyError("training config invalid", problems=["num_classes is missing"])
        objective = objective_for(task, num_outputs=num_classes or 1)
    num_classes = objective.num_outputs
    _check_data(features, labels, objective)
    if validation is not None:
        _check_data(validation.features, validation.labels, objective)
    device = resolve_device(str(training.get("device", "cpu")), allow_gpu=allow_gpu)
    on_gpu = device.type != "cpu"
    # The rows stay in host memory (a GPU holds only the batch it trains on); the sampler's
    # indices are drawn on the CPU, each batch gathered there and copied to the device.
    x_all = torch.from_numpy(features)
    y_all = torch.from_numpy(labels)
    num_rows = len(labels)
    seed = int(training.get("seed", 0))
    model_spec = _model_spec(training)
    digest = _config_digest(training, privacy, features, num_classes)

    with torch.random.fork_rng(**_rng_devices(device)):
        torch.manual_seed(seed)
        # Built on the CPU (the same initial weights on every device), then moved.
        model = build_model_from_spec(
            model_spec,
            features.shape[1:],
            num_classes,
            custom_model_source=custom_model_source,
            model_package=model_package,
        )
        model.to(device)
        model.train()
        from .plan import apply_augment, load_plan_hooks, package_optimizer, plan_objective
        from .schedule import build_schedule

        hooks = load_plan_hooks(model_package, model_spec, training)
        dp_enabled = bool(privacy.get("enabled", False))
        objective = plan_objective(objective, hooks, training, per_row=dp_enabled)
        tracker = None
        if validation is not None:
            tracker = _ValidationTracker(
                torch.from_numpy(validation.features),
                torch.from_numpy(validation.labels),
                early_stopping,
                objective,
                maximize=early_stopping is not None
                and metric_direction(training, str(early_stopping["metric"])) == "max",
            )
        opt_cfg = dict(training["optimizer"])
        if opt_cfg["name"] == "package":
            optimizer = package_optimizer(hooks, model.parameters(), opt_cfg)
        else:
            optimizer = OPTIMIZERS[opt_cfg.pop("name")].factory(model.parameters(), **opt_cfg)
        # The schedule scales these base rates (taken before a checkpoint's state replaces
        # the groups' current rates).
        base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        schedule = build_schedule(training.get("lr_schedule"), hooks.lr_multiplier)
        scheduled = training.get("lr_schedule", {}).get("name", "constant") != "constant"

        planner: BatchPlanner
        ledger: PrivacyLedger | None = None
        noise: GaussianSource | None = None
        plan: DpPlan | None = None
        guard: StateGuard | None = None
        if dp_enabled:
            sample_rate, steps_per_epoch = poisson_sample_rate(
                num_rows=num_rows, batch_size=int(training["batch_size"])
            )
            plan = plan_privacy(
                model,
                training,
                privacy,
                num_rows=num_rows,
                sample_rate=sample_rate,
                steps_per_epoch=steps_per_epoch,
                simulated_platform=simulated_platform,
                example=synthetic_batch(tuple(features.shape[1:]), objective),
                objective=objective,
            )
            planner, noise = _dp_parts(
                plan,
                num_rows=num_rows,
                steps_per_epoch=steps_per_epoch,
                seed=seed,
                randomness=randomness,
            )
            # Built-in models are our code and write nothing in forward: checked at release.
            # Custom code is checked at every step as well.
            guard = StateGuard(model, every_step=model_spec["name"] in ("custom", "package"))
        else:
            planner = ShuffledBatches(
                num_rows=num_rows, batch_size=int(training["batch_size"]), seed=seed
            )
        epochs = int(training["epochs"])
        total_steps = planner.steps_per_epoch * epochs

        # ---- resume
        epoch, step_in_epoch, global_step, samples = 0, 0, 0, 0
        stopped_early = False
        history: list[list[float]] | None = None
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            if saved.get("format") != _CHECKPOINT_FORMAT or saved.get("config_digest") != digest:
                raise CheckpointError("checkpoint belongs to a different training run or format")
            model.load_state_dict(saved["model"])  # copied onto the model's device
            optimizer.load_state_dict(saved["optimizer"])  # state moved to its parameters'
            torch.set_rng_state(saved["torch_rng"])
            if on_gpu and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"], device)
            planner.load_state(saved["planner_rng"])
            if noise is not None:
                noise.load_state(saved["noise_rng"])
            epoch, step_in_epoch = int(saved["epoch"]), int(saved["step_in_epoch"])
            global_step, samples = int(saved["global_step"]), int(saved["samples"])
            stopped_early = bool(saved["stopped_early"])
            history = saved["accountant_history"]
            if tracker is not None:
                tracker.load_state(saved.get("validation"))
        if plan is not None:
            ledger = PrivacyLedger(plan, history)
            if ledger.steps_taken != global_step:
                raise CheckpointError("checkpoint's accountant history disagrees with its step")

        engine: DpStepEngine | _PlainStep
        if plan is not None and noise is not None:
            engine = GRAD_SAMPLE_MODES[plan.grad_sample_mode](
                model, optimizer, plan, noise, objective=objective
            )
        else:
            engine = _PlainStep(model, optimizer, objective)
        if guard is not None:
            guard.attach(optimizer)
        if cluster is not None:
            # Data-parallel over the cluster's ranks (.cluster.parallel): this is rank 0.
            if plan is not None and not isinstance(engine, FastEngine):
                raise PolicyError(
                    "more than one rank needs the fast per-sample clipping path",
                    problems=[f"grad_sample_mode resolved to {plan.grad_sample_mode!r}"],
                )
            cluster.start(
                features=features,
                labels=labels,
                model=model,
                # Each worker checks it against its own signed policy's.
                plan={"training": training, "privacy": privacy},
                model_package=model_package,
                custom_model_source=custom_model_source,
            )
            engine.combine = cluster.collect

        def save(epoch_: int, step_: int, planner_state: dict[str, Any]) -> None:
            if checkpoint is None:
                return
            eps = None
            if ledger is not None:  # the enclave journals the ε each checkpoint reaches
                eps = ledger.epsilon_cheap()
                eps = ledger.epsilon() if eps is None else eps
            state = {
                "format": _CHECKPOINT_FORMAT,
                "config_digest": digest,
                "epoch": epoch_,
                "step_in_epoch": step_,
                "global_step": global_step,
                "samples": samples,
                "stopped_early": stopped_early,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "planner_rng": planner_state,
                "noise_rng": noise.state() if noise is not None else None,
                "accountant_history": ledger.history() if ledger is not None else [],
                "validation": tracker.state() if tracker is not None else None,
            }
            if on_gpu:
                state = _to_cpu(state) | {"cuda_rng": torch.cuda.get_rng_state(device)}
            checkpoint.save(
                state,
                step=global_step,
                epsilon=eps,
            )

        finished = False
        try:
            while epoch < epochs and not stopped_early:
                epoch_start_state = planner.state()
                first = step_in_epoch
                batches = planner.epoch_batches(first)
                for i in range(first, planner.steps_per_epoch):
                    if stop is not None and stop.is_set():
                        save(epoch, i, epoch_start_state)
                        raise TrainingStopped(f"training stopped at step {global_step}")
                    if ledger is not None and not ledger.can_step():
                        stopped_early = True
                        break
                    idx = batches[i - first]
                    own = idx if cluster is None else cluster.dispatch(global_step, idx)
                    if scheduled:
                        factor = schedule(global_step, total_steps)
                        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                            group["lr"] = base * factor
                    xb, yb = apply_augment(
                        hooks,
                        _gather(x_all, own, pinned=on_gpu),
                        _gather(y_all, own, pinned=on_gpu),
                        seed=seed,
                        step=global_step,
                        per_row=dp_enabled,
                    )
                    if on_gpu:
                        xb = xb.to(device, non_blocking=True)
                        yb = yb.to(device, non_blocking=True)
                    if guard is not None:
                        guard.begin_step()
                    loss_sum = (
                        engine.step(xb, yb, batch=len(idx))
                        if isinstance(engine, _PlainStep)
                        else engine.step(xb, yb)
                    )
                    if guard is not None:
                        guard.end_step()
                    if ledger is not None:
                        ledger.record_step()
                    global_step += 1
                    samples += len(idx)
                    last_of_epoch = i == planner.steps_per_epoch - 1
                    if progress is not None and (
                        global_step % progress_every == 0 or last_of_epoch
                    ):
                        eps = None
                        if ledger is not None:
                            eps = ledger.epsilon_cheap()
                            if eps is None and last_of_epoch:
                                eps = ledger.epsilon()
                        progress(
                            ProgressEvent(
                                step=global_step,
                                total_steps=total_steps,
                                epoch=epoch,
                                loss=float(loss_sum) / max(len(idx), 1),
                                epsilon=eps,
                            )
                        )
                    if (
                        checkpoint is not None
                        and global_step % checkpoint.every_steps == 0
                        and not last_of_epoch
                    ):
                        save(epoch, i + 1, epoch_start_state)
                else:
                    epoch, step_in_epoch = epoch + 1, 0
                    if tracker is not None and tracker.after_epoch(model, epoch) and epoch < epochs:
                        stopped_early = True  # only while epochs remain: else it just ended
                    save(epoch, 0, planner.state())
            if stopped_early:
                # Recorded so a restart does not try the refused step again.
                save(epochs, 0, planner.state())
            finished = True
        finally:
            if cluster is not None:
                cluster.finish("done" if finished else "stopped")
            engine.close()
            if guard is not None:
                guard.detach()

        if guard is not None:
            guard.begin_release()
        train_scores = objective.evaluate(model, x_all, y_all)
        if guard is not None:
            guard.check_release()

    certificate = None
    if ledger is not None and plan is not None and noise is not None and guard is not None:
        epsilon = ledger.epsilon()
        if epsilon > plan.target_epsilon:  # the guard makes this unreachable; never release if not
            raise CctrainError(f"privacy budget exceeded: ε={epsilon} > {plan.target_epsilon}")
        certificate = {
            "accountant": plan.accountant,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "expected_batch_size": plan.expected_batch_size,
            "steps": ledger.steps_taken,
            "steps_planned": plan.steps_planned,
            "max_grad_norm": plan.max_grad_norm,
            "epsilon": epsilon,
            "target_epsilon": plan.target_epsilon,
            "delta": plan.delta,
            "noise_source": noise.name,
            "sampling": planner.name,
            "grad_sample_mode": plan.grad_sample_mode,
            "stopped_early": stopped_early,
            # What the guarantee covers in the weights, and what is released because it is
            # still the value the public seed built (checked bit for bit). The release seals
            # these names into the weights for a model owner's package (dpcheck).
            "tensor_names": LISTED,
            "covers": guard.trainable,
            "unchanged_from_initialisation": guard.frozen,
        }
        if cluster is not None:  # every rank whose sums went into the mechanism
            certificate["rank_evidence_sha256"] = [
                m.evidence_sha256 for m in cluster.session.members
            ]
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    metrics: dict[str, float | int] = {
        **{f"train_{k}": v for k, v in train_scores.items()},
        "steps": global_step,
        "samples": samples,
    }
    if tracker is not None:
        metrics |= tracker.final(model)
    if not all(math.isfinite(float(v)) for v in metrics.values()):
        raise CctrainError("training diverged: non-finite loss")
    if hooks.names:
        model_spec = model_spec | {"hooks": hooks.names}
    return TrainingResult(
        state_dict=state_dict,
        metrics=metrics,
        dp_certificate=certificate,
        model_spec=model_spec,
        device=describe_device(device),
    )
