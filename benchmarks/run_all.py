#!/usr/bin/env python3
"""The cctrain benchmark suite: one command, every ratio against its baseline measured in the same run.

    ./dev bench --quick     # < 2 minutes on 2 cores
    ./dev bench             # the full suite (< 30 minutes here)

Runs, in order: attestation verification (per platform, cold and cached), training (plain
PyTorch vs cctrain vs cctrain+DP), ingest (cctrain encrypted upload vs a plain gRPC/TLS
stream), end to end (the demo's flow for N parties) and the peer a user would pick instead
(Flower FedAvg, in its own virtual environment). Writes ``latest.json``
(with machine info, versions and the git revision), ``latest.md`` (the table, with every
target and whether it is met) and PNG plots beside them, into ``benchmarks/results/local/``
(git-ignored) unless ``--publish`` is given, which updates the committed
``benchmarks/results/latest.*``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import machine_info  # noqa: E402

TARGETS = {
    "ingest_ratio": 0.6,
    "ingest_mbps": 300.0,
    "ingest_mbps_from_mib": 1024,
    "ingest_of_bound": 0.9,
    "ingest_rss_over_shard": 2.0,
    "ingest_rss_from_mib": 64,
    "train_no_dp_ratio": 0.95,
    "train_dp_fast_ratio": 0.8,
    "train_dp_e2e_ratio": 0.5,
    "train_dp_e2e_rows": 10_000,
    "snp_cached_ms": 5.0,
    "dcap_collateral_cached_ms": 20.0,
    "cluster_sealed_over_plain": 1.5,
}


def run_info() -> dict[str, Any]:
    """The machine, plus the git revision and start time of this run."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        rev, dirty = "unknown", False
    return {
        **machine_info(),
        "git_revision": rev + ("+dirty" if dirty else ""),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _section(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
        traceback.print_exc()
        out = {"error": f"{type(exc).__name__}: {exc}"}
    out["section_seconds"] = time.perf_counter() - t0
    print(f"--- {name}: {out['section_seconds']:.1f} s", flush=True)
    return out


def run_suite(quick: bool, *, flower: bool | None) -> dict[str, Any]:
    import bench_attestation
    import bench_cluster
    import bench_e2e
    import bench_ingest
    import bench_training

    results: dict[str, Any] = {"machine": run_info(), "quick": quick, "targets": TARGETS}
    results["attestation"] = _section(
        "attestation",
        lambda: bench_attestation.run(
            repeats=10 if quick else 100, quick=quick, fresh_repeats=1 if quick else 5
        ),
    )
    results["training"] = _section("training", lambda: bench_training.run(quick=quick))

    def ingest() -> dict[str, Any]:
        # Sizes with one owner, then concurrency at one size (not the cross product: 16 owners
        # x 1 GiB would need 16 GiB of shards for nothing the two sweeps do not show).
        sizes = bench_ingest.run(
            sizes_mib=[64] if quick else [16, 64, 256, 1024],
            owners=[1],
            repeats=2 if quick else 3,
            verbose=True,
        )
        if not quick:
            conc = bench_ingest.run(sizes_mib=[64], owners=[4, 16], repeats=3, verbose=True)
            sizes["results"] += conc["results"]
        return sizes

    results["ingest"] = _section("ingest", ingest)
    results["cluster"] = _section(
        "cluster", lambda: bench_cluster.run(quick=quick, repeats=1 if quick else 3)
    )
    results["e2e"] = _section(
        "end to end",
        lambda: bench_e2e.run(
            parties=[2, 3] if quick else [2, 3, 8], repeats=1 if quick else 3, quick=quick
        ),
    )
    if flower is None:
        flower = not quick  # the first run installs Flower into its own venv (minutes)
    if flower:
        import bench_flower

        results["flower"] = _section(
            "flower", lambda: bench_flower.run(repeats=1 if quick else 3, skip_install=quick)
        )
    else:
        results["flower"] = {
            "skipped": "quick mode: run the full suite, or --quick --flower, for the Flower comparison"
        }
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


# --------------------------------------------------------------------------- report


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def target_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, met) for every target of the earlier issues."""
    rows: list[tuple[str, str, str, str]] = []
    ing = r.get("ingest", {})
    for res in ing.get("results", []):
        if res["owners"] != 1:
            continue
        size = f"{res['size_mib']} MiB"
        rows.append(
            (
                f"ingest {size}: cctrain / plain gRPC-TLS",
                f"{res['ratio']:.2f}×",
                f"≥ {TARGETS['ingest_ratio']}×",
                _yes(res["ratio"] >= TARGETS["ingest_ratio"]),
            )
        )
        big = res["size_mib"] >= TARGETS["ingest_mbps_from_mib"]
        rows.append(
            (
                f"ingest {size}: cctrain throughput",
                f"{res['cctrain_mbps']:.0f} MB/s",
                f"≥ 300 MB/s (at ≥ {TARGETS['ingest_mbps_from_mib']} MiB)",
                _yes(res["cctrain_mbps"] >= TARGETS["ingest_mbps"] if big else None),
            )
        )
        if "of_bound" in res:
            b = res["bound"]
            rows.append(
                (
                    f"ingest {size}: cctrain / stated bound (threaded {b['threaded_mbps']:.0f}, "
                    f"serial {b['serial_mbps']:.0f} MB/s)",
                    f"{res['of_bound']:.0%}",
                    f"≥ {TARGETS['ingest_of_bound']:.0%}",
                    _yes(res["of_bound"] >= TARGETS["ingest_of_bound"]),
                )
            )
        counted = res["size_mib"] >= TARGETS["ingest_rss_from_mib"]
        rows.append(
            (
                f"ingest {size}: enclave peak RSS / shard",
                f"{res['rss_over_shard']:.2f}×",
                f"< 2× (at ≥ {TARGETS['ingest_rss_from_mib']} MiB)",
                _yes(res["rss_over_shard"] < TARGETS["ingest_rss_over_shard"] if counted else None),
            )
        )
    tr = r.get("training", {})
    for res in tr.get("results", []):
        if res["way"] == "cctrain":
            rows.append(
                (
                    f"training {res['workload']}: cctrain (no DP) / plain, steady",
                    f"{res['steady_ratio']:.2f}×",
                    "≥ 0.95×",
                    _yes(res["steady_ratio"] >= TARGETS["train_no_dp_ratio"]),
                )
            )
        if res["way"] == "dp-fast":
            rows.append(
                (
                    f"training {res['workload']}: cctrain DP (fast) / plain, steady",
                    f"{res['steady_ratio']:.2f}×",
                    f"≥ {TARGETS['train_dp_fast_ratio']}×",
                    _yes(res["steady_ratio"] >= TARGETS["train_dp_fast_ratio"]),
                )
            )
            if res.get("rows") == TARGETS["train_dp_e2e_rows"]:
                rows.append(
                    (
                        f"training {res['workload']}: cctrain DP (fast) / plain, end to end",
                        f"{res['end_to_end_ratio']:.2f}×",
                        f"≥ {TARGETS['train_dp_e2e_ratio']}× (at 10k rows)",
                        _yes(res["end_to_end_ratio"] >= TARGETS["train_dp_e2e_ratio"]),
                    )
                )
    cl = r.get("cluster", {})
    if "sealed_over_plain_links" in cl:
        rows.append(
            (
                "cluster (2 ranks): DP step over sealed links / plain links",
                f"{cl['sealed_over_plain_links']:.2f}×",
                "≤ 1.5×",
                _yes(cl["sealed_over_plain_links"] <= TARGETS["cluster_sealed_over_plain"]),
            )
        )
    att = r.get("attestation", {}).get("rows", {})
    if "sev-snp" in att:
        ms = att["sev-snp"]["cached"]["median_ms"]
        rows.append(
            (
                "attestation: SEV-SNP report, certificates cached",
                f"{ms:.2f} ms",
                "< 5 ms",
                _yes(ms < TARGETS["snp_cached_ms"]),
            )
        )
    for key in ("tdx+collateral", "sgx+collateral"):
        if key in att:
            ms = att[key]["cached"]["median_ms"]
            rows.append(
                (
                    f"attestation: DCAP {key.split('+')[0].upper()} quote with collateral",
                    f"{ms:.2f} ms",
                    "< 20 ms",
                    _yes(ms < TARGETS["dcap_collateral_cached_ms"]),
                )
            )
    return rows


def render_markdown(r: dict[str, Any], plots: list[str]) -> str:
    m = r["machine"]
    out = [
        "# cctrain benchmark results",
        "",
        f"{'Quick' if r['quick'] else 'Full'} run of `benchmarks/run_all.py` on {m['cpu_count']} CPUs ({m['processor']}), "
        f"Python {m['python']}, torch {m['versions']['torch']}, grpcio {m['versions']['grpcio']}, "
        f"cryptography {m['versions']['cryptography']}; git `{m['git_revision']}`; {m['started']}. "
        "Every ratio is against a baseline measured in the same run; medians over repeats.",
        "",
        "## Targets",
        "",
        "| what | measured | target | |",
        "|---|---:|---:|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in target_rows(r)]
    ing = r.get("ingest", {})
    if "disk_write_fsync_mbps" in ing:
        out += [
            "",
            f"Disk write+fsync bandwidth measured in the same run: {ing['disk_write_fsync_mbps']:.0f} MB/s "
            "(cctrain stores and fsyncs every byte before it acknowledges; the plain stream does not).",
        ]
    out += [
        "",
        "## Ingest",
        "",
        "| size | owners | cctrain MB/s | plain MB/s | ratio | enclave peak RSS | fairness (cctrain) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in ing.get("results", []):
        fair = f"{res['cctrain_fairness']:.2f}" if res["owners"] > 1 else "–"
        out.append(
            f"| {res['size_mib']} MiB | {res['owners']} | {res['cctrain_mbps']:.0f} | {res['plain_mbps']:.0f} | {res['ratio']:.2f} | {res['enclave_peak_rss_bytes'] / 2**20:.0f} MiB ({res['rss_over_shard']:.2f}×) | {fair} |"
        )
    cl = r.get("cluster", {})
    if "samples_per_s" in cl:
        out += [
            "",
            f"## Cluster (DP, {cl['rows']} rows, loopback ranks)",
            "",
            "| ranks | samples/s | vs 1 rank | max abs param diff vs 1 rank |",
            "|---|---:|---:|---:|",
        ]
        for k, v in cl["samples_per_s"].items():
            d = cl["max_param_diff_to_one_rank"].get(k)
            out.append(
                f"| {k} | {v:.0f} | {cl['ratio_to_one_rank'][k]:.2f}× | "
                f"{'–' if d is None else f'{d:.1e}'} |"
            )
    tr = r.get("training", {})
    out += [
        "",
        f"## Training (batch {tr.get('batch_size')}, {tr.get('threads')} torch thread)",
        "",
        "| workload | rows | way | samples/s steady | ratio | samples/s end to end | ratio |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for res in tr.get("results", []):
        out.append(
            f"| {res['workload']} | {res['rows']} | {res['way']} | {res['steady_samples_per_s']:.0f} | {res['steady_ratio']:.2f} | {res['end_to_end_samples_per_s']:.0f} | {res['end_to_end_ratio']:.2f} |"
        )
    att = r.get("attestation", {})
    out += ["", "## Attestation verification (ms)", ""]
    if "skipped" in att:
        out.append(f"Skipped: {att['skipped']}")
    else:
        out += [
            "| evidence | cold median | cached median | cached p90 | fresh process |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in att.get("rows", {}).items():
            fresh = row.get("fresh-process", {}).get("median_ms")
            out.append(
                f"| {name} | {row['cold']['median_ms']:.2f} | {row['cached']['median_ms']:.2f} | {row['cached']['p90_ms']:.2f} | {fresh:.1f} |"
                if fresh
                else f"| {name} | {row['cold']['median_ms']:.2f} | {row['cached']['median_ms']:.2f} | {row['cached']['p90_ms']:.2f} | – |"
            )
    e2e = r.get("e2e", {})
    out += [
        "",
        "## End to end: first attestation → verified, unsealed model (s)",
        "",
        "| parties | attest | upload | train | seal | fetch+verify | total | test accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in e2e.get("results", []):
        p = res["phases_s"]
        out.append(
            f"| {res['parties']} | {p['attest']:.3f} | {p['upload']:.3f} | {p['train']:.2f} | {p['seal']:.3f} | {p['fetch_verify']:.3f} | {res['total_s']:.2f} | {res['test_accuracy']:.3f} |"
        )
    fl = r.get("flower", {})
    out += ["", "## Against federated averaging (Flower), same non-IID split and test set", ""]
    if "skipped" in fl or "error" in fl:
        out.append(f"Not run: {fl.get('skipped') or fl.get('error')}")
    else:
        out += ["| method | accuracy | wall s | ratio | ε |", "|---|---:|---:|---:|---:|"]
        for res in fl.get("results", []):
            eps = f"{res['epsilon']:.2f}" if res.get("epsilon") else "–"
            out.append(
                f"| {res['method']} | {res['accuracy_median']:.3f} | {res['wall_s_median']:.2f} | {res['wall_ratio_to_cctrain_pooled']:.2f} | {eps} |"
            )
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    errors = [f"- {k}: {v['error']}" for k, v in r.items() if isinstance(v, dict) and "error" in v]
    if errors:
        out += ["", "## Sections that failed", "", *errors]
    return "\n".join(out) + "\n"


def render_plots(r: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)

    ing = [x for x in r.get("ingest", {}).get("results", []) if x["owners"] == 1]
    if ing:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        sizes = [x["size_mib"] for x in ing]
        ax.plot(sizes, [x["plain_mbps"] for x in ing], "o-", label="plain gRPC/TLS stream")
        ax.plot(sizes, [x["cctrain_mbps"] for x in ing], "s-", label="cctrain encrypted upload")
        if "disk_write_fsync_mbps" in r["ingest"]:
            ax.axhline(
                r["ingest"]["disk_write_fsync_mbps"], ls=":", c="grey", label="disk write+fsync"
            )
        ax.axhline(TARGETS["ingest_mbps"], ls="--", c="red", label="target 300 MB/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shard size (MiB)")
        ax.set_ylabel("MB/s")
        ax.set_title("Ingest throughput, one data owner")
        ax.legend(fontsize=8)
        save(fig, "ingest.png")
    tr = r.get("training", {}).get("results", [])
    if tr:
        workloads = list(dict.fromkeys(x["workload"] for x in tr))
        ways = list(dict.fromkeys(x["way"] for x in tr))
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / len(ways)
        for i, way in enumerate(ways):
            vals = [
                next((x["steady_ratio"] for x in tr if x["workload"] == w and x["way"] == way), 0)
                for w in workloads
            ]
            ax.bar([j + i * width for j in range(len(workloads))], vals, width, label=way)
        ax.axhline(1.0, c="black", lw=0.8)
        ax.axhline(0.5, ls="--", c="red", lw=0.8)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(workloads))], workloads, rotation=15, fontsize=8
        )
        ax.set_ylabel("samples/s ÷ plain PyTorch")
        ax.set_title("Training throughput (steady state)")
        ax.legend(fontsize=7, ncol=3)
        save(fig, "training.png")
    att = r.get("attestation", {}).get("rows", {})
    if att:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = list(att)
        ax.barh(
            [n + " cold" for n in names], [att[n]["cold"]["median_ms"] for n in names], color="#bbb"
        )
        ax.barh(
            [n + " cached" for n in names],
            [att[n]["cached"]["median_ms"] for n in names],
            color="#48a",
        )
        ax.set_xlabel("ms per verification (median)")
        ax.set_title("Attestation verification")
        ax.tick_params(axis="y", labelsize=7)
        save(fig, "attestation.png")
    e2e = r.get("e2e", {}).get("results", [])
    if e2e:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        bottom = [0.0] * len(e2e)
        labels = [str(x["parties"]) for x in e2e]
        for phase in ("attest", "upload", "train", "seal", "fetch_verify"):
            vals = [x["phases_s"][phase] for x in e2e]
            ax.bar(labels, vals, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xlabel("data providers")
        ax.set_ylabel("seconds")
        ax.set_title("End to end: where the time goes")
        ax.legend(fontsize=7)
        save(fig, "e2e.png")
    fl = r.get("flower", {}).get("results", [])
    if fl:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for x in fl:
            ax.scatter(x["wall_s_median"], x["accuracy_median"])
            ax.annotate(x["method"], (x["wall_s_median"], x["accuracy_median"]), fontsize=7)
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Pooled training in cctrain vs FedAvg (Flower)")
        save(fig, "flower.png")
    return made


#: Where ``./dev bench`` writes by default: git-ignored, so a local run never touches the
#: committed results. ``--publish`` writes the committed ``results/latest.*`` instead.
LOCAL_RESULTS = HERE / "results" / "local"
PUBLISHED_RESULTS = HERE / "results"


def results_dir(out: Path | None, publish: bool) -> Path:
    """The folder a run writes to: ``--out``, else the published results with ``--publish``,
    else the untracked local folder."""
    if out is not None and publish:
        raise SystemExit(
            "run_all: --out and --publish: give one (--publish writes benchmarks/results)"
        )
    if out is not None:
        return out
    return PUBLISHED_RESULTS if publish else LOCAL_RESULTS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smallest configurations (< 2 min)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write results (default: {LOCAL_RESULTS.relative_to(HERE.parent)}, untracked)",
    )
    ap.add_argument(
        "--publish",
        action="store_true",
        help="update the committed benchmarks/results/latest.* (and plots) instead",
    )
    ap.add_argument(
        "--flower",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the Flower comparison (default: full mode, or quick when its venv exists)",
    )
    args = ap.parse_args(argv)
    out = results_dir(args.out, args.publish)
    t0 = time.perf_counter()
    results = run_suite(args.quick, flower=args.flower)
    results["total_seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plots = render_plots(results, out)
    (out / "latest.md").write_text(render_markdown(results, plots))
    print(
        f"\nwrote {out / 'latest.json'}, {out / 'latest.md'} and {len(plots)} plots "
        f"in {results['total_seconds']:.0f} s"
        + ("" if args.publish else " (not published: add --publish to update benchmarks/results)")
    )
    print(render_markdown(results, plots).split("## Ingest")[0])


if __name__ == "__main__":
    main()
