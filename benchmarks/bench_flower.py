"""cctrain's pooled training vs federated averaging with Flower, on the three-hospital demo's data.

The peer a user would otherwise pick: Flower (``flwr``) FedAvg over the same non-IID split
(``examples/three_hospitals/data.py``: hospital A mostly digits 0–4, B mostly 5–9, C a little
of everything), the same MLP (64→128→64→10), the same optimiser (SGD, momentum 0.9) and batch
size, the same number of passes over every record, scored on the same held-out test set:

==========================  ===================================================================
cctrain pooled              ``cctrain_enclave.trainer.train`` on the three shards pooled (what
                            the enclave runs once every provider has uploaded); this measures
                            the training, not the protocol (see ``bench_e2e.py`` for that)
cctrain pooled, DP          the same with the demo's DP policy: DP-SGD, ε = 8, δ = 1e-5, clip
                            1.0, RDP accountant, CSPRNG noise (lr 0.5, batch 128, 30 epochs)
Flower FedAvg               3 clients, ``--local-epochs`` local epochs per round, rounds so
                            that rounds × local epochs = the pooled run's epochs (40 / 30)
Flower FedAvg + DP-SGD      each client runs Opacus DP-SGD locally (record-level DP, the
                            federation's ε = max client ε, matched to the pooled run's ε and δ,
                            same sample rate and steps), see ``flower_worker.py``
==========================  ===================================================================

Flower runs in its own virtual environment because of its dependency pins: this script creates
``benchmarks/.venv-flower`` (``python3 -m venv``; ``pip install flwr torch==2.13.0 numpy
scikit-learn opacus==1.6.0``; nothing is added to the project's dependencies) and runs
``flower_worker.py`` there in a subprocess; the federation runs in-process through Flower's
own server loop (``flwr.simulation`` needs Ray, see the worker). Wall times are of the training
only (imports and process start excluded on both sides), same torch thread count on both
sides, repeats interleaved, medians reported with the ratio to ``cctrain pooled``.

    .venv/bin/python benchmarks/bench_flower.py                    # installs the venv first
    .venv/bin/python benchmarks/bench_flower.py --skip-install --repeats 3 --json flower.json

If the install fails (no network), it says why and exits 0 with ``{"skipped": reason}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "three_hospitals"
for _p in (str(DEMO), str(REPO / "enclave"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

VENV = REPO / "benchmarks" / ".venv-flower"
WORKER = REPO / "benchmarks" / "flower_worker.py"
PACKAGES = ["flwr", "torch==2.13.0", "numpy", "scikit-learn", "opacus==1.6.0"]
NON_DP = {"lr": 0.05, "epochs": 40, "batch_size": 32}
DP = {"lr": 0.5, "epochs": 30, "batch_size": 128}
PRIVACY = {
    "enabled": True,
    "target_epsilon": 8.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "accountant": "rdp",
    "noise_source": "csprng",
}


class Skipped(Exception):
    pass


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(*, skip_install: bool, say: Any) -> None:
    """Create ``.venv-flower`` and install Flower into it; raise Skipped saying why it failed."""
    if skip_install:
        if not venv_python().exists():
            raise Skipped(f"--skip-install, but {VENV} does not exist")
        return
    python3 = shutil.which("python3")
    if python3 is None:
        raise Skipped("no python3 on PATH to create the Flower venv with")
    if not venv_python().exists():
        say(f"creating {VENV} with {python3} -m venv")
        proc = subprocess.run([python3, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise Skipped(f"python3 -m venv failed: {proc.stderr.strip()[-2000:]}")
    say(f"pip install {' '.join(PACKAGES)} (into {VENV})")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(venv_python()), "-m", "pip", "install", "-q", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        raise Skipped("pip install into the Flower venv timed out after 30 min") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "is ignored" not in ln]
        raise Skipped("pip install into the Flower venv failed: " + "\n".join(lines[-15:]))
    say(f"installed in {time.perf_counter() - start:.0f} s")


# --------------------------------------------------------------------------- the two sides


def pooled_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from data import load_demo_data

    data = load_demo_data()
    xs, ys = zip(*data.shards.values(), strict=True)
    return (np.concatenate(xs), np.concatenate(ys), *data.test)


def cctrain_pooled(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, dp: bool, seed: int
) -> dict[str, Any]:
    import torch

    from cctrain_enclave.trainer import build_model_from_spec, train

    cfg = DP if dp else NON_DP
    training = {
        "model": {"name": "mlp", "params": {"hidden": [128, 64]}},
        "optimizer": {"name": "sgd", "lr": cfg["lr"], "momentum": 0.9},
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "seed": seed,
    }
    start = time.perf_counter()
    result = train(
        x,
        y,
        num_classes=10,
        training=training,
        privacy=PRIVACY if dp else {"enabled": False},
        simulated_platform=True,
        checkpoint=None,
        progress=None,
    )
    model = build_model_from_spec(result.model_spec, x.shape[1:], 10)
    model.load_state_dict(result.state_dict)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    wall = time.perf_counter() - start
    cert = result.dp_certificate
    return {
        "accuracy": accuracy,
        "wall_s": wall,
        "epsilon": cert["epsilon"] if cert else None,
        "delta": cert["delta"] if cert else None,
        "noise_multiplier": cert["noise_multiplier"] if cert else None,
        "steps": int(result.metrics["steps"]),
    }


def flower_fedavg(
    *, dp: bool, seed: int, local_epochs: int, threads: int, max_workers: int | None
) -> dict[str, Any]:
    cfg = DP if dp else NON_DP
    rounds = max(1, cfg["epochs"] // local_epochs)
    argv = [str(venv_python()), str(WORKER), "--repo", str(REPO), "--rounds", str(rounds)]
    argv += ["--local-epochs", str(local_epochs), "--batch-size", str(cfg["batch_size"])]
    argv += ["--lr", str(cfg["lr"]), "--seed", str(seed), "--threads", str(threads)]
    if max_workers is not None:
        argv += ["--max-workers", str(max_workers)]
    if dp:
        argv += ["--dp", "--epsilon", str(PRIVACY["target_epsilon"])]
        argv += ["--delta", str(PRIVACY["delta"]), "--max-grad-norm", "1.0"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"flower_worker.py failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- driver


def run(
    *,
    repeats: int = 3,
    local_epochs: int = 2,
    threads: int = 1,
    max_workers: int | None = None,
    skip_install: bool = False,
) -> dict[str, Any]:
    import torch

    say = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        ensure_venv(skip_install=skip_install, say=say)
    except Skipped as exc:
        return {"skipped": str(exc)}
    torch.set_num_threads(threads)
    x, y, x_test, y_test = pooled_data()
    methods = {
        "cctrain pooled (no DP)": lambda s: cctrain_pooled(x, y, x_test, y_test, dp=False, seed=s),
        "cctrain pooled, DP-SGD": lambda s: cctrain_pooled(x, y, x_test, y_test, dp=True, seed=s),
        "Flower FedAvg (no DP)": lambda s: flower_fedavg(
            dp=False, seed=s, local_epochs=local_epochs, threads=threads, max_workers=max_workers
        ),
        "Flower FedAvg + local DP-SGD (Opacus)": lambda s: flower_fedavg(
            dp=True, seed=s, local_epochs=local_epochs, threads=threads, max_workers=max_workers
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(repeats):  # interleaved, so drifting machine load hits all alike
        for name, fn in methods.items():
            res = fn(1 + r)
            runs[name].append(res)
            eps = f", ε {res['epsilon']:.3f}" if res.get("epsilon") is not None else ""
            say(
                f"repeat {r + 1}/{repeats} {name}: acc {res['accuracy']:.3f}, "
                f"{res['wall_s']:.2f} s{eps}"
            )
    base = statistics.median(r["wall_s"] for r in runs["cctrain pooled (no DP)"])
    results = []
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        eps = [r["epsilon"] for r in rs if r.get("epsilon") is not None]
        results.append(
            {
                "method": name,
                "accuracy_median": statistics.median(r["accuracy"] for r in rs),
                "accuracy_min": min(r["accuracy"] for r in rs),
                "accuracy_max": max(r["accuracy"] for r in rs),
                "wall_s_median": wall,
                "wall_ratio_to_cctrain_pooled": wall / base,
                "epsilon": max(eps) if eps else None,
                "delta": PRIVACY["delta"] if eps else None,
                "runs": rs,
            }
        )
    flwr_version = next((r.get("flwr") for r in runs["Flower FedAvg (no DP)"]), None)
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": threads,
            "flower_max_workers": max_workers,
            "flwr": flwr_version,
        },
        "config": {
            "repeats": repeats,
            "local_epochs": local_epochs,
            "non_dp": NON_DP,
            "dp": DP,
            "privacy": PRIVACY,
            "train_rows": int(len(y)),
            "test_rows": int(len(y_test)),
            "flower_transport": "in-process ClientProxy under flwr.server.Server (no Ray, no gRPC)",
        },
        "results": results,
    }


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\ndemo digits: {cfg['train_rows']} training rows over 3 non-IID hospitals, "
        f"{cfg['test_rows']} held-out test rows; medians of {cfg['repeats']} "
        f"(torch {result['machine']['torch']}, {result['machine']['torch_threads']} thread(s), "
        f"flwr {result['machine']['flwr']})"
    )
    print(f"{'method':40s} {'accuracy':>8s} {'[min–max]':>13s} {'wall s':>7s} {'ratio':>6s}  ε")
    for r in result["results"]:
        eps = f"{r['epsilon']:.2f} (δ={r['delta']:g})" if r["epsilon"] is not None else "—"
        print(
            f"{r['method']:40s} {r['accuracy_median']:8.3f} "
            f"[{r['accuracy_min']:.3f}–{r['accuracy_max']:.3f}] "
            f"{r['wall_s_median']:7.2f} {r['wall_ratio_to_cctrain_pooled']:6.2f}  {eps}"
        )
    print(
        "(wall = training only, ratio to cctrain pooled (no DP); cctrain's numbers are the "
        "trainer on pooled data, not the protocol; Flower's exclude any network transport)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-install", action="store_true", help="use .venv-flower as it is")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--local-epochs", type=int, default=2, help="FedAvg local epochs per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    ap.add_argument(
        "--flower-max-workers",
        type=int,
        default=None,
        help="flwr Server's client thread pool (default: Flower's own; 1 runs clients in turn)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)
    result = run(
        repeats=args.repeats,
        local_epochs=args.local_epochs,
        threads=args.threads,
        max_workers=args.flower_max_workers,
        skip_install=args.skip_install,
    )
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        print(json.dumps(result))
    else:
        print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
