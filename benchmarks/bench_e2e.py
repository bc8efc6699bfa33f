"""End to end: the demo's flow, from the first attestation to a verified, unsealed model.

For N data providers (the demo's training data, digits from scikit-learn, split non-IID into N
parts: each class goes 90 % to one "major" site, 10 % spread over the others; the held-out test
set is the demo's) and one recipient, on the simulated TEE:

* the enclave runs as its own process (``python -m cctrain_enclave serve --platform simulated``)
  on a fresh state directory per repeat; its start-up (imports, keys, TLS) is not timed but
  reported;
* the data owners are **threads in the benchmark process** (``DataOwner``, real gRPC+TLS on
  loopback, one channel each); the recipient is ``Recipient`` in the main thread;
* an observer (the recipient's key, attested before the clock starts, not timed) holds the
  ``WatchTraining`` stream open from the start, so every phase transition and progress event of
  the enclave is stamped on the benchmark's clock as it arrives.

Phases are contiguous on one clock (their sum is the total):

=============  ==============================================================================
attest         t0 → every owner has attested the enclave (parse → verify → validate); the
               owners start together and wait for each other here
upload         → the enclave's ``training`` phase event: every shard encrypted, streamed,
               decrypted, hashed, fsynced, validated and receipted (the last owner checks its
               receipt while training already runs; that overlap is not counted twice)
train          → the last progress event (step = total_steps): shards loaded from the sealed
               store, the policy's model trained, a sealed checkpoint per epoch
seal           → the ``released`` phase event: final train-set evaluation (ms), weights to
               safetensors, fresh evidence bound to the model hash, manifest signed, weights
               HPKE-sealed per recipient, written
fetch_verify   → the recipient holds a verified, unsealed model: its own attestation, fetch,
               manifest signature, evidence, policy digest, unseal, model hash
=============  ==============================================================================

Repeats are interleaved over N (so drifting machine load hits every N alike); medians are
reported. The released model is scored on the held-out test set afterwards (not timed).
Training uses the demo's non-DP configuration (MLP 64→128→64→10, SGD lr 0.05 momentum 0.9,
batch 32, 40 epochs); ``--dp`` uses the demo's DP one (ε = 8, δ = 1e-5, lr 0.5, batch 128,
30 epochs). ``--quick``: N ∈ {2, 3}, one repeat, 2 epochs (< 60 s).

    .venv/bin/python benchmarks/bench_e2e.py --quick
    .venv/bin/python benchmarks/bench_e2e.py --parties 2,3,8 --repeats 3 --json e2e.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "three_hospitals"
# The checkout's own cctrain/cctrain_enclave (whose code measurement the policy pins) ahead of
# any installed copy; the enclave child gets the same path (see _env).
for _p in (str(DEMO), str(REPO / "enclave"), str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _machine import machine_info  # noqa: E402

from cctrain.local import LocalEnclave  # noqa: E402

PHASES = ("attest", "upload", "train", "seal", "fetch_verify")
RECIPIENT = "research-lab"
NUM_CLASSES = 10


# --------------------------------------------------------------------------- data


def noniid_split(
    x: np.ndarray, y: np.ndarray, n: int, *, seed: int = 7, major_share: float = 0.9
) -> list[tuple[np.ndarray, np.ndarray]]:
    """N non-IID parts: class c goes ``major_share`` to site ``c * n // classes``, the rest is
    dealt round-robin to the other sites (n = 1: everything to one site)."""
    classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        major = c * n // classes
        others = [i for i in range(n) if i != major]
        k = len(idx) if not others else int(round(len(idx) * major_share))
        parts[major].append(idx[:k])
        for j, site in enumerate(others):
            parts[site].append(idx[k:][j :: len(others)])
    out = []
    for p in parts:
        sel = np.sort(np.concatenate(p))
        out.append((x[sel], y[sel]))
    return out


def demo_train_test() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's training rows (its three shards, pooled) and its held-out test set."""
    from data import load_demo_data

    data = load_demo_data()
    xs, ys = zip(*data.shards.values(), strict=True)
    x_test, y_test = data.test
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


# --------------------------------------------------------------------------- consortium


def training_config(*, dp: bool, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo's training and privacy tables (policy.toml.in with demo.py's values)."""
    training = {
        "model": {"name": "mlp", "params": {"hidden": [128, 64]}},
        "optimizer": {"name": "sgd", "lr": 0.5 if dp else 0.05, "momentum": 0.9},
        "epochs": 2 if quick else (30 if dp else 40),
        "batch_size": 128 if dp else 32,
        "seed": 1,
    }
    privacy: dict[str, Any] = (
        {
            "enabled": True,
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "accountant": "rdp",
            "noise_source": "csprng",
        }
        if dp
        else {"enabled": False}
    )
    return training, privacy


@dataclass
class Consortium:
    providers: list[str]
    keys: dict[str, Any]  # party id -> PartyKeys
    signed: Any  # SignedPolicy
    policy_path: Path


def make_consortium(root: Path, n: int, *, dp: bool, quick: bool, measurement: str) -> Consortium:
    from cctrain.crypto.keys import PartyKeys
    from cctrain.policy import SignedPolicy, parse_policy

    providers = [f"site-{i + 1}" for i in range(n)]
    keys = {pid: PartyKeys.generate(pid) for pid in (*providers, RECIPIENT)}
    training, privacy = training_config(dp=dp, quick=quick)
    expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=1)
    doc = {
        "version": 1,
        "name": f"bench-e2e-{n}-parties",
        "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "parties": [
            {"id": pid, "roles": ["data_provider"], "signing_key": keys[pid].signing_public}
            for pid in providers
        ]
        + [
            {
                "id": RECIPIENT,
                "roles": ["recipient"],
                "signing_key": keys[RECIPIENT].signing_public,
                "hpke_key": keys[RECIPIENT].hpke_public,
            }
        ],
        "attestation": {
            "platforms": ["simulated"],
            "allow_simulated": True,
            "allow_debug": False,
            "reference": {"simulated": {"measurements": [measurement]}},
        },
        "data": {
            "formats": ["npz"],
            "features": {"shape": [64], "dtype": "float32"},
            "labels": {"num_classes": NUM_CLASSES},
            "min_rows": 10,
            "max_rows": 100_000,
            "max_bytes": 64 << 20,
        },
        "training": training,
        "privacy": privacy,
        "start": {"require_uploads_from": providers, "auto_start": True},
        "release": {
            "recipients": [RECIPIENT],
            "metrics": ["train_loss", "train_accuracy", "steps", "samples"],
            "approvals_required_from": [],
        },
    }
    signed = SignedPolicy.new(parse_policy(json.dumps(doc).encode(), "json"))
    env = signed.envelope
    for pid, k in keys.items():
        env = env.sign(pid, k.signing_key)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "policy.signed.json"
    path.write_text(env.to_json())
    return Consortium(providers, keys, SignedPolicy(env, signed.policy), path)


# --------------------------------------------------------------------------- enclave process


def snapshot_code(dest: Path) -> tuple[Path, str]:
    """A copy of the checkout's ``cctrain`` and ``cctrain_enclave`` for the enclave children,
    and its simulated-platform measurement (computed by a child importing the copy).

    Every enclave of the run imports this copy, so edits to the checkout during a run cannot
    make the enclave's measurement differ from the one the policies pin."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "cctrain", dest / "cctrain", ignore=ignore)
    shutil.copytree(REPO / "enclave" / "cctrain_enclave", dest / "cctrain_enclave", ignore=ignore)
    code = "from cctrain.measure import code_measurement; print(code_measurement().hex())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(dest), capture_output=True, text=True, check=True
    )
    return dest, out.stdout.strip()


def _env(code: Path, threads: int | None = None) -> dict[str, str]:
    parts = (str(code), os.environ.get("PYTHONPATH", ""))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in parts if p))
    if threads is not None:  # torch's intra-op threads in the enclave (default: torch's own)
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@contextlib.contextmanager
def enclave_process(
    policy: Path, state: Path, log: Path, code: Path, threads: int | None = None
) -> Iterator[tuple[str, float]]:
    """(address, start-up seconds) of a fresh ``cctrain_enclave serve`` child; SIGTERM after."""
    enclave = LocalEnclave(policy=policy, state_dir=state, log=log, env=_env(code, threads))
    try:
        enclave.start()
        yield enclave.address, enclave.startup_s
    finally:
        enclave.stop()


# --------------------------------------------------------------------------- one run


class _Observer(threading.Thread):
    """Holds the WatchTraining stream open; stamps every event on the benchmark's clock."""

    def __init__(self, session: Any) -> None:
        super().__init__(name="bench-watch", daemon=True)
        self.session = session
        self.events: list[tuple[float, Any]] = []
        self.error: BaseException | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        try:
            for ev in self.session.watch():
                self.events.append((time.perf_counter(), ev))
                self.connected.set()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            self.error = exc
        finally:
            self.connected.set()

    def first(self, phase: str) -> float:
        for t, ev in self.events:
            if ev.phase == phase and not ev.total_steps:
                return t
        raise RuntimeError(f"the watch stream never reported phase {phase!r}: {self._summary()}")

    def steps(self) -> list[tuple[float, Any]]:
        steps = [(t, ev) for t, ev in self.events if ev.phase == "training" and ev.total_steps]
        if not steps:
            raise RuntimeError(f"no progress event on the watch stream: {self._summary()}")
        return steps

    def _summary(self) -> str:
        return ", ".join(f"{ev.phase}/{ev.step}" for _, ev in self.events[-5:])


def one_run(
    n: int,
    parts: list[tuple[np.ndarray, np.ndarray]],
    workdir: Path,
    test: tuple[np.ndarray, np.ndarray],
    *,
    dp: bool,
    quick: bool,
    code: tuple[Path, str],
    enclave_threads: int | None = None,
) -> dict[str, Any]:
    from cctrain.client import DataOwner, EnclaveSession, Recipient

    # A fresh consortium per run (keys, policy, signatures; not timed).
    consortium = make_consortium(workdir, n, dp=dp, quick=quick, measurement=code[1])
    shards = []
    for pid, (xs, ys) in zip(consortium.providers, parts, strict=True):
        (workdir / pid).mkdir(parents=True, exist_ok=True)
        np.savez(workdir / pid / f"{pid}.npz", features=xs, labels=ys)
        shards.append(workdir / pid / f"{pid}.npz")
    state = workdir / "enclave-state"
    with enclave_process(
        consortium.policy_path, state, workdir / "enclave.log", code[0], enclave_threads
    ) as (
        address,
        startup,
    ):
        common = {"policy": consortium.signed, "allow_simulated": True}
        observer_session = EnclaveSession(address, key=consortium.keys[RECIPIENT], **common)
        observer = _Observer(observer_session)
        observer.start()
        observer.connected.wait(30)  # the stream's first event: the current phase (collecting)

        n = len(consortium.providers)
        go = threading.Event()
        attested = threading.Barrier(n)
        t_attested: dict[str, float] = {}
        t_receipt: dict[str, float] = {}
        errors: list[BaseException] = []

        def owner(pid: str, shard: Path) -> None:
            try:
                go.wait()
                with DataOwner(address, key=consortium.keys[pid], **common) as o:
                    t_attested[pid] = time.perf_counter()
                    attested.wait(60)
                    o.upload(shard, state_dir=workdir / pid, progress=False)
                    t_receipt[pid] = time.perf_counter()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
                attested.abort()

        threads = [
            threading.Thread(target=owner, args=(pid, shard), name=f"owner-{pid}")
            for pid, shard in zip(consortium.providers, shards, strict=True)
        ]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        go.set()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        observer.join(timeout=3600)
        observer_session.close()
        if observer.error is not None:
            raise observer.error
        t_training = observer.first("training")
        steps = observer.steps()
        t_last_step, last = steps[-1]
        t_first_step, first = steps[0]
        t_released = observer.first("released")

        with Recipient(address, key=consortium.keys[RECIPIENT], **common) as recipient:
            fetched = recipient.fetch_model()
        t_done = time.perf_counter()

    bounds = [t0, max(t_attested.values()), t_training, t_last_step, t_released, t_done]
    phases = {name: bounds[i + 1] - bounds[i] for i, name in enumerate(PHASES)}
    return {
        "phases_s": phases,
        "total_s": t_done - t0,
        "enclave_startup_s": startup,
        "last_receipt_after_training_start_s": max(t_receipt.values()) - t_training,
        # training start → first progress event (step `first_event_step`): the enclave's first
        # torch/opacus import, loading and decrypting the shards, building the model, those steps
        "train_until_first_event_s": t_first_step - t_training,
        "first_event_step": int(first.step),
        "steps": int(last.total_steps),
        "model_sha256": fetched.release.manifest["model_sha256"],
        "test_accuracy": _accuracy(fetched, *test),
    }


def _accuracy(fetched: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    from cctrain_enclave.trainer import build_model_from_spec

    model = build_model_from_spec(fetched.manifest["model"], x.shape[1:], NUM_CLASSES)
    fetched.load_into(model).eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


# --------------------------------------------------------------------------- driver


@contextlib.contextmanager
def _quiet_simulated_log() -> Iterator[None]:
    """The verifier logs a loud warning on every simulated attestation; once is enough."""
    logger = logging.getLogger("cctrain.attestation")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(
    parties: list[int] | None = None,
    repeats: int | None = None,
    quick: bool = False,
    *,
    dp: bool = False,
    enclave_threads: int | None = None,
    workdir: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Time the flow for each N in ``parties``; medians per phase over ``repeats`` runs."""
    from cctrain.client import SimulatedEvidenceWarning

    parties = parties or ([2, 3] if quick else [2, 3, 8])
    repeats = repeats or (1 if quick else 3)
    say = log or (lambda _msg: None)
    x, y, x_test, y_test = demo_train_test()
    training, privacy = training_config(dp=dp, quick=quick)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in parties}
    splits = {n: noniid_split(x, y, n) for n in parties}
    tmp = tempfile.mkdtemp(prefix="cctrain-bench-e2e-") if workdir is None else None
    root = Path(tmp) if tmp else Path(workdir)  # type: ignore[arg-type]
    try:
        with warnings.catch_warnings(), _quiet_simulated_log():
            warnings.simplefilter("ignore", SimulatedEvidenceWarning)
            code = snapshot_code(root / "code")
            for r in range(repeats):  # interleaved over N
                for n in parties:
                    res = one_run(
                        n,
                        splits[n],
                        root / f"n{n}-r{r}",
                        (x_test, y_test),
                        dp=dp,
                        quick=quick,
                        code=code,
                        enclave_threads=enclave_threads,
                    )
                    runs[n].append(res)
                    say(
                        f"N={n} repeat {r + 1}/{repeats}: total {res['total_s']:.2f} s "
                        + " ".join(f"{k} {v:.3f}" for k, v in res["phases_s"].items())
                    )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    results = []
    for n in parties:
        rs = runs[n]
        results.append(
            {
                "parties": n,
                "rows": [int(len(s[1])) for s in splits[n]],
                "phases_s": {p: statistics.median(r["phases_s"][p] for r in rs) for p in PHASES},
                "total_s": statistics.median(r["total_s"] for r in rs),
                "enclave_startup_s": statistics.median(r["enclave_startup_s"] for r in rs),
                "steps": rs[0]["steps"],
                "test_accuracy": statistics.median(r["test_accuracy"] for r in rs),
                "runs": rs,
            }
        )
    return {
        "machine": machine_info(),
        "config": {
            "parties": parties,
            "repeats": repeats,
            "quick": quick,
            "dp": dp,
            "enclave_torch_threads": enclave_threads or "torch default",
            "training": training,
            "privacy": privacy,
            "train_rows": int(len(y)),
            "test_rows": int(len(y_test)),
            "owners": "threads in the benchmark process",
            "enclave": "separate process, simulated TEE",
        },
        "results": results,
    }


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\nfirst attestation → verified, unsealed model (medians of {cfg['repeats']}; seconds); "
        f"{cfg['train_rows']} rows, {cfg['training']['epochs']} epochs, "
        f"DP {'on' if cfg['dp'] else 'off'}"
    )
    head = f"{'N':>3s} " + " ".join(f"{p:>12s}" for p in PHASES)
    print(head + f" {'total':>8s} {'train%':>7s} {'startup':>8s} {'steps':>6s} {'test acc':>8s}")
    for r in result["results"]:
        ph = r["phases_s"]
        print(
            f"{r['parties']:3d} "
            + " ".join(f"{ph[p]:12.3f}" for p in PHASES)
            + f" {r['total_s']:8.2f} {100 * ph['train'] / r['total_s']:6.1f}%"
            + f" {r['enclave_startup_s']:8.2f} {r['steps']:6d} {r['test_accuracy']:8.3f}"
        )
    print(
        "(phases are contiguous on one clock; owners are threads in this process, the enclave "
        "its own process; startup = the enclave's, not in total)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N ∈ {2,3}, 1 repeat, 2 epochs (< 60 s)")
    ap.add_argument("--parties", default=None, help="comma-separated N values (default 2,3,8)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--dp", action="store_true", help="the demo's DP configuration (ε = 8)")
    ap.add_argument(
        "--enclave-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the enclave (default: unset, as in the demo)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="keep state/logs here")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)
    parties = [int(p) for p in args.parties.split(",")] if args.parties else None
    result = run(
        parties,
        args.repeats,
        args.quick,
        dp=args.dp,
        enclave_threads=args.enclave_threads,
        workdir=args.workdir,
        log=lambda msg: print(msg, flush=True),
    )
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
