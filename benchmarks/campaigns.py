#!/usr/bin/env python3
"""The full campaigns of tests/campaigns/: fuzzing every RPC, 20 owners and 20 watchers at
once, SIGKILL at random points of 20 runs. Writes ``results/campaigns.json`` and
``results/campaigns.md`` (and touches no other results file).

    python benchmarks/campaigns.py                 # the full versions (~15 minutes on 2 cores)
    python benchmarks/campaigns.py --small         # the small ones the test suite runs
    python benchmarks/campaigns.py --only fuzz     # one campaign: fuzz, owners, sigkill

The same campaigns run in the test suite in their small versions (``./dev test
tests/campaigns``), and in their full versions with ``CCTRAIN_CAMPAIGN=full``. Every input
and kill point comes from fixed seeds: a run repeats the same campaign.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (HERE, REPO / "enclave", REPO):
    sys.path.insert(0, str(p))

CAMPAIGNS = {
    "fuzz": ("tests.campaigns.test_fuzz_rpcs", "Fuzzing every RPC (hypothesis)"),
    "owners": ("tests.campaigns.test_concurrent_owners", "20 owners uploading, 20 watching"),
    "sigkill": ("tests.campaigns.test_sigkill_runs", "SIGKILL during upload or training"),
}


def run(name: str, *, full: bool) -> dict[str, Any]:
    import importlib

    module = importlib.import_module(CAMPAIGNS[name][0])
    print(f"\n=== {name} ({'full' if full else 'small'}) ===", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"cctrain-campaign-{name}-") as tmp:
        try:
            figures = module.run_campaign(Path(tmp), full=full)
        except Exception as exc:  # noqa: BLE001 - a failed campaign is a result too
            traceback.print_exc()
            out: dict[str, Any] = {
                "name": name,
                "line": f"{name}: FAILED: {type(exc).__name__}: {str(exc)[:2000]}",
                "problems": [f"{type(exc).__name__}: {str(exc)[:4000]}"],
            }
        else:
            out = figures.to_json()
    out["passed"] = not out["problems"]
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"--- {name}: {'passed' if out['passed'] else 'FAILED'} in {out['wall_seconds']} s")
    return out


def render_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# cctrain campaigns",
        "",
        f"{'Full' if results['full'] else 'Small'} versions, {results['finished']}, git "
        f"{m.get('git_revision', '?')}, {m.get('cpu_count', '?')} CPUs. Written by "
        "`benchmarks/campaigns.py`; the small versions run in the default test suite "
        "(`tests/campaigns/`).",
        "",
        "| campaign | result | figure | wall time |",
        "|---|---|---|---|",
    ]
    for name, r in results["campaigns"].items():
        verdict = "passed" if r["passed"] else "**FAILED**"
        lines.append(f"| {CAMPAIGNS[name][1]} | {verdict} | {r['line']} | {r['wall_seconds']} s |")
    for name, r in results["campaigns"].items():
        lines += ["", f"## {CAMPAIGNS[name][1]}", ""]
        if r["problems"]:
            lines += ["Problems:", ""] + [f"* {p}" for p in r["problems"]] + [""]
        if name == "fuzz" and "inputs_per_rpc" in r:
            lines += [
                "| RPC | inputs |",
                "|---|---|",
                *[f"| {k} | {v} |" for k, v in r["inputs_per_rpc"].items()],
                "",
                "Status codes answered: "
                + ", ".join(f"{k} {v}" for k, v in r["status_codes"].items())
                + f". Streams refused by the per-connection limit (HTTP/2 REFUSED_STREAM) "
                f"and retried: {r.get('streams_refused_then_retried', 0)}.",
            ]
        elif name == "owners" and "receipts" in r:
            lines += [
                f"{r['owners']} providers, {r['rows_per_shard']} rows each; "
                f"{r['health_checks']} health checks, median {r['health_median_ms']} ms, max "
                f"{r['health_max_ms']} ms, {r['health_missed_deadline']} over the "
                f"{r['health_deadline_s']:.0f} s deadline."
            ]
        elif name == "sigkill" and "runs_detail" in r:
            lines += [
                "| run | DP | kill trigger | at | phase at kill | receipts before | "
                "checkpoint step | ε at kill | ε released | released |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for d in r["runs_detail"]:

                def eps(v: float | None) -> str:
                    return "—" if v is None else f"{v:.4f}"

                unit = "bytes" if d["trigger"] == "upload" else "step"
                lines.append(
                    f"| {d['run']} | {'yes' if d['dp'] else 'no'} | {d['trigger']} | "
                    f"{unit} {d['at']} | {d['phase_at_kill']} | {d['receipts_before_kill']} | "
                    f"{d['checkpoint_step_at_kill'] if d['checkpoint_step_at_kill'] is not None else '—'} | "
                    f"{eps(d['epsilon_at_kill'])} | {eps(d['epsilon_released'])} | "
                    f"{'yes' if d['released'] else 'no'} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", action="store_true", help="the small versions (the test suite's)")
    ap.add_argument("--only", action="append", choices=sorted(CAMPAIGNS), help="run only these")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where to write results")
    args = ap.parse_args()
    from run_all import run_info

    full = not args.small
    t0 = time.perf_counter()
    results: dict[str, Any] = {"machine": run_info(), "full": full, "campaigns": {}}
    for name in args.only or list(CAMPAIGNS):
        results["campaigns"][name] = run(name, full=full)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "campaigns.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "campaigns.md").write_text(render_markdown(results))
    print()
    for r in results["campaigns"].values():
        print(r["line"])
    print(f"\nwrote {args.out / 'campaigns.json'} and {args.out / 'campaigns.md'}")
    sys.exit(0 if all(r["passed"] for r in results["campaigns"].values()) else 1)


if __name__ == "__main__":
    main()
