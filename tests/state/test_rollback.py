"""The host restores an old copy of the enclave's state, or deletes it, and restarts: the
parties are the counter it lacks.

One DP run of a policy that allows one release (hospital-a must approve) is played to its
release while the host snapshots the state directory at every phase; each party keeps its
own state directory (its memory). Each test then restores one snapshot (or none) into a new
state directory, restarts the enclave on it, and checks that every party that saw the run
refuses it with "fork or rollback", so that no second release can be approved or fetched.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cctrain.client import DataOwner, EnclaveSession, Recipient
from cctrain.errors import InputError
from cctrain.journal import read_journal_file, replay
from cctrain.memory import ForkOrRollbackError, PartyMemory, ReleaseLimitError
from cctrain.protocol import sign_approval
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard
from tests.state.conftest import DP, session

PARTIES = (*PROVIDERS, RECIPIENT)
RELEASE = {
    "recipients": [RECIPIENT],
    "metrics": ["steps"],
    "approvals_required_from": ["hospital-a"],
}
#: Long enough that a checkpoint is journaled well before training ends.
TRAINING = {
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "epochs": 40,
    "batch_size": 16,
}


@dataclass
class History:
    consortium: Consortium
    homes: dict[str, Path]  # each party's state directory: what it remembers
    snapshots: dict[str, Path]  # phase -> a copy of the enclave's state directory then
    manifest_sha256: bytes
    tmp: Path

    def restore(self, phase: str | None, dest: Path) -> Path:
        if phase is None:
            dest.mkdir()
        else:
            shutil.copytree(self.snapshots[phase], dest)
        return dest


def _snapshot(state: Path, dest: Path) -> Path:
    shutil.copytree(state, dest, ignore=shutil.ignore_patterns("LOCK", "endpoint.json"))
    return dest


def _phase(state: Path, c: Consortium) -> str:
    return replay(read_journal_file(state / "journal.log"), c.signed.policy).phase


def _wait_journaled(state: Path, c: Consortium, want: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = replay(read_journal_file(state / "journal.log"), c.signed.policy)
        except Exception:  # noqa: BLE001 - a torn tail while the enclave appends
            view = None
        if view is not None and (view.checkpoint is not None if want == "checkpoint" else False):
            return
        time.sleep(0.005)
    raise AssertionError(f"no {want} journaled")


def connect(cls: type, address: str, h: History, party: str, **kw: object) -> object:
    return session(cls, address, h.consortium, party, state_dir=h.homes[party], **kw)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    tmp = tmp_path_factory.mktemp("rollback")
    c = make_consortium(tmp / "c", privacy=DP, training=TRAINING, release=RELEASE)
    homes = {p: tmp / f"home-{p}" for p in PARTIES}
    snaps: dict[str, Path] = {}
    state = tmp / "state"
    h = History(c, homes, snaps, b"", tmp)

    def upload(address: str, party: str, seed: int) -> None:
        with connect(DataOwner, address, h, party) as o:  # type: ignore[attr-defined]
            o.upload(write_shard(tmp / f"{party}.npz", rows=60, seed=seed))

    with running_enclave(c, state) as (address, _):
        upload(address, "hospital-a", 0)
        upload(address, "hospital-b", 1)
    snaps["collecting"] = _snapshot(state, tmp / "snap-collecting")
    with running_enclave(c, state) as (address, _):
        upload(address, "hospital-c", 2)  # the start rule holds: training starts
        _wait_journaled(state, c, "checkpoint")
    # Stopped at its next step: the journal ends at a checkpoint, mid-training.
    assert _phase(state, c) == "training"
    snaps["training"] = _snapshot(state, tmp / "snap-training")
    with running_enclave(c, state) as (address, _):
        with connect(DataOwner, address, h, "hospital-b") as o:  # type: ignore[attr-defined]
            assert o.wait_for_phase(("awaiting_approval",), timeout=300) == "awaiting_approval"
            h.manifest_sha256 = o.release_manifest().manifest_sha256
        snaps["awaiting_approval"] = _snapshot(state, tmp / "snap-awaiting")
        with connect(DataOwner, address, h, "hospital-a") as o:  # type: ignore[attr-defined]
            assert o.approve_release() == ["hospital-a"]
        with connect(Recipient, address, h, RECIPIENT) as r:  # type: ignore[attr-defined]
            r.fetch_model()
        for p in ("hospital-b", "hospital-c"):  # every party has seen the release
            with connect(EnclaveSession, address, h, p) as s:  # type: ignore[attr-defined]
                assert s.status().phase == "released"
    snaps["released"] = _snapshot(state, tmp / "snap-released")
    return h


def _refused_by_everyone(h: History, address: str, match: str) -> None:
    for party in PARTIES:
        cls = Recipient if party == RECIPIENT else DataOwner
        with pytest.raises(ForkOrRollbackError, match=match):
            connect(cls, address, h, party)


@pytest.mark.parametrize("phase", ["collecting", "training", "awaiting_approval"])
def test_restored_snapshot_is_refused_by_every_party_that_saw_more(
    history: History, tmp_path: Path, phase: str
) -> None:
    state = history.restore(phase, tmp_path / "state")
    with running_enclave(history.consortium, state) as (address, _):
        _refused_by_everyone(
            history, address, r"fork or rollback: this party saw run .* an earlier"
        )


def test_mid_training_snapshot_retrains_with_fresh_noise_and_nobody_approves_it(
    history: History, tmp_path: Path
) -> None:
    """The attack of the issue: restore a mid-training snapshot; the enclave re-runs the
    steps after it with fresh noise and builds a second manifest. The approving provider
    and the recipient refuse it; nothing is released."""
    state = history.restore("training", tmp_path / "state")
    with running_enclave(history.consortium, state) as (address, _):
        # A party that remembers nothing (a fresh state directory) may look: it sees a
        # second model of the same data awaiting approval ...
        with session(
            DataOwner, address, history.consortium, "hospital-b", state_dir=tmp_path / "blank"
        ) as blank:
            assert blank.wait_for_phase(("awaiting_approval",), timeout=300)
            second = blank.release_manifest().manifest_sha256
            assert second != history.manifest_sha256
        # ... which hospital-a, which approved the first, never approves, nor fetches anyone.
        _refused_by_everyone(history, address, "fork or rollback")
        with session(
            EnclaveSession, address, history.consortium, "hospital-b", state_dir=tmp_path / "b2"
        ) as s:
            st = s.status()
        assert st.phase == "awaiting_approval" and list(st.approvals_missing) == ["hospital-a"]


def test_deleted_state_starts_a_new_run_that_no_party_accepts(
    history: History, tmp_path: Path
) -> None:
    state = history.restore(None, tmp_path / "state")
    with running_enclave(history.consortium, state) as (address, _):
        _refused_by_everyone(
            history, address, r"fork or rollback: this party saw 1 released run\(s\).*allows 1"
        )


def test_the_released_state_itself_is_accepted(history: History, tmp_path: Path) -> None:
    """Restarting on the newest state is no rollback: every party goes on."""
    state = history.restore("released", tmp_path / "state")
    with running_enclave(history.consortium, state) as (address, _):
        with connect(Recipient, address, history, RECIPIENT) as r:  # type: ignore[attr-defined]
            assert r.fetch_model().release.manifest_sha256 == history.manifest_sha256


def test_a_journal_cut_before_its_end_is_a_rollback(history: History, tmp_path: Path) -> None:
    """The host cuts whole entries off the end: the enclave's own replay cannot tell (each
    prefix is a valid journal); the parties can."""
    from tests.state.conftest import journal_records, kinds, write_journal

    state = history.restore("released", tmp_path / "state")
    raws = journal_records(state)
    cut = kinds(raws).index("approval")  # the approval and the release entry cut off
    write_journal(state, raws[:cut])
    with running_enclave(history.consortium, state) as (address, _):
        _refused_by_everyone(history, address, "fork or rollback")


def test_memory_survives_the_process_and_is_per_policy(history: History) -> None:
    """What hospital-a remembers is on disk (SQLite), readable by its next process."""
    with PartyMemory(history.homes["hospital-a"]) as mem:
        runs = mem.runs(history.consortium.signed.policy.digest)
        assert [r.phase for r in runs] == ["released"]
        assert mem.approvals(history.consortium.signed.policy.digest, "hospital-a") == [
            (history.manifest_sha256, runs[0].run_id, 1)
        ]
        assert mem.runs(b"\x00" * 32) == []


def test_the_enclave_refuses_an_approval_beyond_the_release_count(
    history: History, tmp_path: Path
) -> None:
    """The release count is checked by the enclave too: an approval signed as a party's
    second release of a policy that allows one is refused (and one numbered 0)."""
    state = history.restore("awaiting_approval", tmp_path / "state")
    c = history.consortium
    with running_enclave(c, state) as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=tmp_path / "a") as o:
            for index in (0, 2):
                approval = sign_approval(
                    c.keys["hospital-a"].signing_key,
                    policy_digest=c.signed.policy.digest,
                    party_id="hospital-a",
                    manifest_sha256=history.manifest_sha256,
                    now_ms=0,
                    release_index=index,
                )
                with pytest.raises(Exception, match=rf"release #{index} of this policy"):
                    o.unary("ApproveRelease", pb.ApproveReleaseRequest(approval=approval))
            assert o.status().phase == "awaiting_approval"


# --------------------------------------------------------------------------- two releases


@pytest.fixture
def two_release_consortium(tmp_path: Path) -> Iterator[tuple[Consortium, dict[str, Path]]]:
    release = dict(RELEASE, max_releases=2)
    training = {
        "model": {"name": "logreg"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 2,
        "batch_size": 16,
    }
    c = make_consortium(tmp_path / "c", privacy=DP, training=training, release=release)
    yield c, {p: tmp_path / f"home-{p}" for p in PARTIES}


def _full_run(c: Consortium, homes: dict[str, Path], state: Path, tmp: Path) -> dict[str, object]:
    with running_enclave(c, state) as (address, _):
        for i, p in enumerate(PROVIDERS):
            with session(DataOwner, address, c, p, state_dir=homes[p]) as o:
                o.upload(write_shard(tmp / f"{p}.npz", rows=40, seed=i))
        with session(DataOwner, address, c, "hospital-a", state_dir=homes["hospital-a"]) as o:
            o.wait_for_phase(("awaiting_approval",), timeout=300)
            o.approve_release()
        with session(Recipient, address, c, RECIPIENT, state_dir=homes[RECIPIENT]) as r:
            r.wait_for_phase(("released",), timeout=60)
            manifest = dict(r.fetch_model().manifest)
        # A party accepts a new run of the policy only if it saw the last one end.
        for p in PROVIDERS:
            with session(EnclaveSession, address, c, p, state_dir=homes[p]) as s:
                assert s.journal_view.phase == "released"
        return manifest


def test_a_policy_allowing_two_releases_gets_two_runs_then_no_third(
    two_release_consortium: tuple[Consortium, dict[str, Path]], tmp_path: Path
) -> None:
    """``release.max_releases = 2``: once a run has ended, the parties accept a new run of
    the policy (a second release, its approval numbered 2), and refuse a third."""
    from cctrain.journal import verify_approval

    c, homes = two_release_consortium
    first = _full_run(c, homes, tmp_path / "state-1", tmp_path)
    second = _full_run(c, homes, tmp_path / "state-2", tmp_path)  # the host deleted the state
    assert first["run_id"] != second["run_id"]
    # The second run's release record carries hospital-a's approval numbered 2.
    records = read_journal_file(tmp_path / "state-2" / "journal.log")
    view = replay(records, c.signed.policy)
    ((party, approval),) = view.approvals
    body = pb.ApprovalBody()
    body.ParseFromString(approval.body)
    assert (party, body.release_index) == ("hospital-a", 2)
    assert (
        verify_approval(approval, policy=c.signed.policy, manifest_sha256=view.manifest_sha256)[1]
        == []
    )
    with running_enclave(c, tmp_path / "state-3") as (address, _):
        for p in PARTIES:
            with pytest.raises(ForkOrRollbackError, match=r"2 released run\(s\).*allows 2"):
                session(
                    DataOwner if p != RECIPIENT else Recipient, address, c, p, state_dir=homes[p]
                )
    # And the provider's own count stops a third approval even with a blank run memory.
    with PartyMemory(homes["hospital-a"]) as mem:
        with pytest.raises(ReleaseLimitError, match="already approved 2 release"):
            mem.reserve_approval(c.signed.policy, "hospital-a", b"r" * 16, b"m" * 32)


def test_the_cli_says_fork_or_rollback_and_exits_1(history: History, tmp_path: Path) -> None:
    """``cctrain status`` as hospital-b, whose state directory saw the release, against the
    deleted-and-restarted enclave: one error line, exit status 1 (a check failed)."""
    from tests.cli_process import environment, run_module

    c = history.consortium
    state = history.restore(None, tmp_path / "state")
    c.keys["hospital-b"].save(tmp_path / "keys")
    with running_enclave(c, state) as (address, _):
        proc = run_module(
            "cctrain.cli",
            "status",
            "--enclave",
            address,
            "--policy",
            str(c.policy_path),
            "--key",
            str(tmp_path / "keys" / "hospital-b.key"),
            "--allow-simulated",
            cwd=tmp_path,
            env=environment(history.homes["hospital-b"]),
        )
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: fork or rollback: this party saw 1 released run(s)")
    assert "Traceback" not in proc.stderr


def test_an_abandoned_run_can_be_forgotten_but_a_released_one_cannot(tmp_path: Path) -> None:
    """The host shows hospital-a a throwaway run first, then deletes it and starts the real
    one: hospital-a refuses the new run (the first never ended), as it must. Its operator,
    told by the consortium that the first run was abandoned, forgets it with ``cctrain
    memory forget``: the new run is accepted. A released run is refused by the command,
    and the approvals and ledger are kept."""
    from tests.cli_process import environment, run_module

    c = make_consortium(tmp_path / "c", start={"auto_start": False})
    home = tmp_path / "home-a"
    with running_enclave(c, tmp_path / "throwaway") as (address, app):
        session(DataOwner, address, c, "hospital-a", state_dir=home).close()
        throwaway = app.state.view.run_id.hex()
    with running_enclave(c, tmp_path / "real") as (address, app):
        with pytest.raises(ForkOrRollbackError, match=f"saw run {throwaway[:12]}.*not ended"):
            session(DataOwner, address, c, "hospital-a", state_dir=home)
        listed = run_module("cctrain.cli", "memory", cwd=tmp_path, env=environment(home))
        assert f"run {throwaway[:12]}… up to entry #0" in listed.stdout
        args = ("memory", "forget", "--policy", str(c.policy_path))
        too_short = run_module(
            "cctrain.cli", *args, throwaway[:4], cwd=tmp_path, env=environment(home)
        )
        assert too_short.returncode != 0 and "at least 8 hex digits" in too_short.stderr
        forgot = run_module(
            "cctrain.cli", *args, throwaway[:12], cwd=tmp_path, env=environment(home)
        )
        assert forgot.returncode == 0, forgot.stderr
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            assert o.journal_view.run_id == app.state.view.run_id


def test_a_released_run_is_never_forgotten(history: History) -> None:
    with PartyMemory(history.homes["hospital-a"]) as mem:
        (run,) = mem.runs(history.consortium.signed.policy.digest)
        with pytest.raises(InputError, match="a released run is never forgotten"):
            mem.forget_run(history.consortium.signed.policy.digest, run.run_id.hex())
        assert len(mem.runs(history.consortium.signed.policy.digest)) == 1


def test_a_run_that_built_a_manifest_is_not_forgotten(history: History, tmp_path: Path) -> None:
    """A run last seen awaiting approval may be released without this party looking: the
    command refuses and points to a veto."""
    state = history.restore("awaiting_approval", tmp_path / "state")
    home = tmp_path / "fresh-home"
    c = history.consortium
    with running_enclave(c, state) as (address, _):
        session(Recipient, address, c, RECIPIENT, state_dir=home).close()
    with PartyMemory(home) as mem:
        (run,) = mem.runs(c.signed.policy.digest)
        assert run.phase == "awaiting_approval"
        with pytest.raises(InputError, match="built a manifest.*veto"):
            mem.forget_run(c.signed.policy.digest, run.run_id.hex())


def test_a_journal_fetched_before_another_process_remembered_more_is_read_on(
    tmp_path: Path,
) -> None:
    """Two processes of one party share its memory. One fetched the journal, then the other
    remembered a newer head (its upload) before the first compared: the first reads the
    entries appended since and goes on, instead of calling it a rollback. (Its first fetch
    is served the real journal as it was; a journal that really ends early is refused, see
    test_a_journal_cut_before_its_end_is_a_rollback.)"""
    c = make_consortium(tmp_path / "c", start={"auto_start": False})
    home = tmp_path / "home-a"
    with running_enclave(c, tmp_path / "state") as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as a:
            stale = a.journal()
            with session(DataOwner, address, c, "hospital-a", state_dir=home) as b:
                b.upload(write_shard(tmp_path / "a.npz", rows=30))
            fetches: list[int] = []
            fetch = a.journal

            def first_one_stale(from_seq: int = 0) -> list:  # type: ignore[type-arg]
                fetches.append(from_seq)
                return stale if len(fetches) == 1 else fetch(from_seq)

            a.journal = first_one_stale  # type: ignore[method-assign]
            assert a.verified_journal().head.seq == len(stale)
            assert fetches == [0, len(stale)]
