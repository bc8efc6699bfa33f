"""The consortium-held state key: an enclave without a sealing key (as on TDX) keeps its state
across a crash, starts locked, and opens only when k parties return their shares.

The run under test: a 2-of-3 consortium key (hospital-a, hospital-b, research-lab) on the
simulated platform started with ``--no-sealing-key``, whose ``sealing_key`` raises as TDX's
does. Two providers upload, training (with DP) journals a checkpoint, and the enclave process
is SIGKILLed. Every test starts an enclave on a copy of that state directory, as the host
would after the crash: it is locked, refuses what needs its keys, refuses every share that
is not the right party's share for this enclave and this head, and resumes the run (ε of the
steps before the crash still counted) once two parties unlocked it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cctrain.cli import main
from cctrain.client import DataOwner, EnclaveSession, Recipient, map_rpc_error
from cctrain.crypto import hpke
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import AuthenticationError, EnclaveLockedError, JournalError, ProtocolError
from cctrain.journal import RunState, read_journal_file, replay, sign_entry
from cctrain.local import LocalEnclave
from cctrain.policy import parse_policy
from cctrain.protocol import state_share_commitment, state_share_info, state_unlock_info
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import journal_pb2 as jpb
from tests.cli_process import assert_clean_error, cctrain_enclave
from tests.consortium import RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard
from tests.state.conftest import journal_records, session, write_journal

# The CLI warns on every use of simulated evidence (its tests elsewhere check that it does).
pytestmark = pytest.mark.filterwarnings("ignore::cctrain.client.SimulatedEvidenceWarning")

PROVIDERS = ("hospital-a", "hospital-b")
PARTIES = (*PROVIDERS, RECIPIENT)
CONSORTIUM_KEY = {"key": "consortium", "threshold": 2}
DP = {"enabled": True, "target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
TRAINING = {
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "epochs": 20,
    "batch_size": 16,
}
NO_SEALING_KEY = ("--no-sealing-key",)


@dataclass(frozen=True)
class Crashed:
    """The state directory of a consortium-key run SIGKILLed mid-training (do not modify it:
    copy it), and what its journal said at the kill."""

    consortium: Consortium
    state: Path
    view: RunState  # the journal at the kill

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.state, dest, ignore=shutil.ignore_patterns("LOCK", "endpoint.json"))
        return dest


def _start(c: Consortium, state: Path, log: Path) -> LocalEnclave:
    enclave = LocalEnclave(
        policy=c.policy_path, state_dir=state, log=log, extra_args=NO_SEALING_KEY
    )
    enclave.start(timeout=120)
    return enclave


def _journal(state: Path, c: Consortium) -> RunState | None:
    """The journal as the host can read it (None: not there yet, or caught mid-append)."""
    try:
        return replay(read_journal_file(state / "journal.log"), c.signed.policy)
    except (OSError, JournalError):
        return None


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashed]:
    tmp = tmp_path_factory.mktemp("consortium-key")
    c = make_consortium(
        tmp / "c",
        providers=PROVIDERS,
        hpke_for_all=True,
        state=CONSORTIUM_KEY,
        privacy=DP,
        training=TRAINING,
    )
    state = tmp / "state"
    enclave = _start(c, state, tmp / "enclave.log")
    try:
        for i, pid in enumerate(PROVIDERS):
            with session(DataOwner, enclave.address, c, pid) as owner:
                owner.upload(write_shard(tmp / f"{pid}.npz", seed=i), state_dir=tmp / pid)
        deadline = time.monotonic() + 120
        while (view := _journal(state, c)) is None or view.checkpoint is None:
            assert time.monotonic() < deadline, (tmp / "enclave.log").read_text()
            time.sleep(0.005)
        enclave.kill()
    finally:
        enclave.kill()
    view = _journal(state, c)  # what the journal said when the process died
    assert view is not None and view.phase == "training" and view.checkpoint is not None
    assert view.state_key_mode == "consortium" and view.state_key_threshold == 2
    assert not any((state / "release").iterdir())  # killed before the end
    yield Crashed(c, state, view)


# --------------------------------------------------------------------------- helpers


def _unlock_cli(address: str, c: Consortium, party: str, keys_dir: Path) -> Any:
    if not (keys_dir / f"{party}.key").exists():
        c.keys[party].save(keys_dir)
    return CliRunner().invoke(
        main,
        [
            "unlock",
            "--enclave",
            address,
            "--policy",
            str(c.policy_path),
            "--key",
            str(keys_dir / f"{party}.key"),
            "--allow-simulated",
        ],
    )


def _status_cli(address: str, c: Consortium, keys_dir: Path) -> list[str]:
    if not (keys_dir / "hospital-a.key").exists():
        c.keys["hospital-a"].save(keys_dir)
    result = CliRunner().invoke(
        main,
        [
            "status",
            "--enclave",
            address,
            "--policy",
            str(c.policy_path),
            "--key",
            str(keys_dir / "hospital-a.key"),
            "--allow-simulated",
        ],
    )
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def _share_of(c: Consortium, view: RunState, party: str) -> bytes:
    """``party``'s share of the state key, opened from the genesis as that party does."""
    mine = view.state_share(party)
    assert mine is not None
    return hpke.open_sealed(
        c.keys[party].hpke_key,
        mine.sealed,
        info=state_share_info(c.signed.digest, view.run_id, party),
    )


def _sealed_for(
    s: EnclaveSession,
    c: Consortium,
    view: RunState,
    share: bytes,
    *,
    party: str,
    seq: int | None = None,
    head_sha256: bytes | None = None,
) -> bytes:
    """``share`` sealed to the unlock key ``s`` attested, for ``party`` at a journal head."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    info = state_unlock_info(
        c.signed.digest,
        view.run_id,
        party,
        view.head.seq if seq is None else seq,
        view.head.sha256 if head_sha256 is None else head_sha256,
    )
    key = X25519PublicKey.from_public_bytes(s.enclave.hpke_public_key)
    return hpke.seal(key, share, info=info)


def _unlock_raw(s: EnclaveSession, sealed: bytes, view: RunState) -> pb.UnlockResponse:
    resp: pb.UnlockResponse = s.unary(
        "Unlock",
        pb.UnlockRequest(
            sealed_share=sealed, journal_seq=view.head.seq, journal_head_sha256=view.head.sha256
        ),
    )
    return resp


def _raw(s: EnclaveSession, method: str, request: Any) -> Any:
    """Call ``method`` as ``s``'s party past the SDK's own check of a locked session, as a
    client that does not check would."""
    try:
        return getattr(s.stub, method)(
            request, metadata=s.metadata(method, request.SerializeToString()), timeout=30
        )
    except grpc.RpcError as exc:
        raise map_rpc_error(exc) from None


def _progress(s: EnclaveSession) -> tuple[bool, int, list[str]]:
    st = s.status()
    return st.locked, st.unlock_threshold, list(st.unlocked_by)


# --------------------------------------------------------------------------- the tests


def test_the_locked_enclave_serves_only_what_needs_no_key(crashed: Crashed, tmp_path: Path) -> None:
    c, state = crashed.consortium, crashed.copy(tmp_path / "state")
    with running_enclave(c, state, sealing=False) as (address, app):
        assert app.locked
        with session(DataOwner, address, c, "hospital-a") as a:
            assert a.locked
            # Attest bound this start's unlock key, and the journal's signing key.
            assert a.enclave.hpke_public_key != crashed.view.hpke_public_key
            assert a.enclave.signing_public_key == crashed.view.signing_public_key
            st = a.status()
            assert (st.phase, st.state_key, st.locked) == ("training", "consortium", True)
            assert (st.unlock_threshold, list(st.unlocked_by)) == (2, [])
            assert "locked: its state key is held by the consortium (0 of 2 shares)" in st.detail
            assert st.journal_seq == crashed.view.head.seq
            assert a.audit().state.head == crashed.view.head  # the journal verifies

            # The SDK refuses to use a locked session for anything keyed ...
            for call in (
                lambda: a.upload(write_shard(tmp_path / "x.npz"), state_dir=tmp_path / "o"),
                a.approve_release,
                a.receipts,
                a.start_training,
                lambda: list(a.watch()),
            ):
                with pytest.raises(EnclaveLockedError, match="reconnect after unlock"):
                    call()
            # ... and the enclave refuses it too, to a client that does not check.
            locked_text = r"the enclave is locked: .*\(0 of 2 shares\); parties unlock it"
            raw = [
                ("ListReceipts", pb.ListReceiptsRequest()),
                ("UploadStatus", pb.UploadStatusRequest(shard_id="x")),
                ("StartTraining", pb.StartTrainingRequest()),
                ("ApproveRelease", pb.ApproveReleaseRequest()),
                ("FetchRelease", pb.FetchReleaseRequest()),
            ]
            for method, req in raw:
                with pytest.raises(ProtocolError, match=locked_text) as info:
                    _raw(a, method, req)
                assert info.value.code == "FAILED_PRECONDITION", method
            upload = iter([pb.UploadRequest(header=pb.UploadHeader())])
            with pytest.raises(grpc.RpcError) as rpc:
                list(a.stub.Upload(upload, metadata=a.metadata("Upload", b""), timeout=30))
            assert rpc.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            assert "the enclave is locked" in rpc.value.details()  # type: ignore[attr-defined]
        with session(Recipient, address, c, RECIPIENT) as r:
            with pytest.raises(EnclaveLockedError):
                r.fetch_model()
        assert _status_cli(address, c, tmp_path)[:3] == [
            "phase: training",
            "state_key: consortium",
            "lock: locked, 0 of 2 shares",
        ]
    assert read_journal_file(state / "journal.log")[-1].head == crashed.view.head  # unchanged


def test_shares_that_are_not_this_partys_for_this_enclave_and_head_are_refused(
    crashed: Crashed, tmp_path: Path
) -> None:
    c, view = crashed.consortium, crashed.view
    first, second = crashed.copy(tmp_path / "first"), crashed.copy(tmp_path / "second")
    share_a = _share_of(c, view, "hospital-a")
    with (
        running_enclave(c, first, sealing=False) as (address, _app),
        running_enclave(c, second, sealing=False) as (other_address, _other),
        session(EnclaveSession, address, c, "hospital-a") as a,
        session(EnclaveSession, address, c, "hospital-b") as b,
        session(EnclaveSession, other_address, c, "hospital-a") as a_at_other,
    ):
        # A key the policy does not name, and a rogue key claiming to be a party.
        for outsider in (
            PartyKeys.generate("mallory"),
            PartyKeys("hospital-a", Ed25519PrivateKey.generate(), c.keys["hospital-a"].hpke_key),
        ):
            a.keys, real = outsider, a.keys
            try:
                with pytest.raises(AuthenticationError):
                    _unlock_raw(a, _sealed_for(a, c, view, share_a, party="hospital-a"), view)
            finally:
                a.keys = real
        # Sealed to the unlock key of another enclave (a second locked copy of this state).
        assert a_at_other.enclave.hpke_public_key != a.enclave.hpke_public_key
        elsewhere = _sealed_for(a_at_other, c, view, share_a, party="hospital-a")
        with pytest.raises(ProtocolError, match="does not open with this enclave's unlock key"):
            _unlock_raw(a, elsewhere, view)
        # Bound to another journal head: named as such, or sealed for it.
        earlier = read_journal_file(first / "journal.log")[view.head.seq - 1].head
        sealed_earlier = _sealed_for(
            a, c, view, share_a, party="hospital-a", seq=earlier.seq, head_sha256=earlier.sha256
        )
        with pytest.raises(
            ProtocolError, match=rf"bound to journal head #{earlier.seq} .*is #{view.head.seq} "
        ) as info:
            a.unary(
                "Unlock",
                pb.UnlockRequest(
                    sealed_share=sealed_earlier,
                    journal_seq=earlier.seq,
                    journal_head_sha256=earlier.sha256,
                ),
            )
        assert info.value.code == "FAILED_PRECONDITION"
        with pytest.raises(ProtocolError, match="does not open with this enclave's unlock key"):
            _unlock_raw(a, sealed_earlier, view)
        # hospital-b returns hospital-a's share (sealed for itself): the commitment says no.
        with pytest.raises(ProtocolError, match="not hospital-b's share of this run") as info:
            _unlock_raw(b, _sealed_for(b, c, view, share_a, party="hospital-b"), view)
        assert info.value.code == "INVALID_ARGUMENT"
        # Garbage, and nothing at all.
        for junk in (b"", os.urandom(80), os.urandom(5000)):
            with pytest.raises(ProtocolError, match="INVALID_ARGUMENT"):
                _unlock_raw(a, junk, view)
        assert _progress(a) == (True, 2, [])  # no refusal changed anything

        # hospital-a's own share unlocks one of two; it counts once, however often sent.
        resp = _unlock_raw(a, _sealed_for(a, c, view, share_a, party="hospital-a"), view)
        assert (resp.locked, resp.threshold, list(resp.unlocked_by)) == (True, 2, ["hospital-a"])
        assert a.unlock().unlocked_by == ["hospital-a"]
        assert _progress(b) == (True, 2, ["hospital-a"])
        assert _progress(a_at_other) == (True, 2, [])  # the other copy holds nothing
        with pytest.raises(ProtocolError, match=r"locked: .*\(1 of 2 shares\)"):
            _raw(b, "FetchRelease", pb.FetchReleaseRequest())  # nothing is released


def test_k_parties_unlock_and_the_run_resumes_counting_its_epsilon(
    crashed: Crashed, tmp_path: Path
) -> None:
    """The host restarts the crashed enclave process; hospital-a unlocks (still locked,
    nothing trains), research-lab unlocks: training resumes from the journaled checkpoint,
    the release's certificate counts every step, and the history is the same run's."""
    from opacus.accountants import RDPAccountant

    c, view = crashed.consortium, crashed.view
    state = crashed.copy(tmp_path / "state")
    log = tmp_path / "enclave.log"
    enclave = _start(c, state, log)
    try:
        address = enclave.address
        result = _unlock_cli(address, c, "hospital-a", tmp_path)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == ["locked, 1 of 2 shares (hospital-a)"]
        time.sleep(0.5)  # a locked enclave trains nothing
        assert read_journal_file(state / "journal.log")[-1].head == view.head
        assert "lock: locked, 1 of 2 shares (hospital-a)" in _status_cli(address, c, tmp_path)
        with session(DataOwner, address, c, "hospital-b") as early:  # attested while locked
            assert early.locked

        result = _unlock_cli(address, c, RECIPIENT, tmp_path)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == ["unlocked (2 of 2 shares)"]
        with pytest.raises(EnclaveLockedError, match="reconnect after unlock"):
            early.upload(write_shard(tmp_path / "late.npz"), state_dir=tmp_path / "o")

        with session(DataOwner, address, c, "hospital-b") as b:
            assert not b.locked
            assert b.enclave.hpke_public_key == view.hpke_public_key  # the run's own keys
            events = list(b.watch(timeout=300))
            assert events[-1].phase == "released", events[-1]
            progress = [e.step for e in events if e.total_steps]
            assert not progress or progress[0] > view.checkpoint.step  # type: ignore[union-attr]
            assert b.unlock().unlocked_by == ["hospital-a", RECIPIENT]  # idempotent
        result = _unlock_cli(address, c, "hospital-b", tmp_path)
        assert result.stdout.splitlines() == ["unlocked (2 of 2 shares)"], result.output
        with session(Recipient, address, c, RECIPIENT) as r:
            cert = r.fetch_model().release.dp_certificate
        assert "resuming training after a restart" in log.read_text()
    finally:
        enclave.stop(grace_s=60)

    assert cert is not None and view.epsilon_spent is not None
    assert cert["steps"] == cert["steps_planned"] and not cert["stopped_early"]
    assert cert["epsilon"] >= view.epsilon_spent  # nothing spent before the crash was lost
    acc = RDPAccountant()  # ε covers every step, before and after the crash
    acc.history = [(cert["noise_multiplier"], cert["sample_rate"], cert["steps"])]
    assert abs(acc.get_epsilon(delta=cert["delta"]) - cert["epsilon"]) < 1e-9
    records = read_journal_file(state / "journal.log")
    assert records[: view.head.seq + 1] == read_journal_file(crashed.state / "journal.log")
    assert replay(records, c.signed.policy).phase == "released"  # the same run, continued


def test_a_platform_key_without_a_sealing_key_does_not_start(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", providers=PROVIDERS)  # [state] key = "platform"
    proc = cctrain_enclave(
        "serve",
        "--policy",
        str(c.policy_path),
        "--state-dir",
        str(tmp_path / "state"),
        "--platform",
        "simulated",
        *NO_SEALING_KEY,
        cwd=tmp_path,
    )
    line = assert_clean_error(proc, 2)
    assert "the platform (simulated) has no sealing key" in line
    assert 'set [state] key = "consortium"' in line
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "state" / "journal.log").exists()


def test_a_consortium_key_where_the_platform_has_one_too(tmp_path: Path) -> None:
    """Optional where the platform can seal: the key is the consortium's all the same."""
    c = make_consortium(
        tmp_path / "c", providers=PROVIDERS, hpke_for_all=True, state={"key": "consortium"}
    )
    with running_enclave(c, tmp_path / "state") as (_address, app):
        assert not app.locked and app.state.view.state_key_threshold == 2  # majority of 3
    with running_enclave(c, tmp_path / "state") as (address, app):
        assert app.locked
        with session(EnclaveSession, address, c, "hospital-b") as b:
            assert b.unlock().locked
        with session(EnclaveSession, address, c, RECIPIENT) as r:
            assert not r.unlock().locked
        assert not app.locked and app.state.view.phase == "collecting"


# --------------------------------------------------------------------------- audit


def test_audit_verifies_a_consortium_journal_and_refuses_an_edited_genesis(
    crashed: Crashed, tmp_path: Path
) -> None:
    c = crashed.consortium
    state = crashed.copy(tmp_path / "state")

    def audit(journal: Path) -> Any:
        return CliRunner().invoke(
            main,
            [
                "audit",
                "--policy",
                str(c.policy_path),
                "--journal",
                str(journal),
                "--allow-simulated",
            ],
        )

    result = audit(state / "journal.log")
    assert result.exit_code == 0, result.output
    assert "state key held by the consortium (2 of 3)" in result.stdout

    # The host edits the genesis's custody in place ("consortium" → "platform", same length
    # on the wire but for the string): the signature no longer verifies.
    raws = journal_records(state)
    genesis = bytearray(raws[0])
    at = genesis.find(b"consortium")
    assert at > 0
    genesis[at : at + len(b"consortium")] = b"consortiun"
    raws[0] = bytes(genesis)
    write_journal(state, raws)
    result = audit(state / "journal.log")
    assert result.exit_code == 1
    assert "journal entry #0 (genesis)" in result.stderr
    assert "not signed by the enclave key it introduces" in result.stderr


def _resigned_genesis(view: RunState, edit: Any) -> Any:
    """The genesis with ``edit`` applied, self-signed again by a new key: the signature holds,
    so only the genesis rules can refuse it."""
    entry = jpb.JournalEntry()
    entry.CopyFrom(view.genesis.entry)
    edit(entry.genesis.state_key)
    key = Ed25519PrivateKey.generate()
    entry.genesis.signing_public_key = key.public_key().public_bytes_raw()
    return sign_entry(entry, key)


def _swap_holders(sk: jpb.StateKey) -> None:
    sk.shares[0].party_id, sk.shares[1].party_id = sk.shares[1].party_id, sk.shares[0].party_id


def _drop_last_share(sk: jpb.StateKey) -> None:
    del sk.shares[-1]


GENESIS_EDITS = {
    "mode": (lambda sk: setattr(sk, "mode", "platform"), "state key is held by 'platform'"),
    "threshold": (
        lambda sk: setattr(sk, "threshold", 1),
        "state key threshold 1, the policy's is 2",
    ),
    "a share missing": (_drop_last_share, "not one per party in policy order"),
    "holders reordered": (_swap_holders, "not one per party in policy order"),
    "short commitment": (
        lambda sk: setattr(sk.shares[1], "share_sha256", b"\x00" * 31),
        "the commitment to the share of 'hospital-b' is not 32 bytes",
    ),
    "empty share": (
        lambda sk: setattr(sk.shares[2], "sealed", b""),
        "the sealed share of 'research-lab' is 0 bytes",
    ),
}


@pytest.mark.parametrize("name", list(GENESIS_EDITS))
def test_the_genesis_rules_on_the_state_key(crashed: Crashed, name: str) -> None:
    """A host can write a genesis of its own (it is self-signed; only its evidence ties it
    to the hardware): replay refuses one whose custody is not the policy's."""
    edit, problem = GENESIS_EDITS[name]
    c, view = crashed.consortium, crashed.view
    assert replay([_resigned_genesis(view, lambda sk: None)], c.signed.policy).state_key_shares
    with pytest.raises(
        JournalError, match=r"journal entry #0 \(genesis\): .*" + re.escape(problem)
    ):
        replay([_resigned_genesis(view, edit)], c.signed.policy)


def test_a_platform_policy_refuses_a_consortium_genesis(crashed: Crashed, tmp_path: Path) -> None:
    """The same parties' policy with a platform key does not take this journal's genesis."""
    doc = json.loads(crashed.consortium.signed.policy.raw)
    del doc["state"]
    platform = parse_policy(json.dumps(doc).encode(), "json")
    genesis = _resigned_genesis(crashed.view, lambda sk: None)
    entry = jpb.JournalEntry()
    entry.CopyFrom(genesis.entry)
    entry.policy_digest = platform.digest
    key = Ed25519PrivateKey.generate()
    entry.genesis.signing_public_key = key.public_key().public_bytes_raw()
    with pytest.raises(
        JournalError, match="state key is held by 'consortium', the policy says 'platform'"
    ):
        replay([sign_entry(entry, key)], platform)


# --------------------------------------------------------------------------- SLIP-39


def test_any_k_shares_recover_the_key_and_fewer_do_not() -> None:
    from itertools import combinations

    from cctrain_enclave.errors import StateError
    from cctrain_enclave.state.state_key import combine_state_key, split_state_key

    key = os.urandom(32)
    shares = split_state_key(key, threshold=3, holders=5)
    assert len(set(shares)) == 5
    for chosen in combinations(shares, 3):
        assert combine_state_key(list(chosen)) == key
    for chosen in combinations(shares, 2):
        with pytest.raises(StateError, match="do not combine"):
            combine_state_key(list(chosen))
    assert combine_state_key(split_state_key(key, threshold=1, holders=2)[1:]) == key


def test_each_genesis_share_opens_only_for_its_party(crashed: Crashed) -> None:
    c, view = crashed.consortium, crashed.view
    assert [s.party_id for s in view.state_key_shares] == list(PARTIES)
    for s in view.state_key_shares:
        share = _share_of(c, view, s.party_id)
        assert state_share_commitment(view.run_id, s.party_id, share) == s.share_sha256
        other = next(p for p in PARTIES if p != s.party_id)
        with pytest.raises(hpke.HpkeError):  # sealed to its party's key, for its party
            hpke.open_sealed(
                c.keys[other].hpke_key,
                s.sealed,
                info=state_share_info(c.signed.digest, view.run_id, s.party_id),
            )
        with pytest.raises(hpke.HpkeError):
            hpke.open_sealed(
                c.keys[s.party_id].hpke_key,
                s.sealed,
                info=state_share_info(c.signed.digest, view.run_id, other),
            )


def test_health_is_not_serving_while_locked_and_serving_once_unlocked(
    crashed: Crashed, tmp_path: Path
) -> None:
    """A load balancer asking the standard health service sees the locked enclave as not
    ready (NOT_SERVING) until k parties unlocked it; the phase gauge says ``locked`` too."""
    from grpc_health.v1 import health_pb2

    from tests.hostile.helpers import health_check

    c, state = crashed.consortium, crashed.copy(tmp_path / "state")
    with running_enclave(c, state, sealing=False) as (address, app):
        phase = app.observer.metrics.phase
        assert health_check(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert phase.labels(phase="locked")._value.get() == 1
        assert _unlock_cli(address, c, "hospital-a", tmp_path).exit_code == 0
        assert health_check(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _unlock_cli(address, c, RECIPIENT, tmp_path).exit_code == 0
        assert health_check(address) == health_pb2.HealthCheckResponse.SERVING
        current = [p for p in ("locked", "training", "awaiting_approval", "released")
                   if phase.labels(phase=p)._value.get() == 1]  # fmt: skip
        assert current in (["training"], ["awaiting_approval"], ["released"])  # it resumed
