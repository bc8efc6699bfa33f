#!/usr/bin/env python3
"""Three hospitals, one enclave, one recipient: the whole cctrain flow on one machine.

Every party is its own process and talks to the enclave only over gRPC+TLS:

  1. each party creates its keys            (cctrain keygen)
  2. the consortium writes the policy, pins the enclave measurement, and every
     party signs it                           (cctrain measure, cctrain policy sign)
  3. the enclave starts on the simulated TEE (cctrain enclave serve --platform simulated)
  4. the three hospitals attest it and upload their shards in parallel
                                              (cctrain upload --allow-simulated)
  5. the enclave trains when every provider has a receipt; the recipient fetches,
     verifies and unseals the model           (cctrain release fetch)
  6. every model is scored on the same held-out test set

Run it with ``./dev demo`` (which sets up the virtual environment first).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data import NUM_CLASSES, load_demo_data  # noqa: E402

PARTIES = ("hospital-a", "hospital-b", "hospital-c", "research-lab")
PROVIDERS = PARTIES[:3]
RECIPIENT = "research-lab"
BIN = Path(sys.executable).parent


def cctrain(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "cctrain"), *args], cwd=cwd, text=True, capture_output=True
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"cctrain {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def write_policy(work: Path, *, dp: bool, measurement: str, suffix: str) -> Path:
    text = (HERE / "policy.toml.in").read_text()
    for pid in PARTIES:
        pub = json.loads((work / pid / f"{pid}.pub.json").read_text())
        text = text.replace(f"@{pid}.signing@", pub["signing_key"])
        text = text.replace(f"@{pid}.hpke@", pub["hpke_key"])
    privacy = (
        'enabled = true\ntarget_epsilon = 8.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n'
        'accountant = "rdp"\nnoise_source = "csprng"'
        if dp
        else "enabled = false"
    )
    expires = (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "@NAME_SUFFIX@": suffix,
        "@EXPIRES@": expires,
        "@MEASUREMENT@": measurement,
        "@PRIVACY@": privacy,
        "@LR@": "0.5" if dp else "0.05",
        "@EPOCHS@": "30" if dp else "40",
        "@BATCH@": "128" if dp else "32",
    }
    for k, v in values.items():
        text = text.replace(k, v)
    path = work / f"policy{suffix}.toml"
    path.write_text(text)
    return path


def start_enclave(policy: Path, state: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    state.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [str(BIN / "cctrain"), "enclave", "serve", "--policy", str(policy),
             "--state-dir", str(state), "--platform", "simulated"],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 120
    while time.time() < deadline:
        endpoint = state / "endpoint.json"
        if endpoint.exists():
            return proc, json.loads(endpoint.read_text())["address"]
        if proc.poll() is not None:
            raise SystemExit(f"the enclave exited:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the enclave did not start in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_consortium(work: Path, *, dp: bool, measurement: str, data: object) -> dict[str, object]:
    suffix = "-dp" if dp else ""
    policy = write_policy(work, dp=dp, measurement=measurement, suffix=suffix)
    envelope = work / f"policy{suffix}.signed.json"
    say(f"every party signs {policy.name}")
    for pid in PARTIES:
        cctrain("policy", "sign", str(policy), "--key", f"{pid}/{pid}.key",
                "--envelope", str(envelope), cwd=work)
    verify = json.loads(cctrain("policy", "verify", str(envelope), "--format", "json", cwd=work).stdout)
    print(f"    policy digest {verify['digest']} signed by {', '.join(verify['signed'])}")

    say("the enclave starts (simulated TEE)")
    enclave, address = start_enclave(envelope, work / f"enclave-state{suffix}", work / f"enclave{suffix}.log")
    try:
        say(f"three hospitals attest the enclave at {address} and upload in parallel")
        uploads = [
            subprocess.Popen(
                [str(BIN / "cctrain"), "upload", f"{pid}.npz", "--enclave", address,
                 "--policy", str(envelope), "--key", f"{pid}.key", "--allow-simulated",
                 "--receipt-out", f"receipt{suffix}.json", "--no-progress"],
                cwd=work / pid, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=dict(os.environ, CCTRAIN_HOME=str(work / pid / ".cctrain")),
            )
            for pid in PROVIDERS
        ]
        for pid, proc in zip(PROVIDERS, uploads, strict=True):
            out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise SystemExit(f"upload by {pid} failed:\n{out}{err}")
        receipts = {pid: json.loads((work / pid / f"receipt{suffix}.json").read_text()) for pid in PROVIDERS}
        for pid, r in receipts.items():
            same = "matches" if r["policy_digest"] == verify["digest"] else "DOES NOT MATCH"
            print(f"    {pid}: receipt for shard {r['shard_id']!r}, {r['rows']} rows, "
                  f"policy {r['policy_digest'][:16]}… ({same} `cctrain policy verify`)")
        if any(r["policy_digest"] != verify["digest"] for r in receipts.values()):
            raise SystemExit("a receipt names another policy digest")
        return {"digest": verify["digest"], "receipts": receipts, "address": address,
                "envelope": envelope, "enclave": enclave}
    except BaseException:
        stop(enclave)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("demo-run"))
    ap.add_argument("--no-dp", action="store_true", help="skip the DP consortium")
    args = ap.parse_args()
    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    say("each party creates its keys")
    for pid in PARTIES:
        (work / pid).mkdir()
        cctrain("keygen", pid, "--out", str(work / pid), cwd=work)
    data = load_demo_data()
    for pid, (x, y) in data.shards.items():
        np.savez(work / pid / f"{pid}.npz", features=x, labels=y)
        print(f"    {pid}: {len(y)} rows, label counts {np.bincount(y, minlength=NUM_CLASSES).tolist()}")
    measurement = cctrain("measure", cwd=work).stdout.strip()
    print(f"    enclave measurement (simulated platform): {measurement[:32]}…")

    runs = [False] if args.no_dp else [False, True]
    for dp in runs:
        result = run_consortium(work, dp=dp, measurement=measurement, data=data)
        stop(result["enclave"])  # type: ignore[arg-type]
    say("done")


if __name__ == "__main__":
    main()
