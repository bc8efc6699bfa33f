"""Attestation verification latency per platform, over the real vectors in ../shared.

For each platform, ``verify_evidence`` (parse, signatures, certificate chain up to the pinned
vendor root, and for DCAP the collateral: TCB info, QE identity, CRLs) is timed in three modes:

* ``cold``: in this process, after clearing every module-level cache of the attestation
  modules (the SEV-SNP chain-signature cache and pinned AMD roots, the DCAP collateral/PEM/CRL
  parsers and pinned Intel certificates, the pinned NVIDIA root); imports are not timed;
* ``cached``: the same call repeated in-process, after one warm-up call, so the certificates,
  roots and collateral parsed earlier are reused (what a long-running verifier sees);
* ``fresh-process``: the first verification in a brand-new interpreter (modules imported and
  files read before the clock starts), as a cross-check of ``cold``.

Rows: ``sev-snp`` (6 reports: Milan, Genoa, Azure HCL, trustee JSON, hex), ``tdx+collateral``
and ``sgx+collateral`` (the phala quotes with their full collateral, at the upstream test
times), ``dcap-quote-only`` (4 TDX quotes, no collateral), ``nvidia-gpu`` (6 reports and
chains).  Collateral is loaded from disk once (a verifier holds it in memory); its parsing is
part of the timed call.  Every timed call must verify, or the run fails.

Targets: SNP with certificates cached < 5 ms (median); DCAP quote with collateral < 20 ms
(median, collateral cached).

    .venv/bin/python benchmarks/bench_attestation.py --quick
    .venv/bin/python benchmarks/bench_attestation.py --repeats 200 --json out.json

Importable: ``run(repeats=..., quick=...) -> dict``.  Without ../shared/attestation-vectors
it prints why and exits 0 (``run`` returns ``{"skipped": reason}``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib
import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

#: Where the vectors live: beside the checkout, never in it (as tests/conftest.py).
VECTORS = REPO.parent / "shared" / "attestation-vectors"

SNP_CACHED_TARGET_MS = 5.0
DCAP_COLLATERAL_TARGET_MS = 20.0
#: The token platforms of issue #12: each < 2 ms median with its roots and keys cached.
NEW_PLATFORM_TARGET_MS = 2.0
NEW_PLATFORM_ROWS = ("aws-nitro", "arm-cca", "arm-psa", "azure-snp-vtpm")


def _t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Case:
    """One vector: evidence file, certificate files, collateral path, verification time."""

    platform: str
    evidence: str
    certs: tuple[str, ...] = ()
    collateral: str | None = None
    at: str | None = None  # None: now (NVIDIA chains are valid to 9999)
    keys: tuple[str, ...] = ()  # trust keys of key-anchored platforms (CCA CPAK, PSA IAK)


#: Row name -> cases.  Times are those in PROVENANCE.md / the upstream tests.
ROWS: dict[str, list[Case]] = {
    "sev-snp": [
        Case(
            "sev-snp",
            "sev-snp/go-sev-guest_milan_attestation.bin",
            ("sev-snp/go-sev-guest_milan_vcek.der",),
            at="2022-09-24T01:00:00Z",
        ),
        Case(
            "sev-snp",
            "sev-snp/oak_genoa_report.bin",
            ("sev-snp/oak_genoa_vcek.der",),
            at="2025-08-08T12:00:00Z",
        ),
        Case(
            "sev-snp",
            "sev-snp/oak_milan_report.bin",
            ("sev-snp/oak_milan_vcek.der",),
            at="2025-07-28T12:00:00Z",
        ),
        Case(
            "sev-snp",
            "sev-snp/trustee_milan_vcek_report.bin",
            ("sev-snp/trustee_milan_vcek.der",),
            at="2024-01-01T00:00:00Z",
        ),
        Case(
            "sev-snp",
            "sev-snp/virtee-sev_milan_report.hex",
            ("sev-snp/virtee-sev_milan_vcek.der",),
            at="2024-01-01T00:00:00Z",
        ),
        Case(
            "sev-snp",
            "sev-snp/azure-cvm_milan_hcl_report.bin",
            ("sev-snp/azure-cvm_milan_vcek_chain.pem",),
            at="2024-01-01T00:00:00Z",
        ),
    ],
    "tdx+collateral": [
        Case(
            "tdx",
            "tdx/phala_v4_quote.dat",
            collateral="tdx/phala_v4_quote_collateral.json",
            at="2025-07-19T10:00:34Z",
        ),
    ],
    "sgx+collateral": [
        Case(
            "sgx",
            "sgx/phala_v3_quote.dat",
            collateral="sgx/phala_v3_quote_collateral.json",
            at="2025-07-19T10:01:17Z",
        ),
    ],
    "dcap-quote-only": [
        Case("tdx", "tdx/phala_v4_quote.dat", at="2025-07-19T10:00:34Z"),
        Case("tdx", "tdx/trustee_v4_quote6.dat", at="2025-11-01T00:00:00Z"),
        Case("tdx", "tdx/go-tdx-guest_v5_quote.dat", at="2026-02-03T01:00:00Z"),
        Case("sgx", "sgx/phala_v3_quote.dat", at="2025-07-19T10:01:17Z"),
    ],
    "nvidia-gpu": [
        Case(
            "nvidia-gpu",
            "nvidia-gpu/nvtrust_hopper_report.hex",
            ("nvidia-gpu/nvtrust_hopper_cert_chain.pem",),
        ),
        Case(
            "nvidia-gpu",
            "nvidia-gpu/nvat-sdk_hopper_report.hex",
            ("nvidia-gpu/nvat-sdk_hopper_cert_chain.pem",),
        ),
        Case(
            "nvidia-gpu",
            "nvidia-gpu/nvat-sdk_sample_hopper_report.hex",
            ("nvidia-gpu/nvat-sdk_sample_hopper_cert_chain.pem",),
        ),
        Case(
            "nvidia-gpu",
            "nvidia-gpu/nvat-sdk_sample_blackwell_report.hex",
            ("nvidia-gpu/nvat-sdk_sample_blackwell_cert_chain.pem",),
        ),
        Case(
            "nvidia-gpu",
            "nvidia-gpu/trustee_hopper_coco_report1.hex",
            ("nvidia-gpu/trustee_hopper_coco_cert_chain1.pem",),
        ),
        Case("nvidia-gpu", "nvidia-gpu/nvat-sdk_evidence_hopper_590_12.json"),
    ],
    # Real NSM documents, each at its own timestamp (the leaf certificate lives ~3 h).
    "aws-nitro": [
        Case("aws-nitro", f"aws-nitro/{name}", at=at)
        for name, at in (
            ("veracruz_eu-west-1_2022-11-09.cbor", "2022-11-09T22:52:00.696Z"),
            ("evervault_us-east-1_2022-10-12_debug.cbor", "2022-10-12T13:50:06.081Z"),
            ("evervault_us-east-1_2022-10-13.cbor", "2022-10-13T08:58:02.136Z"),
            ("evervault_us-east-1_2023-01-18_cert-with-doc.der", "2023-01-18T13:07:19.280Z"),
            ("evervault_us-east-1_2023-09-18_debug.b64", "2023-09-18T15:03:30.860Z"),
        )
    ],
    # Key-anchored tokens: no certificates, so no time (PROVENANCE-batch2.md).
    "arm-cca": [
        Case(
            "arm-cca",
            f"arm-cca/{name}",
            keys=(f"arm-cca/{cpak}",),
        )
        for name, cpak in (
            ("islet_fvp-hes_realm-verifier_token.bin", "islet_hes_cpak_public.bin"),
            ("islet_fvp-hes_ratls-client_token.bin", "islet_hes_cpak_public.bin"),
            ("islet_fvp-tfa_rsictl_token.bin", "arm_tfa_cpak_public.pem"),
            ("veraison-ccatoken_tf-rmm_cca_token.cbor", "arm_tfa_cpak_public.pem"),
            ("tf-m-tools_cca_token.cbor", "arm_tfa_cpak_public.pem"),
            ("tf-m-tools_cca_example_token.cbor", "arm_tfa_cpak_public.pem"),
            ("trustee_cca-example-token.cbor", "arm_tfa_cpak_public.pem"),
        )
    ],
    # Azure CVM: HCL report (SNP) + vTPM quote; each VCEK is valid 2025-01..2032-01.
    "azure-snp-vtpm": [
        Case("azure-snp-vtpm", f"other/{name}", at="2026-01-01T00:00:00Z")
        for name in (
            "azure-cvm-vtpm_genoa_evidence.json",
            "azure-cvm-vtpm_milan_evidence_v0.json",
            "azure-cvm-vtpm_milan_evidence_v1.json",
            "azure-cvm-vtpm_milan_evidence_v2.json",
        )
    ],
    "arm-psa": [
        Case("arm-psa", f"arm-psa/{name}", keys=("arm-psa/tfm_default_iak_public.pem",))
        for name in (
            "zephyr_psa-crypto_tfm-1.4.1_iat.cbor",
            "zephyr_psa-level-1_iatresp.cbor",
            "psatoken_tf-m_psa-iot-1_sign1.bin",
            "psatoken_tf-m_psa-2_0_0_sign1.bin",
        )
    ],
}

#: Modules whose module-level caches "cold" clears (imported before any timing).
ATTESTATION_MODULES = (
    "cctrain.attestation.pipeline",
    "cctrain.attestation.sev_snp.certs",
    "cctrain.attestation.sev_snp.verify",
    "cctrain.attestation.dcap.collateral",
    "cctrain.attestation.dcap.verify",
    "cctrain.attestation.nvidia_gpu.verify",
)


def clear_caches() -> list[str]:
    """Forget every module-level cache of the attestation modules; return what was cleared.

    Found generically (``functools.lru_cache`` functions defined in any loaded
    ``cctrain.attestation`` module) plus the two hand-written ones in SEV-SNP.
    """
    cleared: list[str] = []
    for name, mod in sorted(sys.modules.items()):
        if not name.startswith("cctrain.attestation") or mod is None:
            continue
        for attr, obj in vars(mod).items():
            if (
                callable(getattr(obj, "cache_clear", None))
                and getattr(obj, "__module__", None) == name
            ):
                obj.cache_clear()
                cleared.append(f"{name}.{attr}")
    snp_verify = sys.modules.get("cctrain.attestation.sev_snp.verify")
    if snp_verify is not None:
        snp_verify.clear_cache()
        cleared.append("cctrain.attestation.sev_snp.verify._signature_cache")
    snp_certs = sys.modules.get("cctrain.attestation.sev_snp.certs")
    if snp_certs is not None:
        snp_certs._ROOTS = None  # type: ignore[attr-defined]
        cleared.append("cctrain.attestation.sev_snp.certs._ROOTS")
    return cleared


@dataclass
class Prepared:
    case: Case
    call: Callable[[], Any]
    label: str = field(default="")


def _prepare(vectors: Path, case: Case) -> Prepared:
    """Read files once (not timed) and return the timed call."""
    from cctrain.attestation.base import Evidence
    from cctrain.attestation.pipeline import read_evidence_bytes, verify_evidence
    from cctrain.attestation.verify_cli import load_collateral

    raw = read_evidence_bytes((vectors / case.evidence).read_bytes())
    certs = tuple((vectors / c).read_bytes() for c in case.certs)
    collateral: Mapping[str, Any] | None = (
        load_collateral(vectors / case.collateral) if case.collateral else None
    )
    evidence = Evidence(
        platform=case.platform, report=raw, certificates=certs, collateral=collateral
    )
    now = _t(case.at) if case.at else None
    keys = [(vectors / k).read_bytes() for k in case.keys]

    def call() -> Any:
        claims = verify_evidence(evidence, now=now, trust_keys=keys)
        if claims.platform != case.platform:  # pragma: no cover - a broken verifier
            raise AssertionError(f"{case.evidence}: verified as {claims.platform}")
        if case.collateral and claims.tcb_status is None:  # pragma: no cover
            raise AssertionError(f"{case.evidence}: collateral was not evaluated")
        return claims

    return Prepared(case, call, case.evidence.split("/")[-1])


def _stats(samples_ns: list[int]) -> dict[str, Any]:
    ms = sorted(s / 1e6 for s in samples_ns)
    p90 = ms[max(0, math.ceil(0.9 * len(ms)) - 1)]  # nearest rank
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 4),
        "p90_ms": round(p90, 4),
        "min_ms": round(ms[0], 4),
        "max_ms": round(ms[-1], 4),
    }


def _time_in_process(prepared: list[Prepared], repeats: int, *, cold: bool) -> list[int]:
    samples: list[int] = []
    if not cold:
        for p in prepared:  # warm-up: parse and cache roots, chains, collateral
            p.call()
    gc_was_enabled = gc.isenabled()
    try:
        for i in range(repeats):
            p = prepared[i % len(prepared)]
            if cold:
                clear_caches()
                gc.collect()
            gc.disable()
            t0 = time.perf_counter_ns()
            p.call()
            samples.append(time.perf_counter_ns() - t0)
            if gc_was_enabled:
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


_CHILD = r"""
import datetime as dt, json, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, sys.argv[1])
from cctrain.attestation.base import Evidence, get_platform, registered_platforms
from cctrain.attestation.pipeline import read_evidence_bytes, verify_evidence
from cctrain.attestation.verify_cli import load_collateral
from pathlib import Path
spec = json.loads(sys.argv[2]); v = Path(spec["vectors"])
registered_platforms()  # import every platform module (not timed)
raw = read_evidence_bytes((v / spec["evidence"]).read_bytes())
certs = tuple((v / c).read_bytes() for c in spec["certs"])
coll = load_collateral(v / spec["collateral"]) if spec["collateral"] else None
now = dt.datetime.fromisoformat(spec["at"].replace("Z", "+00:00")) if spec["at"] else None
keys = [(v / k).read_bytes() for k in spec.get("keys", [])]
if coll is not None:  # loading the files parsed (and cached) it: start cold like the others
    import cctrain.attestation.dcap.collateral as c
    for f in (c.load_pem_chain, c.load_crl, c._parse_signed_json): f.cache_clear()
ev = Evidence(platform=spec["platform"], report=raw, certificates=certs, collateral=coll)
t0 = time.perf_counter_ns(); claims = verify_evidence(ev, now=now, trust_keys=keys); t1 = time.perf_counter_ns()
assert claims.platform == spec["platform"]
print(json.dumps({"ns": t1 - t0}))
"""


def _time_fresh_process(vectors: Path, cases: list[Case], repeats: int) -> list[int]:
    samples: list[int] = []
    for i in range(repeats):
        c = cases[i % len(cases)]
        spec = {
            "vectors": str(vectors),
            "platform": c.platform,
            "evidence": c.evidence,
            "certs": list(c.certs),
            "collateral": c.collateral,
            "at": c.at,
            "keys": list(c.keys),
        }
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(REPO), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        samples.append(int(json.loads(out.stdout.strip().splitlines()[-1])["ns"]))
    return samples


def run(
    repeats: int = 100,
    quick: bool = False,
    *,
    vectors: Path | None = None,
    fresh_repeats: int | None = None,
) -> dict[str, Any]:
    """Time every row in every mode; return the results (see module docstring)."""
    vectors = Path(vectors) if vectors is not None else VECTORS
    if not (vectors / "PROVENANCE.md").is_file():
        return {"skipped": f"attestation vectors not found at {vectors} (they live in ../shared/)"}
    if quick:
        repeats = min(repeats, 20)
    if fresh_repeats is None:
        fresh_repeats = 2 if quick else 6
    warnings.simplefilter("ignore")  # AMD VCEK serial 0 (cryptography deprecation)
    for mod in ATTESTATION_MODULES:
        importlib.import_module(mod)
    from cctrain.attestation.base import registered_platforms

    registered_platforms()
    results: dict[str, Any] = {
        "environment": machine_info(),
        "repeats": repeats,
        "fresh_repeats": fresh_repeats,
        "caches_cleared_for_cold": clear_caches(),
        "rows": {},
    }
    for row, cases in ROWS.items():
        prepared = [_prepare(vectors, c) for c in cases]
        modes = {
            "cold": _stats(_time_in_process(prepared, repeats, cold=True)),
            "cached": _stats(_time_in_process(prepared, repeats, cold=False)),
        }
        if fresh_repeats > 0:
            modes["fresh-process"] = _stats(_time_fresh_process(vectors, cases, fresh_repeats))
        results["rows"][row] = {"vectors": [p.label for p in prepared], **modes}
    rows = results["rows"]
    snp = rows["sev-snp"]["cached"]["median_ms"]
    dcap = max(rows[r]["cached"]["median_ms"] for r in ("tdx+collateral", "sgx+collateral"))
    dcap_cold = max(rows[r]["cold"]["median_ms"] for r in ("tdx+collateral", "sgx+collateral"))
    results["targets"] = {
        "snp_cached_lt_5ms": {
            "median_ms": snp,
            "target_ms": SNP_CACHED_TARGET_MS,
            "holds": snp < SNP_CACHED_TARGET_MS,
        },
        "dcap_collateral_lt_20ms": {
            "median_ms": dcap,
            "target_ms": DCAP_COLLATERAL_TARGET_MS,
            "holds": dcap < DCAP_COLLATERAL_TARGET_MS,
            "cold_median_ms": dcap_cold,
            "holds_cold": dcap_cold < DCAP_COLLATERAL_TARGET_MS,
        },
        "new_platforms_cached_lt_2ms": {
            row: {
                "median_ms": results["rows"][row]["cached"]["median_ms"],
                "holds": results["rows"][row]["cached"]["median_ms"] < NEW_PLATFORM_TARGET_MS,
            }
            for row in NEW_PLATFORM_ROWS
            if row in results["rows"]
        },
    }
    return results


def format_table(results: Mapping[str, Any]) -> str:
    modes = ("cold", "cached", "fresh-process")
    head = f"{'platform':<17}" + "".join(f"{m + ' med':>19}{'p90':>9}" for m in modes)
    lines = [head, "-" * len(head)]
    for row, r in results["rows"].items():
        cells = ""
        for m in modes:
            if m in r:
                cells += f"{r[m]['median_ms']:>16.3f} ms{r[m]['p90_ms']:>9.3f}"
            else:
                cells += f"{'-':>19}{'-':>9}"
        lines.append(f"{row:<17}{cells}")
    t = results["targets"]
    s, d = t["snp_cached_lt_5ms"], t["dcap_collateral_lt_20ms"]
    lines.append("")
    lines.append(
        f"target SNP, certificates cached < {s['target_ms']:g} ms: median {s['median_ms']:.3f} ms "
        f"-> {'HOLDS' if s['holds'] else 'MISSED'}"
    )
    lines.append(
        f"target DCAP quote + collateral < {d['target_ms']:g} ms: cached median "
        f"{d['median_ms']:.3f} ms -> {'HOLDS' if d['holds'] else 'MISSED'} "
        f"(cold median {d['cold_median_ms']:.3f} ms -> {'holds' if d['holds_cold'] else 'missed'})"
    )
    for row, r in t["new_platforms_cached_lt_2ms"].items():
        lines.append(
            f"target {row} cached < {NEW_PLATFORM_TARGET_MS:g} ms: median {r['median_ms']:.3f} ms "
            f"-> {'HOLDS' if r['holds'] else 'MISSED'}"
        )
    e = results["environment"]
    lines.append(
        f"({results['repeats']} in-process calls per row and mode, {results['fresh_repeats']} fresh "
        f"processes; Python {e['python']}, cryptography {e['versions']['cryptography']}, "
        f"{e['processor']}, {e['cpu_count']} CPUs)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200, help="in-process calls per row and mode")
    ap.add_argument("--quick", action="store_true", help="few repeats (< 20 s)")
    ap.add_argument("--fresh-repeats", type=int, default=None, help="fresh processes per row")
    ap.add_argument("--vectors", type=Path, default=VECTORS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    results = run(
        repeats=args.repeats,
        quick=args.quick,
        vectors=args.vectors,
        fresh_repeats=args.fresh_repeats,
    )
    if "skipped" in results:
        print(f"skipped: {results['skipped']}")
        return 0
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
