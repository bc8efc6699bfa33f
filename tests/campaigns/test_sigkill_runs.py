"""Campaign 3: SIGKILL the enclave at a random point of upload or training, then restart.

Each run serves a three-provider policy (with DP in some runs, so ε is accounted and
checkpointed) from a real enclave process (``python -m cctrain_enclave serve``, as
:class:`cctrain.local.LocalEnclave` runs it), with acknowledgements every chunk
(``CCTRAIN_ACK_EVERY_BYTES``) and checkpoints every epoch. The run kills it with SIGKILL
at a point drawn from a seeded generator, either

* during the uploads: once the owners, uploading one after another, have handed gRPC a
  drawn number of bytes of their multi-chunk shards, or
* during training: once a watcher sees a drawn step (a step past the end means: after
  the release),

restarts it on the same state directory, lets every owner run its upload again (the SDK
resumes from its state directory, or fetches the receipt of a shard already accepted),
and waits for the release. Per run:

* **no acknowledged shard lost**: every receipt an owner got before the kill is in the
  journal after the restart and in the released manifest;
* **ε not under-counted** (DP runs): the certificate counts every step of the plan
  (steps = epochs × ⌈N/B⌉ from the receipts' row counts, sample rate 1/⌈N/B⌉), its ε is
  what Opacus's RDP accountant gives for those steps at its noise multiplier (an
  uninterrupted run of the same policy accounts exactly these), and it is at least the ε
  the journal recorded at the last checkpoint before the kill;
* the run ends ``released`` (or, killed after its release, is still released) and the
  recipient fetches and verifies the model.

Steps between the last checkpoint and the kill are done again after the restart; their
results died with the process (nothing of them was released), so the certificate need
not count them twice.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cctrain.client import DataOwner, Recipient, SimulatedEvidenceWarning
from cctrain.errors import CctrainError, ProtocolError
from cctrain.journal import JournalError, read_journal_file, replay
from cctrain.local import LocalEnclave
from tests.campaigns._common import FULL, Figures, report
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium
from tests.ingest.conftest import write_shard

REPO = Path(__file__).resolve().parents[2]
SEED = 20_241_011
RUNS = (3, 20)  # (small, full)
#: Runs at once: each enclave start is ~7 s of importing torch and Opacus on one core.
WORKERS = (3, 2)
CHUNK = 16 << 10  # the owners' chunk size; the enclave acknowledges every chunk
ROWS = (2_000, 6_000)  # a shard's rows are drawn in this range: 3-9 chunks of 16 KiB
TRAINING = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 3,
    "batch_size": 128,
}
DP = {"enabled": True, "target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
#: Safety nets only (an enclave start, a whole run): nothing here measures time.
START_S = 180
RUN_S = 600


@dataclass(frozen=True)
class KillPoint:
    """Where a run kills its enclave: after ``byte`` bytes of upload have gone out, or once
    training reaches ``step`` (past the last step: after the release)."""

    dp: bool
    rows: tuple[int, ...]
    during: str  # "upload" | "training"
    byte: int = 0
    step: int = 0


def kill_points(runs: int) -> list[KillPoint]:
    """Every run's kill point, from one seeded generator: the same campaign every time."""
    rng = random.Random(SEED)
    points = []
    for i in range(runs):
        dp = i % 3 != 2  # two runs in three with DP
        rows = tuple(rng.randint(*ROWS) for _ in PROVIDERS)
        # The first two runs kill once each way (so the small version has both), then drawn.
        during = ("upload", "training")[i if i < 2 else rng.randint(0, 1)]
        # Upload: any byte of the three shards (~24 bytes a row, as write_shard stores them).
        total_bytes = sum(r * 24 + 600 for r in rows)
        steps = TRAINING["epochs"] * math.ceil(sum(rows) / TRAINING["batch_size"])
        points.append(
            KillPoint(
                dp=dp,
                rows=rows,
                during=during,
                byte=rng.randint(1, total_bytes),
                step=rng.randint(1, int(steps * 1.15)),  # about one run in eight: after release
            )
        )
    return points


@dataclass
class RunResult:
    index: int
    point: KillPoint
    phase_at_kill: str = ""
    checkpoint_at_kill: int | None = None
    epsilon_at_kill: float | None = None
    receipts_before_kill: int = 0
    shards_lost: int = 0
    epsilon_under_counted: bool = False
    released: bool = False
    epsilon: float | None = None
    resumed_training: bool = False
    problems: list[str] = field(default_factory=list)


def _enclave(c: Consortium, state: Path, log: Path) -> LocalEnclave:
    path = os.pathsep.join(
        [str(REPO), str(REPO / "enclave"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    enclave = LocalEnclave(
        policy=c.policy_path,
        state_dir=state,
        log=log,
        env=dict(os.environ, PYTHONPATH=path, CCTRAIN_ACK_EVERY_BYTES=str(CHUNK)),
    )
    enclave.start(timeout=START_S)
    return enclave


class Killer:
    """SIGKILL the enclave once, from any thread. ``killed`` is set before the signal goes
    out (``Popen.poll`` answers "running" while another thread waits for the process)."""

    def __init__(self, enclave: LocalEnclave) -> None:
        self.enclave = enclave
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if not self.killed.is_set():
                self.killed.set()
                self.enclave.kill()


def _owner(address: str, c: Consortium, party: str) -> DataOwner:
    return DataOwner(address, policy=c.signed, key=c.keys[party], allow_simulated=True)


def _journal_view(c: Consortium, state: Path) -> Any:
    """The run as the journal on disk says it is (read as the host can read it)."""
    return replay(read_journal_file(state / "journal.log"), c.signed.policy)


def one_run(index: int, point: KillPoint, root: Path) -> RunResult:
    res = RunResult(index, point)
    c = make_consortium(
        root / "c", privacy=DP if point.dp else {"enabled": False}, training=TRAINING
    )
    state, log = root / "state", root / "enclave.log"
    shards = {
        p: write_shard(root / f"{p}.npz", rows=point.rows[i], seed=SEED + 10 * index + i)
        for i, p in enumerate(PROVIDERS)
    }
    receipts: dict[str, bytes] = {}
    enclave = _enclave(c, state, log)
    try:
        kill = Killer(enclave)
        if point.during == "upload":
            _upload_until_killed(enclave, kill, c, shards, root, receipts, point.byte)
        else:
            _train_until_killed(enclave, kill, c, shards, root, receipts, point.step)
        kill()  # (already dead, unless the uploads all went through first)
        res.receipts_before_kill = len(receipts)
        try:
            view = _journal_view(c, state)
        except (OSError, JournalError) as exc:
            res.problems.append(f"journal unreadable after the kill: {exc}")
            return res
        res.phase_at_kill = view.phase
        if view.checkpoint is not None:
            res.checkpoint_at_kill = view.checkpoint.step
            res.epsilon_at_kill = view.checkpoint.epsilon

        enclave = _enclave(c, state, log)
        address = enclave.address
        final: dict[str, bytes] = {}
        for p in PROVIDERS:  # every owner runs its upload again: resume, or its receipt
            with _owner(address, c, p) as o:
                final[p] = o.upload(shards[p], shard_id="s", state_dir=root / f"owner-{p}").body
        with _owner(address, c, PROVIDERS[0]) as o:
            phase = o.wait_for_phase(("released",), timeout=RUN_S)
            journal = o.audit()  # the whole chain, re-verified, as any party can
        journaled = {s.receipt.body for s in journal.state.shards}
        with Recipient(address, policy=c.signed, key=c.keys[RECIPIENT], allow_simulated=True) as r:
            model = r.fetch_model()  # manifest, evidence, shard set, unseal, model hash
        manifest = model.manifest
        released = {base64.b64decode(x["body"]) for x in manifest["receipts"]}
        res.released = phase == "released" and journal.state.phase == "released"
        for p, body in receipts.items():
            if body not in journaled or body not in released or final[p] != body:
                res.shards_lost += 1
                res.problems.append(f"the receipt {p} got before the kill is not in the release")
        if len(released) != len(PROVIDERS):
            res.problems.append(f"the release lists {len(released)} shards")
        res.resumed_training = "resuming training after a restart" in log.read_text()
        if point.dp:
            _check_epsilon(res, manifest, sum(point.rows))
        elif manifest.get("dp_certificate") is not None:
            res.problems.append("a DP certificate in a run without DP")
    except (CctrainError, OSError, AssertionError) as exc:
        res.problems.append(f"{type(exc).__name__}: {exc}"[:600])
    finally:
        enclave.stop(grace_s=60)
    if not res.released:
        res.problems.append(f"run {index} did not end released")
    return res


def _upload_until_killed(
    enclave: LocalEnclave,
    kill: Killer,
    c: Consortium,
    shards: dict[str, Path],
    root: Path,
    receipts: dict[str, bytes],
    at_byte: int,
) -> None:
    """The owners upload one after another; the enclave dies once ``at_byte`` bytes went out."""
    before = 0
    for p in PROVIDERS:
        offset = before

        def kill_at(sent: int, _total: int, offset: int = offset) -> None:
            if offset + sent >= at_byte:
                kill()

        try:
            with _owner(enclave.address, c, p) as o:
                receipts[p] = o.upload(
                    shards[p],
                    shard_id="s",
                    chunk_size=CHUNK,
                    progress=kill_at,
                    state_dir=root / f"owner-{p}",
                ).body
        except ProtocolError:
            if not kill.killed.is_set():
                raise
            return
        before += shards[p].stat().st_size
        if kill.killed.is_set():
            return


def _train_until_killed(
    enclave: LocalEnclave,
    kill: Killer,
    c: Consortium,
    shards: dict[str, Path],
    root: Path,
    receipts: dict[str, bytes],
    at_step: int,
) -> None:
    """Every owner uploads; a watcher kills the enclave when training reaches ``at_step``
    (or, if the run ends first, right after its release)."""
    watching = threading.Event()
    done = threading.Event()

    def watch() -> None:
        try:
            with _owner(enclave.address, c, PROVIDERS[0]) as o:
                for ev in o.watch(timeout=RUN_S):
                    watching.set()
                    if ev.step >= at_step or ev.phase in ("released", "failed"):
                        kill()
                        return
        except ProtocolError:
            pass  # the stream died with the enclave
        finally:
            watching.set()
            done.set()

    watcher = threading.Thread(target=watch, name="kill-watcher", daemon=True)
    watcher.start()
    watching.wait(RUN_S)
    for p in PROVIDERS:
        try:
            with _owner(enclave.address, c, p) as o:
                receipts[p] = o.upload(
                    shards[p], shard_id="s", chunk_size=CHUNK, state_dir=root / f"owner-{p}"
                ).body
        except ProtocolError:
            if not kill.killed.is_set():
                raise
            break  # killed before this owner had its receipt: it resumes after the restart
    done.wait(RUN_S)


def _check_epsilon(res: RunResult, manifest: dict[str, Any], rows: int) -> None:
    from opacus.accountants import RDPAccountant

    cert = manifest.get("dp_certificate")
    if cert is None:
        res.problems.append("no DP certificate in a DP run")
        res.epsilon_under_counted = True
        return
    steps_per_epoch = math.ceil(rows / TRAINING["batch_size"])
    planned = TRAINING["epochs"] * steps_per_epoch
    acc = RDPAccountant()
    acc.history = [(cert["noise_multiplier"], 1.0 / steps_per_epoch, planned)]
    uninterrupted = acc.get_epsilon(delta=DP["delta"])
    res.epsilon = float(cert["epsilon"])
    checks = {
        "steps == the plan": cert["steps"] == cert["steps_planned"] == planned,
        "not stopped early": not cert["stopped_early"],
        "sample rate 1/⌈N/B⌉": math.isclose(cert["sample_rate"], 1.0 / steps_per_epoch),
        "ε == accountant(σ, q, all steps)": math.isclose(
            cert["epsilon"], uninterrupted, rel_tol=1e-9
        ),
        "ε ≥ ε journaled before the kill": res.epsilon_at_kill is None
        or cert["epsilon"] >= res.epsilon_at_kill,
        "steps ≥ checkpoint before the kill": res.checkpoint_at_kill is None
        or cert["steps"] >= res.checkpoint_at_kill,
        "ε within the target": cert["epsilon"] <= DP["target_epsilon"],
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        res.epsilon_under_counted = True
        res.problems.append(f"DP certificate {json.dumps(cert)[:300]} fails: {failed}")


def run_campaign(tmp: Path, *, full: bool = FULL) -> Figures:
    points = kill_points(RUNS[full])
    t0 = time.monotonic()
    with warnings.catch_warnings():  # set once: catch_warnings is not thread-safe
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        with ThreadPoolExecutor(WORKERS[full], thread_name_prefix="sigkill-run") as pool:
            results = list(
                pool.map(
                    lambda ip: one_run(ip[0], ip[1], tmp / f"run-{ip[0]:02d}"), enumerate(points)
                )
            )
    elapsed = time.monotonic() - t0
    by_phase: dict[str, int] = {}
    for r in results:
        by_phase[r.phase_at_kill or "?"] = by_phase.get(r.phase_at_kill or "?", 0) + 1
    lost = sum(r.shards_lost for r in results)
    under = sum(1 for r in results if r.epsilon_under_counted)
    released = sum(1 for r in results if r.released)
    dp_runs = sum(1 for r in results if r.point.dp)
    phases = ", ".join(f"{n} {p}" for p, n in sorted(by_phase.items()))
    line = (
        f"sigkill: {len(results)} runs ({dp_runs} with DP), killed in: {phases}; "
        f"{lost} acknowledged shards lost, ε under-counted in {under} runs, "
        f"{released}/{len(results)} released"
    )
    problems = [f"run {r.index}: {p}" for r in results for p in r.problems]
    numbers = {
        "runs": len(results),
        "dp_runs": dp_runs,
        "kill_phase": by_phase,
        "shards_lost": lost,
        "epsilon_under_counted": under,
        "released": released,
        "runs_detail": [
            {
                "run": r.index,
                "dp": r.point.dp,
                "trigger": r.point.during,
                "at": r.point.byte if r.point.during == "upload" else r.point.step,
                "phase_at_kill": r.phase_at_kill,
                "receipts_before_kill": r.receipts_before_kill,
                "checkpoint_step_at_kill": r.checkpoint_at_kill,
                "epsilon_at_kill": r.epsilon_at_kill,
                "epsilon_released": r.epsilon,
                "resumed_training": r.resumed_training,
                "released": r.released,
            }
            for r in results
        ],
        "seconds": round(elapsed, 1),
    }
    return report(Figures("sigkill", line, numbers, problems))


def test_sigkill_during_upload_or_training_then_restart(tmp_path: Path) -> None:
    # Would catch: an acknowledged shard missing after a crash (a receipt sent before the
    # journal entry was durable), ε that forgets the steps before a crash (an accountant
    # not restored from the checkpoint), a restart that cannot resume an upload or the
    # training, and a release lost or broken by a crash after it.
    figures = run_campaign(tmp_path)
    assert figures.problems == [], figures.problems
    kinds = {d["trigger"] for d in figures.numbers["runs_detail"]}
    assert kinds == {"upload", "training"}  # both kinds of kill, in every version
