#!/usr/bin/env python3
"""A model owner and three hospitals: the owner's model is fine-tuned on data it never sees.

Every party is its own process and talks to the enclave only over gRPC+TLS:

  1. each party creates its keys                          (cctrain keygen)
  2. the model owner pretrains its model on its own rows and packages its plan and
     initial weights; the package's SHA-256 goes into the policy   (cctrain model package)
  3. every party signs the policy; the model owner checks its package against it
                                                 (cctrain policy sign, policy check --model-package)
  4. the enclave starts on the simulated TEE; the hospitals upload their CSV exports, the
     model owner its package (cctrain upload, cctrain model upload), all attested first
  5. the enclave trains once every hospital and the package have receipts; only the model
     owner may fetch the weights                          (cctrain release fetch)
  6. a referee scores every model on the same held-out test set: the owner's pretrained
     model, each hospital fine-tuning it alone, and the joint model

Run it with ``./dev demo model-owner`` (which sets up the virtual environment first). What both
demos share (running the CLI as each party, the enclave, the table) is in ``examples/_demo.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this demo's data, the demos' _demo
from _demo import (  # noqa: E402
    accuracy,
    arguments,
    cctrain,
    collect_signatures,
    fetch_release,
    fresh_workdir,
    keygen,
    local_enclave,
    print_accuracy_table,
    say,
    session,
    upload_in_parallel,
    watch,
    write_policy,
    write_results,
)
from data import LABELS, DemoData, load_demo_data, write_csv  # noqa: E402

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
OWNER = "model-owner"
PARTIES = (*HOSPITALS, OWNER)


# --------------------------------------------------------------------------- the model owner


def pretrain(data: DemoData, plan_dir: Path, seed: int = 5) -> None:
    """The owner's own work, on its own rows: input normalisation and a pretrained model,
    saved as the package's initial weights (weights.safetensors)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from cctrain.package import package_from_dir, package_sha256
    from cctrain_enclave.package import load_package

    draft = package_from_dir(plan_dir)  # the plan without weights: build the architecture
    plan = load_package(draft, expected_sha256=package_sha256(draft)).module("plan")
    torch.manual_seed(seed)
    model = plan.build_model((data.owner.x.shape[1],), len(LABELS), hidden=32)
    x = torch.from_numpy(data.owner.x)
    y = torch.from_numpy(data.owner.y)
    with torch.no_grad():
        model.mean.copy_(x.mean(0))
        model.scale.copy_(1.0 / (x.std(0) + 1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, plan_dir / "weights.safetensors"
    )


def owner_policy(work: Path, *, measurement: str, package_sha: str, data: DemoData) -> Path:
    values = {
        "@NAME_SUFFIX@": "",
        "@MEASUREMENT@": measurement,
        "@PACKAGE_SHA256@": package_sha,
        "@FEATURE_COLUMNS@": json.dumps(list(data.feature_names)),
    }
    return write_policy(HERE / "policy.toml.in", work, PARTIES, values, work / "policy.toml")


def run(work: Path, data: DemoData) -> dict[str, Any]:
    say("each party creates its keys")
    keygen(work, PARTIES)
    for pid, split in data.hospitals.items():
        write_csv(work / pid / f"{pid}.csv", split, data.feature_names)
        counts = {name: int((split.y == i).sum()) for i, name in enumerate(LABELS)}
        print(f"    {pid}: {len(split.y)} patients {counts} (CSV export, named columns)")

    say("the model owner pretrains on its own rows and packages its plan")
    plan_dir = work / OWNER / "plan"
    shutil.copytree(HERE / "plan", plan_dir, ignore=shutil.ignore_patterns("__pycache__"))
    pretrain(data, plan_dir)
    package = work / OWNER / "model.pkg"
    built = json.loads(
        cctrain(
            "model", "package", str(plan_dir), "-o", str(package), "--format", "json", cwd=work
        ).stdout
    )
    print(
        f"    {package.name}: modules {', '.join(built['files'])}, {built['tensors']} initial "
        f"tensors, sha256 {built['sha256'][:16]}… (this hash goes into the policy)"
    )

    measurement = cctrain("measure", cwd=work).stdout.strip()
    policy = owner_policy(work, measurement=measurement, package_sha=built["sha256"], data=data)
    envelope = work / "policy.signed.json"
    say(
        "every party signs the policy, the operator merges the signatures; the model owner "
        "checks its package against it"
    )
    collect_signatures(work, policy, envelope, PARTIES)
    check = cctrain("policy", "check", str(policy), "--model-package", str(package), cwd=work)
    print("    " + check.stdout.strip().splitlines()[-1])

    with local_enclave(work, envelope) as enclave:
        address = enclave.address
        say(f"the hospitals attest the enclave at {address} and upload their exports")
        upload_in_parallel(
            work,
            HOSPITALS,
            lambda pid: (str(work / pid / f"{pid}.csv"), *session(pid, work, address, envelope)),
            echo=True,
        )
        status = json.loads(
            cctrain(
                "status",
                *session("hospital-a", work, address, envelope),
                "--format",
                "json",
                cwd=work,
            ).stdout
        )
        print(f"    phase: {status['phase']} (the start rule also needs the model package)")

        say("the model owner attests the enclave and uploads its package")
        out = cctrain(
            "model",
            "upload",
            str(package),
            *session(OWNER, work, address, envelope),
            "--no-progress",
            cwd=work / OWNER,
            home=work / OWNER / ".cctrain",
        )
        print(f"    {out.stdout.strip()}")

        say("the enclave trains the owner's model on the hospitals' rows")
        events = watch(work, session(OWNER, work, address, envelope))
        print(f"    phase: {events[-1]['phase']} {events[-1]['detail']}")

        say("only the model owner fetches the trained weights")
        release_dir = work / OWNER / "release"
        fetch_release(work, session(OWNER, work, address, envelope), release_dir)
        refused = cctrain(
            "release",
            "fetch",
            *session("hospital-a", work, address, envelope),
            "--out",
            str(work / "hospital-a" / "release"),
            cwd=work,
            check=False,
        )
        print(
            f"    hospital-a tries too: exit {refused.returncode}, {refused.stderr.strip().splitlines()[-1]}"
        )
        if refused.returncode == 0:
            raise SystemExit("a hospital fetched the model owner's weights")
    return {"release": release_dir, "package": package, "policy": policy}


# --------------------------------------------------------------------------- the referee


def evaluate(data: DemoData, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every model on the same held-out patients: the owner's pretrained model, each hospital
    fine-tuning it alone (the same plan, in the same trainer), and the joint model."""
    from safetensors.torch import load_file

    from cctrain.policy import load_policy_file, thaw
    from cctrain_enclave.shards import ShardArrays
    from cctrain_enclave.trainer import build_model_from_spec, train

    package = Path(result["package"]).read_bytes()
    policy = load_policy_file(result["policy"])
    early = thaw(policy.validation.get("early_stopping"))
    manifest = json.loads((Path(result["release"]) / "manifest.json").read_text())
    spec = manifest["model"]

    rows: list[dict[str, Any]] = []
    start = build_model_from_spec(spec, (30,), 2, model_package=package)
    rows.append(
        {
            "model": "model owner's pretrained model",
            "rows": len(data.owner.y),
            "accuracy": accuracy(start, data.test.x, data.test.y),
        }
    )
    for pid, split in data.hospitals.items():
        # Alone, a hospital holds out a fifth of its own rows the same way.
        order = np.random.default_rng(1).permutation(len(split.y))
        cut = len(order) // 5
        val, fit = np.sort(order[:cut]), np.sort(order[cut:])
        trained = train(
            split.x[fit],
            split.y[fit],
            validation=ShardArrays(split.x[val], split.y[val]),
            early_stopping=early,
            num_classes=2,
            training=thaw(policy.training),
            privacy={"enabled": False},
            simulated_platform=True,
            checkpoint=None,
            progress=None,
            model_package=package,
        )
        model = build_model_from_spec(spec, (30,), 2, model_package=package)
        model.load_state_dict(trained.state_dict)
        rows.append(
            {
                "model": f"{pid} alone (fine-tuned)",
                "rows": len(split.y),
                "accuracy": accuracy(model, data.test.x, data.test.y),
                "metrics": {k: v for k, v in trained.metrics.items() if k.startswith("val_")},
            }
        )
    joint = build_model_from_spec(spec, (30,), 2, model_package=package)
    joint.load_state_dict(load_file(str(Path(result["release"]) / "model.safetensors")))
    rows.append(
        {
            "model": "joint, in the enclave",
            "rows": sum(len(s.y) for s in data.hospitals.values()),
            "accuracy": accuracy(joint, data.test.x, data.test.y),
            "metrics": manifest["metrics"],
        }
    )
    return rows


def _released_with(r: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in r.get("metrics", {}).items()
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    print_accuracy_table(
        "held-out test accuracy (breast cancer, 114 patients)",
        rows,
        last_column="released with it",
        last_cell=_released_with,
    )


def main() -> None:
    args = arguments(__doc__, workdir="demo-run-model-owner").parse_args()
    work = fresh_workdir(args.workdir)
    data = load_demo_data()
    result = run(work, data)
    say("a referee scores every model on the same held-out patients")
    rows = evaluate(data, result)
    print_table(rows)
    write_results(work, rows)
    joint = rows[-1]["accuracy"]
    best_alone = max(r["accuracy"] for r in rows[1:-1])
    if joint < best_alone:
        raise SystemExit(
            f"the joint model ({joint:.3f}) is worse than a hospital alone ({best_alone:.3f})"
        )
    say(
        f"done: joint {joint:.3f} vs the best hospital alone {best_alone:.3f}; everything is in {work}"
    )


if __name__ == "__main__":
    main()
