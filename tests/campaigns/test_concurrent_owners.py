"""Campaign 2: 20 data owners upload at once while 20 parties watch, against one enclave.

A consortium of 20 data providers, every one named in ``start.require_uploads_from``.
20 threads each watch the run (``WatchTraining`` through the SDK's ``watch()``) from the
start; once every watcher has its first event, 20 more threads each attest and upload one
shard, all at once. Meanwhile a prober asks a stranger's health check every 0.2 s, on a
fresh connection each time, and records how long each took. The server's default budgets
(:class:`~cctrain_enclave.limits.ServerLimits`: 80 authenticated streams, 4 per party, 2
watches per party, 24 short requests) admit the 40 streams and the 20 attestations at once
without any refusal; the campaign checks that, rather than retrying around it.

Figures: receipts n/20, watchers that saw the final phase, the number of health checks,
their median and maximum latency, and how many missed their (generous, 15 s) deadline.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from cctrain.client import DataOwner, SimulatedEvidenceWarning
from cctrain.crypto.keys import PartyKeys
from cctrain.policy import SignedPolicy, parse_policy
from cctrain.protocol import Receipt
from tests.campaigns._common import FULL, Figures, report
from tests.consortium import RECIPIENT, Consortium, policy_document, running_enclave
from tests.hostile.helpers import HEALTH_DEADLINE_S, health_check
from tests.ingest.conftest import write_shard

OWNERS = 20
PROBE_EVERY_S = 0.2
SERVING = 1  # HealthCheckResponse.SERVING
#: Rows per shard, and the batch size that keeps one epoch short: (small, full).
ROWS = (50, 100_000)
BATCH = (16, 1024)
#: How long a watcher or an uploader may take at most (a safety net, not a measurement).
PATIENCE_S = 600


def twenty_providers(root: Path, *, full: bool) -> Consortium:
    """20 data providers (all required to upload before training) and one recipient."""
    ids = [f"owner-{i:02d}" for i in range(OWNERS)]
    keys = {pid: PartyKeys.generate(pid) for pid in (*ids, RECIPIENT)}
    doc = policy_document(
        keys,
        start={"require_uploads_from": ids},
        training={
            "model": {"name": "logreg"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": BATCH[full],
        },
    )
    signed = SignedPolicy.new(parse_policy(json.dumps(doc).encode(), "json"))
    env = signed.envelope
    for pid, k in keys.items():
        env = env.sign(pid, k.signing_key)
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.signed.json").write_text(env.to_json())
    return Consortium(root, keys, SignedPolicy(env, signed.policy))


class Prober(threading.Thread):
    """Asks the enclave's health every ``PROBE_EVERY_S`` until stopped; records latencies."""

    def __init__(self, address: str) -> None:
        super().__init__(name="health-prober", daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.missed: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status = health_check(self.address)
            except Exception as exc:  # noqa: BLE001 - every miss counts, whatever it was
                self.missed.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                if status != SERVING:
                    self.missed.append(f"status {status}")
                self.latencies.append(time.monotonic() - t0)
            self.stop.wait(PROBE_EVERY_S)


def run_campaign(tmp: Path, *, full: bool = FULL) -> Figures:
    c = twenty_providers(tmp / "c", full=full)
    providers = sorted(p for p in c.keys if p != RECIPIENT)
    rows = ROWS[full]
    shards = {
        pid: write_shard(tmp / f"{pid}.npz", rows=rows, seed=i) for i, pid in enumerate(providers)
    }
    receipts: dict[str, Receipt] = {}
    seen: dict[str, list[str]] = {pid: [] for pid in providers}
    errors: list[str] = []
    lock = threading.Lock()
    first_events = threading.Semaphore(0)
    go = threading.Event()
    t0 = time.monotonic()

    def owner(pid: str) -> DataOwner:
        # warnings.catch_warnings is not thread-safe: the filter is set once, around it all.
        return DataOwner(address, policy=c.signed, key=c.keys[pid], allow_simulated=True)

    def watcher(pid: str) -> None:
        try:
            with owner(pid) as o:
                for n, ev in enumerate(o.watch(timeout=PATIENCE_S)):
                    with lock:
                        if not seen[pid] or seen[pid][-1] != ev.phase:
                            seen[pid].append(ev.phase)
                    if n == 0:
                        first_events.release()
        except Exception as exc:  # noqa: BLE001 - reported as a problem below
            with lock:
                errors.append(f"watcher {pid}: {type(exc).__name__}: {exc}")
            first_events.release()

    def uploader(pid: str) -> None:
        try:
            go.wait()
            with owner(pid) as o:
                r = o.upload(shards[pid], shard_id="shard", state_dir=tmp / "owners" / pid)
            with lock:
                receipts[pid] = r
        except Exception as exc:  # noqa: BLE001 - reported as a problem below
            with lock:
                errors.append(f"uploader {pid}: {type(exc).__name__}: {exc}")

    with (
        warnings.catch_warnings(),
        running_enclave(c, tmp / "state") as (address, _app),
    ):
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        prober = Prober(address)
        prober.start()
        watchers = [
            threading.Thread(target=watcher, args=(p,), name=f"watch-{p}") for p in providers
        ]
        uploaders = [
            threading.Thread(target=uploader, args=(p,), name=f"upload-{p}") for p in providers
        ]
        for t in watchers + uploaders:
            t.start()
        for _ in providers:  # every watch is open (its first event came) before any upload
            first_events.acquire(timeout=PATIENCE_S)
        go.set()
        for t in uploaders + watchers:
            t.join(PATIENCE_S)
        prober.stop.set()
        prober.join(HEALTH_DEADLINE_S + 5)
        with owner(providers[0]) as o:
            status = o.status()
    elapsed = time.monotonic() - t0

    lat = sorted(prober.latencies)
    final = {pid: (phases[-1] if phases else "") for pid, phases in seen.items()}
    saw_final = sum(1 for p in final.values() if p == "released")
    saw_start = sum(1 for phases in seen.values() if phases and phases[0] == "collecting")
    problems = list(errors)
    if len(receipts) != OWNERS:
        problems.append(f"receipts {len(receipts)}/{OWNERS}")
    if sorted(status.providers_uploaded) != providers or status.phase != "released":
        problems.append(f"enclave status {status.phase}, {len(status.providers_uploaded)} uploaded")
    if saw_final != OWNERS:
        problems.append(f"watchers that saw 'released': {saw_final}/{OWNERS}: {final}")
    if saw_start != OWNERS:
        problems.append(f"watchers that saw 'collecting' first: {saw_start}/{OWNERS}")
    if prober.missed:
        problems.append(f"health checks missed: {prober.missed[:5]}")
    if not lat:
        problems.append("no health check answered")
    median_ms = statistics.median(lat) * 1000 if lat else float("nan")
    max_ms = lat[-1] * 1000 if lat else float("nan")
    checks = len(lat) + len(prober.missed)
    line = (
        f"owners: {len(receipts)}/{OWNERS} receipts ({rows} rows each), {saw_final}/{OWNERS} "
        f"watchers saw 'released', {checks} health checks (median {median_ms:.0f} ms, max "
        f"{max_ms:.0f} ms), {len(prober.missed)} missed the {HEALTH_DEADLINE_S:.0f} s deadline"
    )
    numbers: dict[str, Any] = {
        "owners": OWNERS,
        "rows_per_shard": rows,
        "receipts": len(receipts),
        "watchers_saw_final": saw_final,
        "health_checks": checks,
        "health_median_ms": round(median_ms, 1),
        "health_max_ms": round(max_ms, 1),
        "health_missed_deadline": len(prober.missed),
        "health_deadline_s": HEALTH_DEADLINE_S,
        "seconds": round(elapsed, 1),
    }
    return report(Figures("owners", line, numbers, problems))


def test_twenty_owners_upload_while_twenty_watch(tmp_path: Path) -> None:
    # Would catch: an upload or a watch refused or failed under 40 concurrent streams (the
    # budgets too tight for a 20-party consortium), a receipt missing, a watcher that never
    # hears the end of the run, and a health check blocked behind the load.
    figures = run_campaign(tmp_path)
    assert figures.problems == [], figures.problems
