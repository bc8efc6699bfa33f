"""The attacks of the state issue, played by the host operator against a real enclave.

The host can copy, edit, delete and restore files in the state directory, restart the
enclave, move its clock, and run the same measured code under a policy of its own (whose
parties are all its own keys). Each test does only that plus the public SDK, and asserts
what the enclave refused and that nothing was released or receipted wrongly.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from cctrain.client import DataOwner, Recipient, ReleaseBundle, verify_release
from cctrain.errors import JournalError, ProtocolError, ReleaseError, UploadRejectedError
from cctrain.journal import policy_expiry_ms, read_journal_file, replay, sign_entry
from cctrain.memory import ForkOrRollbackError, PartyMemory
from cctrain.protocol import APPROVAL_SIG_TAG, sign_approval
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import journal_pb2 as jpb
from tests.consortium import RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard
from tests.state.conftest import (
    DP,
    HostClock,
    journal_records,
    kinds,
    refused_start,
    session,
    upload,
    upload_all,
    wait_phase,
    write_journal,
)

COUNTING = {"recipients": [RECIPIENT], "metrics": ["samples", "steps"]}
#: Training that outlasts any test: the test stops it (or the policy's expiry does).
LONG_TRAINING = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 100_000,
    "batch_size": 16,
}


def _status(address: str, c: Consortium, **kw: Any) -> pb.GetStatusResponse:
    with session(DataOwner, address, c, "hospital-a", **kw) as o:
        return o.status()


def _fetch(address: str, c: Consortium, **kw: Any) -> Any:
    with session(Recipient, address, c, RECIPIENT, **kw) as r:
        return r.fetch_model()


# --------------------------------------------------------------------------- cross-policy reuse


def test_own_policy_with_the_consortiums_shards_copied_in(tmp_path: Path) -> None:
    """The host copies a consortium's accepted ciphertext into the state directory of an
    enclave it runs under its own policy: those files are removed unread; the host's
    release is trained on the host's rows only."""
    consortium = make_consortium(tmp_path / "consortium")
    with running_enclave(consortium, tmp_path / "cstate") as (address, _app):
        upload_all(address, consortium, tmp_path / "c-owners", rows=200)
        wait_phase(address, consortium, "released")
    stolen = sorted((tmp_path / "cstate" / "shards").iterdir())
    assert len(stolen) == 3

    host = make_consortium(tmp_path / "host", release=COUNTING)
    hstate = tmp_path / "hstate"
    with running_enclave(host, hstate):
        pass  # genesis of the host's run
    for f in stolen:
        shutil.copy2(f, hstate / "shards" / f.name)
    with running_enclave(host, hstate) as (address, app):
        assert not any(p.name in {f.name for f in stolen} for p in (hstate / "shards").iterdir())
        assert _status(address, host).providers_uploaded == []
        upload_all(address, host, tmp_path / "h-owners", rows=20)
        wait_phase(address, host, "released")
        model = _fetch(address, host)
    manifest = model.manifest
    assert len(manifest["receipts"]) == 3
    assert manifest["metrics"]["samples"] == 3 * 20  # one epoch over the host's 60 rows only


def test_own_policy_with_the_consortiums_whole_state_copied_in(tmp_path: Path) -> None:
    consortium = make_consortium(tmp_path / "consortium")
    with running_enclave(consortium, tmp_path / "cstate") as (address, _app):
        upload_all(address, consortium, tmp_path / "c-owners")
    host = make_consortium(tmp_path / "host")
    hstate = shutil.copytree(tmp_path / "cstate", tmp_path / "hstate")
    message = refused_start(host, hstate, "journal belongs to policy")
    assert consortium.signed.digest.hex()[:16] in message


def test_own_policy_on_the_consortiums_state_directory(tmp_path: Path) -> None:
    """Same code, the host's policy, the consortium's own state directory (the variant that
    once reused the consortium enclave's identity keys)."""
    consortium = make_consortium(tmp_path / "consortium")
    state = tmp_path / "state"
    with running_enclave(consortium, state) as (address, app):
        upload_all(address, consortium, tmp_path / "c-owners")
        wait_phase(address, consortium, "released")
        consortium_key = app.state.keys.signing_public
    host = make_consortium(tmp_path / "host")
    # The old plain-text policy marker decides nothing any more; the journal does.
    (state / "policy.sha256").write_text(host.signed.digest.hex() + "\n")
    refused_start(host, state, "journal belongs to policy")

    # Nor can the host's enclave open anything the consortium's sealed.
    from cctrain_enclave.providers._common import own_measurement
    from cctrain_enclave.providers.simulated import SimulatedProvider
    from cctrain_enclave.state import BoundSealer, EnclaveKeys, SealingError
    from cctrain_enclave.state.sealing import STATE_KEY_LABEL

    provider = SimulatedProvider(state)  # the same (simulated) machine
    run_id = replay(read_journal_file(state / "journal.log"), consortium.signed.policy).run_id
    hosts_sealer = BoundSealer(
        provider.sealing_key(STATE_KEY_LABEL),
        policy_digest=host.signed.digest,
        measurement=own_measurement(provider),
    )
    with pytest.raises(SealingError, match="sealed identity does not open"):
        EnclaveKeys.unseal(hosts_sealer, run_id, (state / "identity.sealed").read_bytes())

    # Deleting the journal (and the marker) gets the host a new run with new keys, and none
    # of the data.
    (state / "journal.log").unlink()
    (state / "policy.sha256").unlink()
    with running_enclave(host, state) as (address, app):
        assert app.state.keys.signing_public != consortium_key
        with session(DataOwner, address, host, "hospital-a") as o:
            assert o.enclave.signing_public_key != consortium_key
            assert o.status().providers_uploaded == []
        assert list((state / "shards").iterdir()) == []  # removed unread
        assert list((state / "release").iterdir()) == []


# --------------------------------------------------------------------------- forged approvals


def test_forged_approvals(tmp_path: Path) -> None:
    release = {"recipients": [RECIPIENT], "approvals_required_from": ["hospital-a", "hospital-b"]}
    c = make_consortium(tmp_path / "c", release=release)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        upload_all(address, c, tmp_path / "owners")
        wait_phase(address, c, "awaiting_approval")

    # The host edits "the run state" the way the old layout let it, and restarts.
    (state / "run").mkdir()
    (state / "run" / "state.json").write_text(
        json.dumps({"phase": "released", "approvals": ["hospital-a", "hospital-b"]})
    )
    with running_enclave(c, state) as (address, _app):
        st = _status(address, c)
        assert (st.phase, list(st.approvals)) == ("awaiting_approval", [])
        with pytest.raises(ProtocolError, match="awaiting approval from hospital-a, hospital-b"):
            _fetch(address, c)

        # A malicious provider signs an approval in hospital-a's name with its own key,
        # and one for another manifest in its own.
        with session(DataOwner, address, c, "hospital-b") as b:
            manifest_sha = b.release_manifest().manifest_sha256
            for body_party, sha, text in (
                ("hospital-a", manifest_sha, "signed for 'hospital-a', but the request is from"),
                (
                    "hospital-b",
                    hashlib.sha256(b"other").digest(),
                    "approval is for another manifest",
                ),
            ):
                forged = sign_approval(
                    b.keys.signing_key,
                    policy_digest=c.signed.digest,
                    party_id=body_party,
                    manifest_sha256=sha,
                    now_ms=0,
                )
                with pytest.raises(ProtocolError, match=text):
                    b.unary("ApproveRelease", pb.ApproveReleaseRequest(approval=forged))
        assert _status(address, c).approvals == []

        # The real approvals release it; the release record carries both signatures.
        for p in ("hospital-a", "hospital-b"):
            with session(DataOwner, address, c, p) as o:
                o.approve_release()
        with session(Recipient, address, c, RECIPIENT) as r:
            resp = r.fetch_release()
    bundle = ReleaseBundle.from_response(resp)
    verified = verify_release(bundle, policy=c.signed.policy, allow_simulated=True)
    assert verified.approved_by == ("hospital-a", "hospital-b")

    # Offline, a release record with an approval taken out does not verify.
    record = jpb.SignedJournalEntry()
    record.ParseFromString(bundle.release_record)
    entry = jpb.JournalEntry()
    entry.ParseFromString(record.entry)
    del entry.released.approvals[1]
    record.entry = entry.SerializeToString()
    with pytest.raises(ReleaseError, match="not signed by the manifest's enclave key"):
        verify_release(
            ReleaseBundle(
                bundle.manifest,
                bundle.manifest_signature,
                record.SerializeToString(),
                bundle.encapsulated_key,
                bundle.sealed_weights,
            ),
            policy=c.signed.policy,
            allow_simulated=True,
        )


def test_oversized_signed_approvals(tmp_path: Path) -> None:
    """A provider pads its own signed approval with megabytes of unknown protobuf fields,
    inside the signed body and beside it. Journaled as sent, the entry would be too long to
    serve in a journal page or to read back, and no session nor restart would work again.
    The padded body is refused; the padding beside it is not journaled."""
    from tests.ingest.test_bad_input import unknown_field

    release = {"recipients": [RECIPIENT], "approvals_required_from": ["hospital-a"]}
    c = make_consortium(tmp_path / "c", release=release)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        upload_all(address, c, tmp_path / "owners")
        wait_phase(address, c, "awaiting_approval")
        with session(DataOwner, address, c, "hospital-a") as a:
            approval = sign_approval(
                a.keys.signing_key,
                policy_digest=c.signed.digest,
                party_id="hospital-a",
                manifest_sha256=a.release_manifest().manifest_sha256,
                now_ms=0,
            )
            body = approval.body + unknown_field(999, 3 << 20)
            padded = pb.SignedApproval(
                body=body, signature=a.keys.signing_key.sign(APPROVAL_SIG_TAG + body)
            )
            with pytest.raises(
                ProtocolError, match="approval body is 3145.* bytes, more than 1024"
            ):
                a.unary("ApproveRelease", pb.ApproveReleaseRequest(approval=padded))
            assert kinds(journal_records(state))[-1] == "manifest"
            beside = pb.SignedApproval()
            beside.ParseFromString(approval.SerializeToString() + unknown_field(999, 3 << 20))
            a.unary("ApproveRelease", pb.ApproveReleaseRequest(approval=beside))
        records = journal_records(state)
        assert kinds(records)[-2:] == ["approval", "released"]
        assert max(len(r) for r in records[1:]) < 64 << 10
    with running_enclave(c, state) as (address, _app):  # it starts again and serves
        assert _fetch(address, c).manifest["policy_digest"] == c.signed.digest.hex()


# --------------------------------------------------------------------------- start rule


def test_copied_and_faked_shard_files_count_for_nobody(tmp_path: Path) -> None:
    """One provider's shard copied under new names and under other providers' names, and
    an empty shard directory for another: no upload for anybody, and no row trained twice."""
    c = make_consortium(tmp_path / "c", release=COUNTING)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        upload(address, c, "hospital-a", tmp_path / "owners", rows=30)
    [original] = list((state / "shards").iterdir())
    shutil.copy2(original, state / "shards" / ("0" * 64 + ".ct"))
    for party in ("hospital-b", "hospital-c"):
        (state / "shards" / party / "x").mkdir(parents=True)
        shutil.copy2(original, state / "shards" / party / "x" / "chunks.bin")
    (state / "shards" / "hospital-b" / "empty").mkdir()
    with running_enclave(c, state) as (address, _app):
        st = _status(address, c)
        assert (list(st.providers_uploaded), list(st.providers_missing)) == (
            ["hospital-a"],
            ["hospital-b", "hospital-c"],
        )
        with session(DataOwner, address, c, "hospital-b") as b:
            with pytest.raises(ProtocolError, match="no receipt from hospital-b, hospital-c"):
                b.start_training()
        assert [p.name for p in (state / "shards").iterdir()] == [original.name]
        upload(address, c, "hospital-b", tmp_path / "owners", rows=30, seed=1)
        upload(address, c, "hospital-c", tmp_path / "owners", rows=30, seed=2)
        wait_phase(address, c, "released")
        model = _fetch(address, c)
    assert len(model.manifest["receipts"]) == 3
    assert model.manifest["metrics"]["samples"] == 90  # each row once


# --------------------------------------------------------------------------- late upload


def test_an_upload_that_finishes_after_uploads_closed(tmp_path: Path) -> None:
    """hospital-c (not required by the start rule) is mid-upload when the others complete
    the start rule: its last chunk arrives after uploads closed. No receipt, nothing kept,
    and the run (before and after a restart) is the other two shards."""
    start = {"require_uploads_from": ["hospital-a", "hospital-b"]}
    c = make_consortium(tmp_path / "c", start=start, release=COUNTING)
    state = tmp_path / "state"
    late = write_shard(tmp_path / "late.npz", rows=2000)  # ~40 KiB: 10 chunks of 4 KiB
    size = late.stat().st_size
    with running_enclave(c, state) as (address, app):
        hold = threading.Event()

        def before_last_chunk(sent: int, total: int) -> None:
            if sent >= size - 4096 and not hold.is_set():
                hold.set()  # the others upload now; then the last chunk goes out
                upload(address, c, "hospital-a", tmp_path / "owners", rows=40)
                upload(address, c, "hospital-b", tmp_path / "owners", rows=40, seed=1)
                assert wait_phase(address, c, "training", "released") in ("training", "released")

        with session(DataOwner, address, c, "hospital-c") as owner:
            with pytest.raises(UploadRejectedError, match="uploads closed while this upload"):
                owner.upload(
                    late, chunk_size=4096, progress=before_last_chunk, state_dir=tmp_path / "oc"
                )
            assert owner.receipts() == []
        assert hold.is_set()
        assert app.state.view.shard("hospital-c", "late") is None
        assert not app.store.partial_dir("hospital-c", "late").exists()
        assert len(list((state / "shards").iterdir())) == 2
        wait_phase(address, c, "released")
    with running_enclave(c, state) as (address, _app):  # the old bug: the run failed here
        model = _fetch(address, c)
    assert [json.loads(_receipt_party(r)) for r in model.manifest["receipts"]] == [
        "hospital-a",
        "hospital-b",
    ]
    assert model.manifest["metrics"]["samples"] == 80


def _receipt_party(r: dict[str, str]) -> str:
    import base64

    body = pb.ReceiptBody()
    body.ParseFromString(base64.b64decode(r["body"]))
    return json.dumps(body.party_id)


# --------------------------------------------------------------------------- expiry


def _expiring(tmp_path: Path, **overrides: Any) -> Consortium:
    expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=1)
    return make_consortium(
        tmp_path / "c", expires=expires.isoformat().replace("+00:00", "Z"), **overrides
    )


def test_no_upload_or_start_after_expiry(tmp_path: Path) -> None:
    c = _expiring(tmp_path)
    clock = HostClock()
    state = tmp_path / "state"
    with running_enclave(c, state, clock=clock) as (address, _app):
        upload(address, c, "hospital-a", tmp_path / "owners", clock=clock)
        clock.offset = 2 * 3600  # the host's clock (and the parties') passes the expiry
        with pytest.raises(UploadRejectedError, match="policy expired .* accepts no uploads"):
            upload(address, c, "hospital-b", tmp_path / "owners", seed=1, clock=clock)
        st = _status(address, c, clock=clock)
        assert st.phase == "expired" and list(st.providers_uploaded) == ["hospital-a"]
        with session(DataOwner, address, c, "hospital-b", clock=clock) as b:
            with pytest.raises(ProtocolError, match="policy expired .* starts no training"):
                b.start_training()
            assert b.receipts() == []
    with running_enclave(c, state, clock=clock) as (address, _app):
        assert _status(address, c, clock=clock).phase == "expired"
    assert kinds(journal_records(state)) == ["genesis", "shard_accepted", "expired"]


def test_training_stops_at_expiry_and_nothing_is_released(tmp_path: Path) -> None:
    c = _expiring(tmp_path, training=LONG_TRAINING, privacy=DP)
    clock = HostClock()
    state = tmp_path / "state"
    with running_enclave(c, state, clock=clock) as (address, app):
        upload_all(address, c, tmp_path / "owners", clock=clock)
        _wait(lambda: app.state.view.checkpoint is not None)
        clock.offset = 2 * 3600
        _wait(lambda: app.state.view.phase == "expired")
        with pytest.raises(ProtocolError, match="policy expired .* releases nothing"):
            _fetch(address, c, clock=clock)
        assert app.state.view.manifest == b""
    assert list((state / "release").iterdir()) == []


def test_no_fetch_or_approval_after_expiry(tmp_path: Path) -> None:
    release = {"recipients": [RECIPIENT], "approvals_required_from": ["hospital-a"]}
    c = _expiring(tmp_path, release=release)
    clock = HostClock()
    with running_enclave(c, tmp_path / "state", clock=clock) as (address, _app):
        upload_all(address, c, tmp_path / "owners", clock=clock)
        wait_phase(address, c, "awaiting_approval", clock=clock)
        clock.offset = 2 * 3600
        with session(DataOwner, address, c, "hospital-a", clock=clock) as a:
            with pytest.raises(ProtocolError, match="policy expired .* takes no approvals"):
                a.approve_release()
        with pytest.raises(ProtocolError, match="policy expired .* releases nothing"):
            _fetch(address, c, clock=clock)


def test_expiry_after_a_release_is_not_journaled(tmp_path: Path) -> None:
    """The host moves its clock past the expiry after a release. The enclave refuses to serve
    the weights, but journals nothing: an ``expired`` entry after ``released`` would make
    every party's memory record the run as ended without a release, so that the policy's
    one release would no longer be counted against a new run."""
    c = _expiring(tmp_path)
    clock = HostClock()
    state = tmp_path / "state"
    with running_enclave(c, state, clock=clock) as (address, app):
        upload_all(address, c, tmp_path / "owners", clock=clock)
        wait_phase(address, c, "released", clock=clock)
        clock.offset = 2 * 3600
        assert _status(address, c, clock=clock).phase == "released"
        with pytest.raises(ProtocolError, match="policy expired .* releases nothing"):
            _fetch(address, c, clock=clock)
        assert app.state.view.phase == "released"
    assert kinds(journal_records(state))[-1] == "released"
    with PartyMemory(os.environ["CCTRAIN_HOME"]) as memory:
        assert [r.phase for r in memory.runs(c.signed.digest)] == ["released"]


def test_a_journal_with_an_entry_after_the_release_does_not_replay(tmp_path: Path) -> None:
    """What an older enclave wrote (or a forged one would need): an expiry after the release
    entry breaks the journal's rules, for the enclave at its start and for every audit."""
    c = _expiring(tmp_path)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, app):
        upload_all(address, c, tmp_path / "owners")
        wait_phase(address, c, "released")
        key = app.state.keys.signing  # as if the enclave itself wrote it
    policy = c.signed.policy
    records = read_journal_file(state / "journal.log")
    view = replay(records, policy)
    entry = jpb.JournalEntry(
        version=1,
        seq=view.head.seq + 1,
        prev_sha256=view.head.sha256,
        policy_digest=policy.digest,
        time_unix_ms=records[-1].entry.time_unix_ms + 1,
        expired=jpb.PolicyExpired(expires_unix_ms=policy_expiry_ms(policy) or 0),
    )
    with pytest.raises(JournalError, match=r"comes after the run ended \(released\)"):
        replay([*records, sign_entry(entry, key)], policy)


def test_a_crash_before_the_release_entry_then_expiry(tmp_path: Path) -> None:
    """SIGKILL between the manifest and the release entry leaves the journal ending at the
    manifest; if the policy expires before the restart, the enclave comes up expired (it
    does not finish the release) instead of failing to start."""
    c = _expiring(tmp_path)
    clock = HostClock()
    state = tmp_path / "state"
    with running_enclave(c, state, clock=clock) as (address, _app):
        upload_all(address, c, tmp_path / "owners", clock=clock)
        wait_phase(address, c, "released", clock=clock)
    records = journal_records(state)
    assert kinds(records)[-2:] == ["manifest", "released"]
    write_journal(state, records[:-1])
    clock.offset = 2 * 3600
    with running_enclave(c, state, clock=clock) as (address, app):
        assert app.state.view.phase == "expired"
        # The party that watched the release sees the cut journal as a rollback ...
        with pytest.raises(ForkOrRollbackError, match="forked from the one this party verified"):
            _fetch(address, c, clock=clock)
        # ... and one that remembers nothing is told the policy expired.
        with pytest.raises(ProtocolError, match="policy expired .* releases nothing"):
            _fetch(address, c, clock=clock, state_dir=tmp_path / "fresh")
    assert kinds(journal_records(state))[-2:] == ["manifest", "expired"]


def test_an_expired_policy_begins_no_run(tmp_path: Path) -> None:
    past = (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=1)).isoformat()
    c = make_consortium(tmp_path / "c", expires=past.replace("+00:00", "Z"))
    refused_start(c, tmp_path / "state", "expired .* does not begin a run")


# --------------------------------------------------------------------------- replay


def test_a_replayed_request_is_refused_after_a_restart(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    req = pb.GetStatusRequest()
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            captured = o.metadata("GetStatus", req.SerializeToString())
            o.stub.GetStatus(req, metadata=captured)
            with pytest.raises(grpc.RpcError) as info:
                o.stub.GetStatus(req, metadata=captured)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "replayed" in info.value.details()
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            with pytest.raises(grpc.RpcError) as info:
                o.stub.GetStatus(req, metadata=captured)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "for another enclave process" in info.value.details()
            assert o.status().phase == "collecting"  # freshly signed requests pass at once


def test_a_request_for_one_enclave_is_refused_by_another_of_the_same_policy(
    tmp_path: Path,
) -> None:
    """The host runs two enclaves on one policy (a fork) and relays a party's signed request
    from the one the party attested to the other."""
    c = make_consortium(tmp_path / "c", start={"auto_start": False})
    with (
        running_enclave(c, tmp_path / "one") as (one, _a),
        running_enclave(c, tmp_path / "two") as (two, _b),
    ):
        upload_all(two, c, tmp_path / "owners")
        # hospital-a uploaded to "two": its SDK refuses "one" outright (another run of the
        # policy while the one it saw has not ended) ...
        with pytest.raises(ForkOrRollbackError, match="fork or rollback"):
            session(DataOwner, one, c, "hospital-a", state_dir=tmp_path / "owners/owner-hospital-a")
        # ... and a party that never saw "two" cannot have its request relayed there either.
        with session(DataOwner, one, c, "hospital-a") as o:
            start = pb.StartTrainingRequest()
            captured = o.metadata("StartTraining", start.SerializeToString())
        with session(
            DataOwner, two, c, "hospital-b", state_dir=tmp_path / "owners/owner-hospital-b"
        ) as other:
            with pytest.raises(grpc.RpcError) as info:
                other.stub.StartTraining(start, metadata=captured)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert other.status().phase == "collecting"


# --------------------------------------------------------------------------- checkpoints


def test_an_older_checkpoint_restored_is_refused(tmp_path: Path) -> None:
    """Restoring an earlier checkpoint (to retrain steps with fresh noise) stops the enclave."""
    c = make_consortium(tmp_path / "c", training=LONG_TRAINING, privacy=DP)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, app):
        upload_all(address, c, tmp_path / "owners")
        _wait(lambda: app.state.view.checkpoint is not None)
    first = app.state.view.checkpoint  # stopping saved the position: the newest entry
    assert first is not None
    saved = tmp_path / "saved-checkpoint"
    shutil.copy2(state / "checkpoints" / f"{first.sha256.hex()}.sealed", saved)
    with running_enclave(c, state) as (address, app):
        _wait(lambda: app.state.view.checkpoint.step > first.step)
    second = app.state.view.checkpoint
    assert second is not None and second.step > first.step
    assert not (state / "checkpoints" / f"{first.sha256.hex()}.sealed").exists()

    # Restored beside the current one: ignored and removed; the run resumes from the current.
    beside = state / "checkpoints" / f"{first.sha256.hex()}.sealed"
    shutil.copy2(saved, beside)
    with running_enclave(c, state) as (address, app):
        assert not beside.exists()
        _wait(lambda: app.state.view.checkpoint.step > second.step)
    third = app.state.view.checkpoint
    assert third is not None
    # Restored in place of the current one: refused.
    current = state / "checkpoints" / f"{third.sha256.hex()}.sealed"
    shutil.copy2(saved, current)
    refused_start(c, state, f"checkpoint of step {third.step} .* missing or altered")
    current.unlink()
    refused_start(c, state, f"checkpoint of step {third.step} .* missing or altered")


def test_a_tampered_shard_fails_the_run_and_releases_nothing(tmp_path: Path) -> None:
    """Two equal-sized shards swapped on disk: sizes check out, decryption does not."""
    c = make_consortium(tmp_path / "c", start={"auto_start": False})
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        upload_all(address, c, tmp_path / "owners", rows=50)
    a, b, _ = sorted((state / "shards").iterdir())
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db)
    a.write_bytes(db)
    b.write_bytes(da)
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            o.start_training()
            with pytest.raises(ProtocolError, match="run failed: .*does not read back"):
                o.wait_for_phase(("released",), timeout=120)
        with pytest.raises(ProtocolError, match="nothing is released"):
            _fetch(address, c)


def test_a_provider_and_the_host_re_encrypt_a_receipted_shard(tmp_path: Path) -> None:
    """hospital-c gets a receipt for honest data, then hands its data key to the host, which
    writes poisoned data (same size) under that key in place of the stored ciphertext. Every
    chunk authenticates; the commitment the receipt names does not: the run fails."""
    from cctrain.crypto.stream import StreamSealer
    from cctrain.protocol import sha256

    c = make_consortium(tmp_path / "c", start={"auto_start": False})
    honest = write_shard(tmp_path / "honest.npz", rows=50, seed=7)
    poison = write_shard(tmp_path / "poison.npz", rows=50, seed=8)
    assert honest.stat().st_size == poison.stat().st_size
    leaked: dict[str, bytes] = {}

    class Colluder(DataOwner):
        def _new_header(self, *args: Any, **kw: Any) -> tuple[bytes, bytes, bytes]:
            header, signature, key = super()._new_header(*args, **kw)
            leaked.update(header=header, key=key)
            return header, signature, key

    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        upload(address, c, "hospital-a", tmp_path / "owners", seed=1)
        upload(address, c, "hospital-b", tmp_path / "owners", seed=2)
        with session(Colluder, address, c, "hospital-c") as colluder:
            colluder.upload(honest, state_dir=tmp_path / "oc")
    header = pb.ShardHeader()
    header.ParseFromString(leaked["header"])
    sealer = StreamSealer(leaked["key"], header.nonce_prefix, sha256(leaked["header"]))
    data, cs = poison.read_bytes(), header.chunk_size
    stored = state / "shards" / f"{sha256(leaked['header']).hex()}.ct"
    stored.write_bytes(
        b"".join(
            sealer.seal(i, data[i * cs : (i + 1) * cs], last=i == header.chunk_count - 1)
            for i in range(header.chunk_count)
        )
    )
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            o.start_training()
            with pytest.raises(
                ProtocolError, match="hospital-c/honest .* does not match the plaintext commitment"
            ):
                o.wait_for_phase(("released",), timeout=120)
        with pytest.raises(ProtocolError, match="nothing is released"):
            _fetch(address, c)


def _open_in_this_process(path: Path) -> bool:
    """Whether this process (the in-process enclave) holds ``path`` open, as the host sees it
    in /proc."""
    fds = Path("/proc/self/fd")
    for fd in fds.iterdir():
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("fmt", ["csv", "npz"])
def test_the_verdict_is_on_the_bytes_hashed_not_on_the_file(tmp_path: Path, fmt: str) -> None:
    """A provider holds back its last chunk while the host renames other ciphertext (under
    the same data key, which the provider gave it) over the partial upload the enclave is
    still writing. The enclave validates the bytes it decrypted and hashed, as they arrived,
    never the file: the committed (bad) shard is refused, whatever the file now holds."""
    import io

    import numpy as np

    from cctrain.crypto.stream import StreamSealer
    from cctrain.protocol import sha256

    chunk = 4096
    if fmt == "csv":
        bad = ("a,b,c,d,label\n" + "0.25,0.5,0.75,1.0,9\n" * 20).encode()  # labels out of range
        good = (
            "a,b,c,d,label\n" + "".join(f"0.5,0.5,0.5,0.5,{i % 2}\n" for i in range(1200))
        ).encode()
        n = max(len(bad), len(good))
        bad, good = bad + b"\n" * (n - len(bad)), good + b"\n" * (n - len(good))
    else:  # the same rows, stored: the same size

        def npz(label: int | None) -> bytes:
            rng = np.random.default_rng(0)
            buf = io.BytesIO()
            labels = np.full(600, label) if label is not None else rng.integers(0, 2, 600)
            np.savez(buf, features=rng.normal(size=(600, 4)).astype(np.float32), labels=labels)
            return buf.getvalue()

        bad, good = npz(9), npz(None)
    assert len(bad) == len(good) > 2 * chunk
    committed = tmp_path / f"committed.{fmt}"
    committed.write_bytes(bad)

    c = make_consortium(tmp_path / "c", start={"auto_start": False})
    state = tmp_path / "state"
    partial = state / "uploads" / "hospital-c" / "committed" / "chunks.bin"
    leaked: dict[str, bytes] = {}
    release_last_chunk = threading.Event()

    class Colluder(DataOwner):
        def _new_header(self, *args: Any, **kw: Any) -> tuple[bytes, bytes, bytes]:
            header, signature, key = super()._new_header(*args, **kw)
            leaked.update(header=header, key=key)
            return header, signature, key

        @staticmethod
        def _requests(*args: Any, **kw: Any) -> Any:
            messages = list(DataOwner._requests(*args, **kw))
            yield from messages[:-1]
            assert release_last_chunk.wait(60)
            yield messages[-1]

    def host() -> None:
        _wait(lambda: partial.exists() and _open_in_this_process(partial))
        header = pb.ShardHeader()
        header.ParseFromString(leaked["header"])
        sealer = StreamSealer(leaked["key"], header.nonce_prefix, sha256(leaked["header"]))
        swap = partial.with_name(".swap")
        swap.write_bytes(
            b"".join(
                sealer.seal(i, good[i * chunk : (i + 1) * chunk], last=i == header.chunk_count - 1)
                for i in range(header.chunk_count)
            )
        )
        os.replace(swap, partial)
        release_last_chunk.set()

    with running_enclave(c, state) as (address, app):
        operator = threading.Thread(target=host)
        operator.start()
        with session(Colluder, address, c, "hospital-c") as colluder:
            with pytest.raises(UploadRejectedError, match=r"labels: values in \[9, 9\]"):
                colluder.upload(committed, chunk_size=chunk, state_dir=tmp_path / "oc")
            assert colluder.receipts() == []
        operator.join()
        assert app.state.view.shard("hospital-c", "committed") is None
        assert not partial.parent.exists()
        assert list((state / "shards").iterdir()) == []


def test_an_edited_upload_progress_record(tmp_path: Path) -> None:
    """The host writes a partial upload whose progress record does not fit its header: no
    resume point (and no crash); the owner's upload starts from chunk 0 and is accepted."""
    from tests.ingest.test_bad_input import build_upload

    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, app):
        partial = app.store.partial_dir("hospital-a", "s")
        with session(DataOwner, address, c, "hospital-a") as o:
            data = write_shard(tmp_path / "partial.npz", rows=1000).read_bytes()
            header, _chunks = build_upload(o, data, shard_id="s")
            partial.mkdir(parents=True)
            (partial / "header.bin").write_bytes(header.header.header)
            (partial / "chunks.bin").write_bytes(b"")
            for next_index in (-1, 2**64, 10**6, 0):
                (partial / "progress.json").write_text(
                    json.dumps({"next_index": next_index, "offset": 7, "updated": 0})
                )
                status = o.unary("UploadStatus", pb.UploadStatusRequest(shard_id="s"))
                assert status.state == pb.UploadStatusResponse.UNKNOWN
            receipt = o.upload(write_shard(tmp_path / "s.npz"), state_dir=tmp_path / "o")
            assert receipt.shard_id == "s"


def test_a_state_directory_of_the_old_layout_is_refused(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "policy.sha256").write_text(c.signed.digest.hex() + "\n")
    (state / "run" / "state.json").write_text('{"phase": "released"}')
    message = refused_start(c, state, "written by an earlier cctrain")
    assert "cannot be upgraded safely" in message
    assert not (state / "journal.log").exists()


def _wait(condition: Any, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
