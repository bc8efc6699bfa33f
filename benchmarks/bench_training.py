"""Training throughput: plain PyTorch loop vs cctrain ``train`` without and with DP.

Same model (built by cctrain's registry from the same seed), same synthetic data, same
optimiser and batch size, three ways:

* ``plain``: the idiomatic PyTorch loop (a permutation per epoch, slices, zero_grad /
  backward / step), nothing else;
* ``cctrain``: ``train(...)`` with privacy disabled, end to end (setup + final evaluation);
* ``dp-<mode>``: ``train(...)`` with DP (Poisson sampling, RDP accountant, CSPRNG noise),
  for each grad-sample mode: Opacus ``hooks``, Opacus ``ghost``, cctrain ``fast`` (the layers
  of ``fastclip.LAYER_RULES``: Linear, Conv, Embedding, LayerNorm/RMSNorm/GroupNorm), end to
  end, noise calibration included.

Workloads: MLPs, the registry CNN (Conv2d + GroupNorm), and a transformer block (token +
position embeddings, causal self-attention in plain functional code, LayerNorm, MLP) built
through the training-plan API as a model package, as a model owner would.

Each is timed over whole runs (end to end) and over epochs 2..E (steady state, N rows per
epoch); medians over ``--repeats`` are reported with their ratio to ``plain``. ``--quick`` keeps the whole script under a minute; ``--json PATH`` writes
the results; ``--only cnn,transformer`` runs the workloads whose names contain one of the
words. Targets: cctrain/plain >= 0.95, dp-fast/plain >= 0.8 (steady state), DP end to end
>= 0.5x plain at 10k rows.

``--split`` prints where each DP run's time goes (one run per workload and mode, after a
warm-up run): noise calibration, the config and model checks, the budget guard, the engine
(Opacus wrapping), the first step, the other steps, the final evaluation and ε. Every DP run
calibrates from nothing (the accountant's curve cache is cleared first), as the enclave does.

    .venv/bin/python benchmarks/bench_training.py --quick
    .venv/bin/python benchmarks/bench_training.py --quick --only cnn
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import statistics
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cctrain.package import build_package
from cctrain_enclave.trainer import build_builtin_model, rdp, train
from cctrain_enclave.trainer import dp as dp_module
from cctrain_enclave.trainer import objective as objective_module

#: A transformer block as a model owner's training plan (``plan.py`` of a model package):
#: token + position embeddings, pre-LayerNorm causal self-attention (functional softmax), an
#: MLP, a final LayerNorm and a linear head on the mean over positions. Features are token
#: ids stored as float32 (NPZ rows are float32).
TRANSFORMER_PLAN = """
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, seq, vocab, dim, heads, classes):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.lnf = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        # Clamped: the enclave's model checks run on a Gaussian synthetic batch, not tokens.
        idx = x.round().long().clamp(0, self.tok.num_embeddings - 1)
        b, t = idx.shape
        # Positions per sample (B, T), so the position embedding's gradient is per sample too.
        pos = torch.arange(t, device=idx.device).expand(b, t)
        h = self.tok(idx) + self.pos(pos)
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(b, t, -1))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(self.lnf(h).mean(1))


def build_model(feature_shape, num_outputs, vocab=64, dim=64, heads=4):
    return Block(feature_shape[0], vocab, dim, heads, num_outputs)
"""


@dataclass(frozen=True)
class Workload:
    name: str
    model: dict[str, Any]
    feature_shape: tuple[int, ...]
    rows: int
    epochs: int
    modes: tuple[str, ...]
    #: ``normal``: Gaussian features; ``tokens``: integer token ids (as float32) below 64.
    data: str = "normal"
    #: A model package's ``plan.py`` (the model is then ``{"name": "package", ...}``).
    plan: str | None = None

    def package(self) -> bytes | None:
        return None if self.plan is None else build_package({"plan.py": self.plan})

    def build(self, num_classes: int) -> torch.nn.Module:
        """The model as the plain loop builds it: the registry's, or the plan's entry point."""
        if self.plan is None:
            return build_builtin_model(
                self.model["name"], self.feature_shape, num_classes, self.model["params"]
            )
        module = types.ModuleType("bench_plan")
        exec(compile(self.plan, "plan.py", "exec"), module.__dict__)  # noqa: S102 - our own text
        return module.build_model(self.feature_shape, num_classes, **self.model["params"])


def _package_model(plan: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "package",
        "package_sha256": hashlib.sha256(build_package({"plan.py": plan})).hexdigest(),
        "module": "plan",
        "entry": "build_model",
        "params": params,
    }


def _workloads(quick: bool) -> list[Workload]:
    """Quick: one size each. Full: the MLP over 10k → 1M rows (the scaling curve), the rest at 20k."""
    mlp_rows = [10_000] if quick else [10_000, 100_000, 1_000_000]
    work = [
        Workload(
            f"mlp-64x[64,32]-{rows // 1000}k",
            {"name": "mlp", "params": {"hidden": [64, 32]}},
            (64,),
            rows,
            3 if rows <= 100_000 else 2,
            ("fast", "ghost", "hooks") if rows <= 10_000 else ("fast",),
        )
        for rows in mlp_rows
    ]
    scale = 1 if quick else 4
    work += [
        Workload(
            "mlp-784x[128,64]",
            {"name": "mlp", "params": {"hidden": [128, 64]}},
            (784,),
            2_500 * scale,
            3,
            # Opacus hooks materialise 784×128 per-sample gradients: ~0.01× plain, and the
            # slowest thing in the suite; the quick run leaves it to the full one.
            ("fast", "ghost") if quick else ("fast", "ghost", "hooks"),
        ),
        Workload(
            "cnn-1x16x16",
            {"name": "cnn", "params": {"channels": [8, 16], "hidden": 32}},
            (1, 16, 16),
            2_500 * scale,
            3,
            ("fast", "ghost", "hooks"),
        ),
        Workload(
            "transformer-t32-d64",
            _package_model(TRANSFORMER_PLAN, {"vocab": 64, "dim": 64, "heads": 4}),
            (32,),
            2_000 * scale,
            3,
            # Opacus ghost fails on it (a .view on a transposed tensor in its Linear norm).
            ("fast", "hooks"),
            data="tokens",
            plan=TRANSFORMER_PLAN,
        ),
    ]
    return work


def _data(w: Workload, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if w.data == "tokens":
        tokens = rng.integers(0, 64, size=(w.rows, *w.feature_shape))
        # The label: which class's tokens (token % classes) are most frequent in the row.
        counts = np.stack([(tokens % num_classes == c).sum(1) for c in range(num_classes)], 1)
        return tokens.astype(np.float32), counts.argmax(1).astype(np.int64)
    x = rng.normal(size=(w.rows, *w.feature_shape)).astype(np.float32)
    proj = rng.normal(size=(int(np.prod(w.feature_shape)), num_classes))
    y = (x.reshape(w.rows, -1) @ proj).argmax(1).astype(np.int64)
    return x, y


def _training(w: Workload, batch_size: int) -> dict[str, Any]:
    return {
        "task": "classification",
        "model": w.model,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        "epochs": w.epochs,
        "batch_size": batch_size,
        "seed": 0,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_loop(
    x_np: np.ndarray,
    y_np: np.ndarray,
    w: Workload,
    training: dict[str, Any],
    num_classes: int,
    device: str = "cpu",
) -> tuple[float, float]:
    """The reference: what a PyTorch user writes (on a GPU: the data moved there once)."""
    torch.manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    model = w.build(num_classes)
    model.to(device)
    opt = training["optimizer"]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt["lr"], momentum=opt["momentum"], weight_decay=0.0
    )
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    gen = torch.Generator().manual_seed(0)
    samples = 0
    epoch_ends = []
    for _ in range(training["epochs"]):
        for idx in torch.randperm(len(y), generator=gen).to(device).split(training["batch_size"]):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            samples += len(idx)
        _sync(device)
        epoch_ends.append(time.perf_counter())
    return _rates(samples, start, epoch_ends, len(y))


def _rates(samples: int, start: float, epoch_ends: list[float], rows: int) -> tuple[float, float]:
    """(end-to-end samples/s, steady-state samples/s over epochs 2..E, N rows per epoch)."""
    end_to_end = samples / (epoch_ends[-1] - start)
    steady = rows * (len(epoch_ends) - 1) / (epoch_ends[-1] - epoch_ends[0])
    return end_to_end, steady


def cctrain_run(
    x: np.ndarray,
    y: np.ndarray,
    training: dict[str, Any],
    privacy: dict[str, Any],
    classes: int,
    package: bytes | None = None,
) -> tuple[float, float]:
    """``train`` end to end (setup, calibration, final evaluation included), and steady state."""
    rdp.clear_cache()  # a run calibrates from nothing (one run per enclave process)
    epoch_ends: list[float] = []
    start = time.perf_counter()
    result = train(
        x,
        y,
        num_classes=classes,
        training=training,
        privacy=privacy,
        simulated_platform=True,
        checkpoint=None,
        progress=lambda _event: epoch_ends.append(time.perf_counter()),
        progress_every=10**9,  # events at epoch ends only
        model_package=package,
    )
    end = time.perf_counter()  # end to end includes the final evaluation
    samples = int(result.metrics["samples"])
    steady = len(y) * (len(epoch_ends) - 1) / (epoch_ends[-1] - epoch_ends[0])
    return samples / (end - start), steady


def _privacy(mode: str, rows: int) -> dict[str, Any]:
    return {
        "enabled": True,
        "target_epsilon": 3.0,
        "delta": min(1e-5, 0.1 / rows),  # δ must stay below 1/N
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "noise_source": "csprng",
        "grad_sample_mode": mode,
    }


class _Split:
    """Times the parts of one ``train`` call by wrapping the functions it calls (module
    attributes, restored after): what the split of a DP run's time is."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def _add(self, part: str, took: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + took

    def wrap(self, owner: Any, name: str, part: str) -> None:
        real = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self._add(part, time.perf_counter() - start)

        self._undo.append((owner, name, real))
        setattr(owner, name, timed)

    def wrap_engine(self, mode: str) -> None:
        modes = dp_module.GRAD_SAMPLE_MODES
        real = modes[mode]
        split = self

        def build(*args: Any, **kwargs: Any) -> Any:
            if isinstance(args[3], dp_module._ZeroNoise):  # the model check's engine
                return real(*args, **kwargs)
            start = time.perf_counter()
            engine = real(*args, **kwargs)
            split._add("engine (wrapping)", time.perf_counter() - start)
            step = engine.step
            calls = [0]

            def timed_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                t0 = time.perf_counter()
                try:
                    return step(x, y)
                finally:
                    calls[0] += 1
                    part = "first step (warm-up)" if calls[0] == 1 else "other steps"
                    split._add(part, time.perf_counter() - t0)

            engine.step = timed_step
            return engine

        self._undo.append((modes, mode, real))
        modes[mode] = build

    def restore(self) -> None:
        for owner, name, real in reversed(self._undo):
            if isinstance(owner, dict):
                owner[name] = real
            else:
                setattr(owner, name, real)
        self._undo.clear()


def dp_split(
    x: np.ndarray, y: np.ndarray, training: dict[str, Any], privacy: dict[str, Any], classes: int
) -> dict[str, float]:
    """Seconds per part of one DP ``train`` run (and ``total``, ``other``)."""
    split = _Split()
    split.wrap(dp_module, "calibrate_noise", "noise calibration")
    split.wrap(dp_module, "validate_dp_config", "config + model checks")
    split.wrap(dp_module, "resolve_grad_sample_mode", "mode resolution")
    split.wrap(train_module, "PrivacyLedger", "budget guard (ledger)")
    split.wrap(dp_module.PrivacyLedger, "epsilon", "final ε")
    split.wrap(objective_module.Objective, "evaluate", "evaluation")
    split.wrap_engine(privacy["grad_sample_mode"])
    try:
        start = time.perf_counter()
        cctrain_run(x, y, training, privacy, classes)
        total = time.perf_counter() - start
    finally:
        split.restore()
    out = dict(split.seconds)
    out["other (data, sampler, noise source)"] = total - sum(out.values())
    out["total"] = total
    return out


#: The module (the package's ``train`` attribute is the function of that name).
train_module = importlib.import_module("cctrain_enclave.trainer.train")

TARGET_NO_DP = 0.95
#: DP with cctrain's fast clipping / plain non-DP, steady state, every model it covers.
TARGET_DP_FAST = 0.8


def run(
    quick: bool = False,
    repeats: int | None = None,
    *,
    batch_size: int = 256,
    threads: int = 1,
    log: Any = print,
    workloads: list[Workload] | None = None,
    device: str = "cpu",
    split: bool = False,
) -> dict[str, Any]:
    """Every workload three ways (plus DP modes), interleaved over ``repeats``; medians."""
    torch.set_num_threads(threads)
    repeats = repeats or (2 if quick else 3)
    classes = 10
    results: list[dict[str, Any]] = []
    splits: list[dict[str, Any]] = []
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch_size}, "
        f"repeats={repeats}, device {device}"
    )
    for w in workloads or _workloads(quick):
        x, y = _data(w, classes)
        package = w.package()
        training = _training(w, batch_size) | {
            "device": "cuda" if device.startswith("cuda") else "cpu"
        }
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "cctrain": []}
        runs |= {f"dp-{m}": [] for m in w.modes}
        for _ in range(repeats):  # interleaved, so drifting machine load hits all alike
            runs["plain"].append(plain_loop(x, y, w, training, classes, device))
            runs["cctrain"].append(
                cctrain_run(x, y, training, {"enabled": False}, classes, package)
            )
            for m in w.modes:
                runs[f"dp-{m}"].append(
                    cctrain_run(x, y, training, _privacy(m, w.rows), classes, package)
                )
        base_e2e = statistics.median(r[0] for r in runs["plain"])
        base_steady = statistics.median(r[1] for r in runs["plain"])
        log(f"{w.name}: {w.rows} rows, {w.epochs} epochs")
        for name, values in runs.items():
            e2e = statistics.median(r[0] for r in values)
            steady = statistics.median(r[1] for r in values)
            log(
                f"  {name:12s} {e2e:10.0f}/s e2e ({e2e / base_e2e:5.3f}x)  {steady:10.0f}/s steady ({steady / base_steady:5.3f}x)"
            )
            results.append(
                {
                    "workload": w.name,
                    "model": w.model["name"],
                    "rows": w.rows,
                    "epochs": w.epochs,
                    "way": name,
                    "end_to_end_samples_per_s": e2e,
                    "end_to_end_ratio": e2e / base_e2e,
                    "steady_samples_per_s": steady,
                    "steady_ratio": steady / base_steady,
                }
            )
        if split:
            for m in w.modes:
                parts = dp_split(x, y, training, _privacy(m, w.rows), classes)
                total = parts["total"]
                log(f"  dp-{m} split of {total:.3f} s:")
                for part, took in parts.items():
                    if part != "total":
                        log(f"    {part:38s} {took:7.3f} s {100 * took / total:5.1f}%")
                splits.append({"workload": w.name, "way": f"dp-{m}", "seconds": parts})
    return {
        "batch_size": batch_size,
        "device": device,
        "threads": threads,
        "repeats": repeats,
        "targets": {"cctrain_over_plain": TARGET_NO_DP, "dp_fast_over_plain": TARGET_DP_FAST},
        "results": results,
        "dp_splits": splits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s in all")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: two OpenMP threads on a 2-vCPU VM slow small "
        "ops down badly; 1 leaves a core for cctrain's noise prefetch thread)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check)")
    parser.add_argument(
        "--tiny", action="store_true", help="one tiny workload, seconds (gpu_check.sh --dry-run)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated words: run only the workloads whose names contain one "
        "(e.g. cnn,transformer)",
    )
    parser.add_argument(
        "--split", action="store_true", help="print where each DP run's time goes (setup parts)"
    )
    args = parser.parse_args()
    workloads = None
    if args.tiny:
        workloads = [
            Workload(
                "mlp-tiny",
                {"name": "mlp", "params": {"hidden": [16]}},
                (8,),
                512,
                2,
                ("fast", "hooks"),
            )
        ]
    if args.only:
        words = [w for w in args.only.split(",") if w]
        workloads = [
            w for w in workloads or _workloads(args.quick) if any(s in w.name for s in words)
        ]
        if not workloads:
            names = ", ".join(w.name for w in _workloads(args.quick))
            parser.error(f"--only {args.only!r} matches none of: {names}")
    out = run(
        args.quick,
        args.repeats,
        batch_size=args.batch_size,
        threads=args.threads,
        workloads=workloads,
        device=args.device,
        split=args.split,
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
