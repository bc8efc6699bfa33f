#!/usr/bin/env python3
"""Scale-out: DP training on 1, 2 and 3 enclave ranks (loopback), and what the link sealing costs.

    .venv/bin/python benchmarks/bench_cluster.py --quick

Same data, model and DP settings for every configuration (an MLP, cctrain's ``fast``
clipping, the CSPRNG noise). Rank 0 runs in this process, each other rank is a real
``cctrain-enclave worker`` process; every rank attests to every other before the timed part.
Reported, medians over ``--repeats``:

* samples/s per rank count, and its ratio to one rank (this VM has 2 cores: 3 ranks share them);
* the step time over sealed links (AES-256-GCM) against the same protocol over plain links,
  measured in the same run (bench-only: the plain transport exists only in this script);
* the largest difference of the final parameters between one rank and N ranks (the same
  batches and noise: only the order of a float sum differs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO / "enclave"), str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _machine import machine_info  # noqa: E402

TARGET_LINK_RATIO = 1.5  # sealed-link DP step within 1.5x of plain links

#: A worker whose links are plain (bench-only: measures what sealing costs).
PLAIN_WORKER = """
import sys
import cctrain_enclave.cluster.handshake as h
sys.path.insert(0, {bench!r})
from bench_cluster import PlainLinks
h.SecureLinks = PlainLinks
from cctrain_enclave.cli import main
sys.argv = ["cctrain-enclave", *sys.argv[1:]]
main()
"""


class PlainLinks:
    """The link protocol without AES-GCM: frames in order, no sealing (never in production)."""

    def __init__(self, rank: int, keys: Any, transport: Any, **_: Any) -> None:
        self.rank, self._t = rank, transport
        self.bytes_sent = self.bytes_received = 0

    def send(self, peer: int, kind: str, payload: bytes) -> None:
        self._t.send(peer, payload)

    def recv(self, peer: int, kind: str) -> bytes:
        return self._t.recv(peer, 1 << 30)

    def send_msg(self, peer: int, kind: str, meta: Any, arrays: Any = ()) -> None:
        from cctrain_enclave.cluster.links import pack

        self.send(peer, kind, pack(meta, arrays))

    def recv_msg(self, peer: int, kind: str) -> Any:
        from cctrain_enclave.cluster.links import unpack

        return unpack(self.recv(peer, kind))


def _policy(root: Path, ranks: int, training: dict[str, Any], privacy: dict[str, Any]) -> Any:
    from cctrain.crypto.keys import PartyKeys
    from cctrain.measure import code_measurement
    from cctrain.policy import SignedPolicy, parse_policy

    keys = {pid: PartyKeys.generate(pid) for pid in ("site-1", "lab")}
    doc = {
        "version": 1,
        "name": f"bench-cluster-{ranks}",
        "expires": (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "parties": [
            {
                "id": "site-1",
                "roles": ["data_provider"],
                "signing_key": keys["site-1"].signing_public,
            },
            {
                "id": "lab",
                "roles": ["recipient"],
                "signing_key": keys["lab"].signing_public,
                "hpke_key": keys["lab"].hpke_public,
            },
        ],
        "attestation": {
            "platforms": ["simulated"],
            "allow_simulated": True,
            "reference": {"simulated": {"measurements": [code_measurement().hex()]}},
        },
        "data": {
            "features": {"shape": [64], "dtype": "float32"},
            "labels": {"num_classes": 10},
            "max_rows": 1_000_000,
            "max_bytes": 1 << 30,
        },
        "training": training,
        "privacy": privacy,
        "release": {"recipients": ["lab"], "metrics": ["steps"]},
        "cluster": {"ranks": ranks, "timeout_s": 120},
    }
    signed = SignedPolicy.new(parse_policy(json.dumps(doc).encode(), "json"))
    env = signed.envelope
    for pid, k in keys.items():
        env = env.sign(pid, k.signing_key)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "policy.signed.json"
    path.write_text(env.to_json())
    return SignedPolicy(env, signed.policy).policy, path


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(REPO / "enclave"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, GLOO_SOCKET_IFNAME="lo", TORCH_CPP_LOG_LEVEL="ERROR")


def _run(
    x: np.ndarray,
    y: np.ndarray,
    training: dict[str, Any],
    privacy: dict[str, Any],
    ranks: int,
    *,
    plain_links: bool,
    tmp: Path,
) -> tuple[float, float, Any]:
    """(seconds of train() itself, steady seconds per step, its result) on ``ranks`` ranks.
    Steady: between the first and the last step's progress event (setup, noise calibration
    and the workers' rows excluded)."""
    import cctrain_enclave.cluster.handshake as handshake
    from cctrain.policy import thaw
    from cctrain_enclave.cluster.parallel import Coordinator
    from cctrain_enclave.providers.simulated import SimulatedProvider
    from cctrain_enclave.trainer.train import TrainingRandomness, train

    randomness = TrainingRandomness.fixed_for_tests(1)
    # Every rank trains the signed policy's own (normalised) plan.
    policy, path = _policy(tmp / f"p{ranks}{plain_links}", ranks, training, privacy)
    marks: list[tuple[int, float]] = []
    common = dict(
        num_classes=10,
        training=thaw(policy.training),
        privacy=thaw(policy.privacy),
        simulated_platform=True,
        checkpoint=None,
        progress=lambda ev: marks.append((ev.step, time.perf_counter())),
        progress_every=1,
        randomness=randomness,
    )

    def per_step() -> float:
        (s0, t0), (s1, t1) = marks[0], marks[-1]
        return (t1 - t0) / max(s1 - s0, 1)

    if ranks == 1:
        t0 = time.perf_counter()
        result = train(x, y, **common)  # type: ignore[arg-type]
        return time.perf_counter() - t0, per_step(), result
    store = handshake.open_rendezvous(policy, rank=0, host="127.0.0.1", port=0)
    procs = []
    for r in range(1, ranks):
        args = [
            "worker",
            "--policy",
            str(path),
            "--rank",
            str(r),
            "--rendezvous",
            f"127.0.0.1:{store.port}",
            "--platform",
            "simulated",
            "--state-dir",
            str(tmp / f"w{r}"),
        ]
        argv = (
            [sys.executable, "-c", PLAIN_WORKER.format(bench=str(REPO / "benchmarks")), *args]
            if plain_links
            else [sys.executable, "-m", "cctrain_enclave", *args]
        )
        procs.append(
            subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    real_links = handshake.SecureLinks
    if plain_links:
        handshake.SecureLinks = PlainLinks  # type: ignore[misc,assignment]
    try:
        session = handshake.form_cluster(
            policy=policy,
            provider=SimulatedProvider(tmp / "r0"),
            rank=0,
            store=store,
            host="127.0.0.1",
        )
    finally:
        handshake.SecureLinks = real_links  # type: ignore[misc]
    try:
        t0 = time.perf_counter()
        result = train(x, y, cluster=Coordinator(session), **common)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
    finally:
        session.close()
        for p in procs:
            p.wait(timeout=60)
    return seconds, per_step(), result


def run(
    *, quick: bool, repeats: int, rows: int | None = None, hidden: tuple[int, ...] = (128, 128)
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    rows = rows or (4_000 if quick else 20_000)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 64)).astype(np.float32)
    y = (x[:, :10].argmax(1)).astype(np.int64)
    training = {
        "model": {"name": "mlp", "params": {"hidden": list(hidden)}},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 1 if quick else 2,
        "batch_size": 256,
        "seed": 0,
    }
    privacy = {
        "enabled": True,
        "target_epsilon": 8.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
        "noise_source": "csprng",
        "grad_sample_mode": "fast",
    }
    configs = [(1, False), (2, False), (2, True), (3, False)]
    times: dict[str, list[float]] = {f"{r}{'-plain' if p else ''}": [] for r, p in configs}
    steps: dict[str, list[float]] = {k: [] for k in times}
    params: dict[str, Any] = {}
    samples = 0
    with tempfile.TemporaryDirectory(prefix="cctrain-bench-cluster-") as d:
        for rep in range(repeats):
            for ranks, plain in configs:  # interleaved: drift hits every configuration alike
                key = f"{ranks}{'-plain' if plain else ''}"
                seconds, step_s, result = _run(
                    x, y, training, privacy, ranks, plain_links=plain, tmp=Path(d) / f"{rep}{key}"
                )
                times[key].append(seconds)
                steps[key].append(step_s)
                samples = int(result.metrics["samples"])
                params[key] = result.state_dict
                print(
                    f"  {key:>8} ranks: {seconds:6.2f} s end to end, "
                    f"{step_s * 1e3:6.1f} ms per step",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in times.items()}
    step = {k: statistics.median(v) for k, v in steps.items()}
    diff = {
        k: max(float((params[k][n] - params["1"][n]).abs().max()) for n in params["1"])
        for k in params
        if k != "1"
    }
    out = {
        "rows": rows,
        "hidden": list(hidden),
        "samples": samples,
        "samples_per_s": {k: samples / v for k, v in med.items()},
        "ratio_to_one_rank": {k: med["1"] / v for k, v in med.items()},
        "step_ms": {k: v * 1e3 for k, v in step.items()},
        "steady_ratio_to_one_rank": {k: step["1"] / v for k, v in step.items()},
        # The DP step over sealed links against plain links (steady, per step).
        "sealed_over_plain_links": step["2"] / step["2-plain"],
        "max_param_diff_to_one_rank": diff,
        "target_link_ratio": TARGET_LINK_RATIO,
        "machine": machine_info(),
    }
    out["link_target_met"] = out["sealed_over_plain_links"] <= TARGET_LINK_RATIO
    return out


def report(out: dict[str, Any]) -> str:
    lines = [
        f"DP training, {out['rows']} rows, MLP 64-{'-'.join(map(str, out['hidden']))}-10, "
        "fast clipping (medians)",
        "ranks      samples/s e2e  vs 1 rank   ms/step steady  vs 1 rank   max |Δparam| vs 1",
    ]
    for k, v in out["samples_per_s"].items():
        d = out["max_param_diff_to_one_rank"].get(k)
        lines.append(
            f"{k:<10} {v:13.0f}  {out['ratio_to_one_rank'][k]:8.2f}x   "
            f"{out['step_ms'][k]:14.1f}  {out['steady_ratio_to_one_rank'][k]:8.2f}x   "
            f"{'—' if d is None else f'{d:.1e}'}"
        )
    ratio = out["sealed_over_plain_links"]
    verdict = "met" if out["link_target_met"] else "missed"
    lines.append(
        f"DP step over sealed / plain links (2 ranks, steady): {ratio:.2f}x  "
        f"(target <= {TARGET_LINK_RATIO}x: {verdict})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4k rows, one epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[128, 128], help="the MLP's hidden widths"
    )
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    out = run(quick=args.quick, repeats=args.repeats, hidden=tuple(args.hidden))
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
