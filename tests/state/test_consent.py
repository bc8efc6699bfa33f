"""Consent taken back (issue #11): a provider withdraws a shard before training, or vetoes a
release it was asked to approve. Against a real loopback enclave, with real signatures.

A withdrawn shard must be in no training set and in no manifest's receipts; its ciphertext
is deleted; the deletion receipt (the enclave-signed journal entry) verifies offline and
`cctrain audit` replays it. A veto ends the run for good: nothing is released, the sealed
weights are deleted, and a restart changes nothing.

Not here: a host that cuts the journal back to before a withdrawal (or a veto) and restarts
is the rollback case. Each state it restores is internally consistent, so only the parties'
memory of the journal head they saw (the rollback work, DESIGN.md "No forks, no rollback")
can catch it; the deletion receipt names that head.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cctrain.cli import main
from cctrain.client import DataOwner, Recipient, _UploadOutcome
from cctrain.consent import verify_deletion_receipt
from cctrain.errors import (
    JournalError,
    PermissionDeniedError,
    ProtocolError,
    ReceiptError,
    UploadRejectedError,
)
from cctrain.journal import Record, parse_record, read_journal_file, replay, sign_entry
from cctrain.protocol import CONSENT_SIG_TAG, sha256, sign_consent
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import journal_pb2 as jpb
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard
from tests.state.conftest import (
    FinishedRun,
    HostClock,
    journal_records,
    kinds,
    refused_start,
    session,
    upload,
    wait_phase,
    write_journal,
)

pytestmark = pytest.mark.filterwarnings("ignore::cctrain.client.SimulatedEvidenceWarning")

COUNTING = {"recipients": [RECIPIENT], "metrics": ["samples", "steps"]}
MANUAL_START = {"auto_start": False}
#: Both first providers must approve: one can approve while the other vetoes.
TWO_APPROVALS = {
    "recipients": [RECIPIENT],
    "metrics": ["samples", "steps"],
    "approvals_required_from": ["hospital-a", "hospital-b"],
}
LONG_TRAINING = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 100_000,
    "batch_size": 16,
}


# --------------------------------------------------------------------------- helpers


def _consent(
    c: Consortium,
    party: str,
    *,
    action: str = "withdraw",
    shard_id: str = "",
    manifest: bytes = b"",
    signer: str | None = None,
) -> pb.SignedConsent:
    """``party``'s consent decision, signed by ``signer``'s key (default: its own)."""
    return sign_consent(
        c.keys[signer or party].signing_key,
        policy_digest=c.signed.digest,
        party_id=party,
        action=action,
        shard_id=shard_id,
        manifest_sha256=manifest,
        now_ms=int(time.time() * 1000),
    )


def _withdraw_raw(address: str, c: Consortium, caller: str, consent: pb.SignedConsent) -> bytes:
    with session(DataOwner, address, c, caller) as o:
        resp = o.unary("WithdrawShard", pb.WithdrawShardRequest(withdrawal=consent))
    return bytes(resp.deletion_receipt)


def _veto_raw(address: str, c: Consortium, caller: str, consent: pb.SignedConsent) -> str:
    with session(DataOwner, address, c, caller) as o:
        resp = o.unary("VetoRelease", pb.VetoReleaseRequest(veto=consent))
    return str(resp.phase)


def _withdraw(address: str, c: Consortium, party: str, shard_id: str, tmp: Path) -> Any:
    with session(DataOwner, address, c, party) as o:
        return o.withdraw(shard_id, state_dir=tmp / f"owner-{party}")


def _status(address: str, c: Consortium, party: str = "hospital-a") -> pb.GetStatusResponse:
    with session(DataOwner, address, c, party) as o:
        return o.status()


def _start(address: str, c: Consortium, party: str = "hospital-a") -> str:
    with session(DataOwner, address, c, party) as o:
        return o.start_training()


def _fetch(address: str, c: Consortium) -> Any:
    with session(Recipient, address, c, RECIPIENT) as r:
        return r.fetch_model()


def _manifest_shards(manifest: dict[str, Any]) -> list[str]:
    out = []
    for r in manifest["receipts"]:
        body = pb.ReceiptBody()
        body.ParseFromString(base64.b64decode(r["body"]))
        out.append(f"{body.party_id}/{body.shard_id}")
    return out


def _ciphertexts(state: Path) -> set[str]:
    return {p.name for p in (state / "shards").iterdir()}


def _records(state: Path) -> list[Record]:
    return read_journal_file(state / "journal.log")


def _chained(records: list[Record], key: Any, c: Consortium, field: str, body: Any) -> Record:
    """An entry the enclave key signs, chained to ``records``: what only the enclave (or a
    host holding its key) could write. The journal's rules must refuse it anyway."""
    head = records[-1]
    entry = jpb.JournalEntry(
        version=1,
        seq=head.seq + 1,
        prev_sha256=head.sha256,
        policy_digest=c.signed.digest,
        time_unix_ms=int(time.time() * 1000),
    )
    getattr(entry, field).CopyFrom(body)
    return sign_entry(entry, key)


def _cli(c: Consortium, tmp: Path, party: str, *args: str) -> tuple[int, str, str]:
    key = tmp / f"{party}.key"
    if not key.exists():
        c.keys[party].save(tmp)
    result = CliRunner().invoke(
        main,
        [*args, "--policy", str(c.policy_path), "--key", str(key), "--allow-simulated"],
        env={"CCTRAIN_HOME": str(tmp / f"home-{party}")},
    )
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------- withdraw


def test_a_withdrawn_shard_is_not_trained_and_not_in_the_manifest(tmp_path: Path) -> None:
    """The issue's "done when": withdrawn before the start, the shard is absent from the
    training set (the rows counted) and from the manifest's receipts; its ciphertext is gone;
    the deletion receipt verifies offline; audit replays it; its id is not used again."""
    c = make_consortium(tmp_path / "c", start=MANUAL_START, release=COUNTING)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, app):
        upload(address, c, "hospital-a", owners, rows=30, shard_id="a-keep")
        gone = upload(address, c, "hospital-a", owners, rows=40, shard_id="a-gone", seed=1)
        upload(address, c, "hospital-b", owners, rows=50, seed=2)
        upload(address, c, "hospital-c", owners, rows=60, seed=3)
        ct = f"{gone.header_sha256.hex()}.ct"
        assert ct in _ciphertexts(state)  # the control: the file is there before

        receipt = _withdraw(address, c, "hospital-a", "a-gone", owners)
        assert (receipt.party_id, receipt.shard_id) == ("hospital-a", "a-gone")
        assert receipt.header_sha256 == gone.header_sha256
        assert receipt.accepted_seq == gone.journal_seq
        assert ct not in _ciphertexts(state) and len(_ciphertexts(state)) == 3
        with session(DataOwner, address, c, "hospital-a") as o:
            assert [r.shard_id for r in o.receipts()] == ["a-keep"]
        st = _status(address, c, "hospital-b")
        assert (st.phase, st.journal_seq) == ("collecting", receipt.journal_seq)
        assert "withdrawn before training: hospital-a/a-gone" in st.detail

        # The id stays taken: an upload under it is refused (new data goes under a new id).
        with pytest.raises(
            UploadRejectedError, match="was withdrawn .*upload under a new shard id"
        ):
            upload(address, c, "hospital-a", owners, rows=40, shard_id="a-gone", seed=1)

        assert _start(address, c) in ("training", "released")
        wait_phase(address, c, "released")
        model = _fetch(address, c)
        enclave_key = app.state.keys.signing_public

    manifest = model.manifest
    assert _manifest_shards(manifest) == [
        "hospital-a/a-keep",
        "hospital-b/hospital-b",
        "hospital-c/hospital-c",
    ]
    assert manifest["metrics"]["samples"] == 30 + 50 + 60  # one epoch, without the 40 rows

    # Offline: the saved deletion receipt verifies against the policy and the enclave key
    # the genesis names; a byte flipped in it does not.
    saved = owners / "owner-hospital-a" / "receipts" / c.signed.digest.hex()[:16]
    doc = json.loads((saved / "hospital-a-a-gone.deletion.json").read_text())
    raw = base64.b64decode(doc["record"])
    genesis_key = replay(_records(state), c.signed.policy).signing_public_key
    assert genesis_key == enclave_key
    again = verify_deletion_receipt(
        raw,
        enclave_key=genesis_key,
        policy=c.signed.policy,
        party_id="hospital-a",
        shard_id="a-gone",
    )
    assert again == receipt
    flipped = bytearray(raw)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(ReceiptError):
        verify_deletion_receipt(
            bytes(flipped),
            enclave_key=genesis_key,
            policy=c.signed.policy,
            party_id="hospital-a",
            shard_id="a-gone",
        )
    with pytest.raises(ReceiptError, match="withdraws hospital-a/a-gone, not hospital-a/a-keep"):
        verify_deletion_receipt(
            raw,
            enclave_key=genesis_key,
            policy=c.signed.policy,
            party_id="hospital-a",
            shard_id="a-keep",
        )

    # `cctrain audit` replays the withdrawal; the uploads-closed entry has three shards.
    result = CliRunner().invoke(
        main,
        [
            "audit",
            "--journal",
            str(state / "journal.log"),
            "--policy",
            str(c.policy_path),
            "--allow-simulated",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert (
        f"#{receipt.journal_seq:<4}" in result.stdout
        and "shard withdrawn hospital-a/a-gone (accepted in "
        f"#{receipt.accepted_seq}): out of the training set"
        in result.stdout
    ), result.stdout
    assert "uploads closed  3 shards; started by hospital-a" in result.stdout


def test_withdrawing_after_training_started_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    c = make_consortium(tmp_path / "c", training=LONG_TRAINING)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, app):
        receipts = [upload(address, c, p, owners, seed=i) for i, p in enumerate(PROVIDERS)]
        assert wait_phase(address, c, "training") == "training"
        with pytest.raises(
            ProtocolError, match="uploads are closed .*can no longer be withdrawn"
        ) as info:
            _withdraw(address, c, "hospital-a", "hospital-a", owners)
        assert info.value.code == "FAILED_PRECONDITION"
        view = app.state.view
        assert [s.shard_id for s in view.training_shards] == list(PROVIDERS)
        assert view.withdrawn == ()
        assert f"{receipts[0].header_sha256.hex()}.ct" in _ciphertexts(state)
    assert "shard_withdrawn" not in kinds(journal_records(state))
    assert not list(owners.rglob("*.deletion.json"))


def test_a_party_cannot_withdraw_another_partys_shard(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        upload(address, c, "hospital-a", owners)
        upload(address, c, "hospital-b", owners, seed=1)
        before = journal_records(state)

        # hospital-b signs a withdrawal of "hospital-a" (a's shard id) as itself: b has no
        # such shard (shard ids are each provider's own).
        with pytest.raises(ProtocolError, match="you have no accepted shard 'hospital-a'") as info:
            _withdraw_raw(
                address, c, "hospital-b", _consent(c, "hospital-b", shard_id="hospital-a")
            )
        assert info.value.code == "NOT_FOUND"
        # hospital-b replays hospital-a's own, genuinely signed withdrawal.
        a_signed = _consent(c, "hospital-a", shard_id="hospital-a")
        with pytest.raises(
            PermissionDeniedError,
            match="signed for 'hospital-a', but the request is from 'hospital-b'",
        ):
            _withdraw_raw(address, c, "hospital-b", a_signed)
        # hospital-b signs one in hospital-a's name with its own key, sent as either party.
        forged = _consent(c, "hospital-a", shard_id="hospital-a", signer="hospital-b")
        with pytest.raises(PermissionDeniedError):
            _withdraw_raw(address, c, "hospital-b", forged)
        with pytest.raises(
            ProtocolError, match="not signed by the policy key of 'hospital-a'"
        ) as info:
            _withdraw_raw(address, c, "hospital-a", forged)
        assert info.value.code == "INVALID_ARGUMENT"
        # Consent for another action, for another policy, or not a consent at all.
        veto_shaped = _consent(c, "hospital-a", action="veto", manifest=bytes(32))
        with pytest.raises(ProtocolError, match="consent action is 'veto', want 'withdraw'"):
            _withdraw_raw(address, c, "hospital-a", veto_shaped)
        with pytest.raises(ProtocolError, match="consent body is malformed") as info:
            _withdraw_raw(
                address, c, "hospital-a", pb.SignedConsent(body=b"\xff\xff", signature=b"")
            )
        assert info.value.code == "INVALID_ARGUMENT"

        # A genuinely signed withdrawal padded (unknown fields) past any consent's length.
        body = (
            pb.ConsentBody.FromString(a_signed.body).SerializeToString()
            + b"\xfa\x3f\x81\x10"
            + bytes(2049)
        )
        padded = pb.SignedConsent(
            body=body, signature=c.keys["hospital-a"].signing_key.sign(CONSENT_SIG_TAG + body)
        )
        with pytest.raises(ProtocolError, match=r"consent body is \d+ bytes, more than 1024"):
            _withdraw_raw(address, c, "hospital-a", padded)

        assert journal_records(state) == before  # nothing of any of them was kept
        assert _status(address, c).providers_uploaded == ["hospital-a", "hospital-b"]
        # hospital-a's own withdrawal, the control, is taken; unknown fields beside its body
        # and signature are not journaled.
        extra = pb.SignedConsent.FromString(a_signed.SerializeToString() + b"\xfa\x3f\x03abc")
        raw = _withdraw_raw(address, c, "hospital-a", extra)
        journaled = parse_record(raw, position=0).entry.shard_withdrawn.request
        assert journaled.SerializeToString() == a_signed.SerializeToString()


def test_a_second_withdrawal_is_refused_and_the_sdk_recovers_its_receipt(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        upload(address, c, "hospital-a", owners)
        first = _withdraw(address, c, "hospital-a", "hospital-a", owners)
        n = len(journal_records(state))
        with pytest.raises(
            ProtocolError, match=f"already withdrawn: journal entry #{first.journal_seq}"
        ) as info:
            _withdraw_raw(
                address, c, "hospital-a", _consent(c, "hospital-a", shard_id="hospital-a")
            )
        assert info.value.code == "ALREADY_EXISTS"
        # The SDK after a lost answer: the same receipt, from the journal, verified again.
        assert _withdraw(address, c, "hospital-a", "hospital-a", owners) == first
        assert len(journal_records(state)) == n
        # An id that was never uploaded.
        with pytest.raises(ProtocolError, match="no accepted shard 'never'") as info:
            _withdraw(address, c, "hospital-a", "never", owners)
        assert info.value.code == "NOT_FOUND"


def test_a_required_provider_that_withdrew_its_only_shard_blocks_the_start(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", start=MANUAL_START, release=COUNTING)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        for i, p in enumerate(PROVIDERS):
            upload(address, c, p, owners, rows=20, seed=i)
        _withdraw(address, c, "hospital-c", "hospital-c", owners)
        st = _status(address, c)
        assert list(st.providers_missing) == ["hospital-c"]
        with pytest.raises(
            ProtocolError, match="start rule does not hold yet: no receipt from hospital-c"
        ):
            _start(address, c)
        assert _status(address, c).phase == "collecting"
        upload(address, c, "hospital-c", owners, rows=25, shard_id="c-again", seed=9)
        _start(address, c)
        wait_phase(address, c, "released")
        manifest = _fetch(address, c).manifest
    assert _manifest_shards(manifest)[-1] == "hospital-c/c-again"
    assert manifest["metrics"]["samples"] == 20 + 20 + 25


def test_auto_start_waits_for_the_shards_that_remain(tmp_path: Path) -> None:
    """With auto_start, the rule is evaluated on the shards not withdrawn: a provider that
    withdrew is missing again until it uploads anew, and then the run starts by itself."""
    c = make_consortium(tmp_path / "c", release=COUNTING)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        upload(address, c, "hospital-a", owners, rows=20)
        upload(address, c, "hospital-b", owners, rows=20, seed=1)
        _withdraw(address, c, "hospital-a", "hospital-a", owners)
        upload(address, c, "hospital-c", owners, rows=20, seed=2)
        st = _status(address, c)
        assert (st.phase, list(st.providers_missing)) == ("collecting", ["hospital-a"])
        upload(address, c, "hospital-a", owners, rows=30, shard_id="a-2", seed=3)
        wait_phase(address, c, "released")
        manifest = _fetch(address, c).manifest
    assert sorted(_manifest_shards(manifest)) == [
        "hospital-a/a-2",
        "hospital-b/hospital-b",
        "hospital-c/hospital-c",
    ]
    assert manifest["metrics"]["samples"] == 20 + 20 + 30


def test_a_withdrawn_shard_counts_against_no_limit(tmp_path: Path) -> None:
    """One shard per provider: after withdrawing it, the provider may upload another, even
    the same bytes (duplicates are refused only among shards it still holds)."""
    c = make_consortium(tmp_path / "c", start=MANUAL_START, limits={"shards_per_provider": 1})
    state, owners = tmp_path / "state", tmp_path / "owners"
    shard = write_shard(tmp_path / "a.npz", rows=30)
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            o.upload(shard, shard_id="first", state_dir=owners)
            with pytest.raises(UploadRejectedError, match="policy allows 1 per provider"):
                o.upload(
                    write_shard(tmp_path / "b.npz", rows=30, seed=5),
                    shard_id="second",
                    state_dir=owners,
                )
            o.withdraw("first", state_dir=owners)
            assert o.upload(shard, shard_id="second", state_dir=owners).rows == 30
            assert [r.shard_id for r in o.receipts()] == ["second"]


def test_withdrawals_are_bounded_so_the_journal_is(tmp_path: Path) -> None:
    """Upload, withdraw, upload under a new id, withdraw again: each cycle is two journal
    entries every restart and every party replays. limits.withdrawals_per_provider (default
    shards_per_provider, here 1) ends the loop: the second withdrawal is refused, nothing is
    journaled for it, and the shard stays in the run."""
    c = make_consortium(tmp_path / "c", start=MANUAL_START, limits={"shards_per_provider": 1})
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            o.upload(write_shard(tmp_path / "a.npz", rows=30), shard_id="s0", state_dir=owners)
            o.withdraw("s0", state_dir=owners)
            o.upload(write_shard(tmp_path / "b.npz", rows=30, seed=1), shard_id="s1")
            before = kinds(journal_records(state))
            with pytest.raises(ProtocolError, match="already withdrew 1 shard.*withdrawals_per_"):
                o.withdraw("s1", state_dir=owners)
            assert kinds(journal_records(state)) == before
            assert [r.shard_id for r in o.receipts()] == ["s1"]
    assert before.count("shard_withdrawn") == 1


def test_a_withdrawal_while_an_upload_of_the_same_id_streams(tmp_path: Path) -> None:
    """The withdrawal takes the shard id's upload lock: while an upload of that id streams
    it is refused (ABORTED); once that upload is accepted it can be withdrawn; an upload of
    the id cannot slip in between (the withdrawn id stays taken)."""
    from tests.hostile.helpers import requests_from

    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state = tmp_path / "state"
    shard = write_shard(tmp_path / "big.npz", rows=2000)
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            size = shard.stat().st_size
            header_bytes, sig, key = o._new_header("npz", "streaming", 4096, size)
            header = pb.ShardHeader()
            header.ParseFromString(header_bytes)
            messages = list(
                o._requests(
                    shard,
                    header,
                    header_bytes,
                    sig,
                    key,
                    0,
                    lambda _s, _t: None,
                    signing_key=o.keys.signing_key,
                    outcome=_UploadOutcome(),
                )
            )
            assert len(messages) > 3
            outbox: queue.Queue[Any] = queue.Queue()
            for m in messages[:2]:  # the header and the first chunk; the rest waits
                outbox.put(m)
            call = o.stub.Upload(requests_from(outbox), metadata=o.metadata("Upload", b""))
            responses: list[Any] = []
            reader = threading.Thread(target=lambda: responses.extend(call), daemon=True)
            reader.start()
            deadline = time.monotonic() + 30
            while o.unary("UploadStatus", pb.UploadStatusRequest(shard_id="streaming")).state != (
                pb.UploadStatusResponse.PARTIAL
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)

            with pytest.raises(
                ProtocolError, match="an upload of shard 'streaming' is in progress"
            ) as info:
                o.withdraw("streaming", state_dir=tmp_path / "owner")
            assert info.value.code == "ABORTED"

            for m in messages[2:]:
                outbox.put(m)
            outbox.put(None)
            reader.join(30)
            assert responses and responses[-1].WhichOneof("kind") == "receipt"
            receipt = o.withdraw("streaming", state_dir=tmp_path / "owner")
            assert receipt.header_sha256 == sha256(header_bytes)
            assert o.receipts() == []


# --------------------------------------------------------------------------- journal rules


def test_the_journal_refuses_what_a_withdrawal_forbids(tmp_path: Path) -> None:
    """Entries a host holding the enclave key could write (the simulated platform keeps its
    secret on disk): each breaks a withdrawal rule, and replay (enclave and audit) refuses."""
    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, app):
        upload(address, c, "hospital-a", owners)
        upload(address, c, "hospital-b", owners, seed=1)
        key = app.state.keys.signing
        before = _records(state)
        _withdraw(address, c, "hospital-a", "hospital-a", owners)
    records = _records(state)
    policy = c.signed.policy
    a = replay(before, policy).shard("hospital-a", "hospital-a")
    b = replay(before, policy).shard("hospital-b", "hospital-b")
    assert a is not None and b is not None
    replay(records, policy)  # the control

    def refused(records: list[Record], field: str, body: Any, match: str) -> None:
        with pytest.raises(JournalError, match=match):
            replay([*records, _chained(records, key, c, field, body)], policy)

    def withdrawal(consent: pb.SignedConsent, shard: Any = b) -> jpb.ShardWithdrawn:
        return jpb.ShardWithdrawn(
            request=consent, header_sha256=shard.header_sha256, accepted_seq=shard.seq
        )

    b_own = _consent(c, "hospital-b", shard_id="hospital-b")
    refused(
        records,
        "shard_withdrawn",
        withdrawal(_consent(c, "hospital-b", shard_id="hospital-b", signer="hospital-a")),
        r"\(shard withdrawn\): consent is not signed by the policy key of 'hospital-b'",
    )
    refused(
        records,
        "shard_withdrawn",
        jpb.ShardWithdrawn(request=b_own, header_sha256=a.header_sha256, accepted_seq=b.seq),
        "header digest is not the shard's",
    )
    refused(
        records,
        "shard_withdrawn",
        jpb.ShardWithdrawn(request=b_own, header_sha256=b.header_sha256, accepted_seq=a.seq),
        f"names entry #{a.seq}, not #{b.seq}",
    )
    refused(
        records,
        "shard_withdrawn",
        withdrawal(_consent(c, "hospital-a", shard_id="hospital-a"), a),
        r"shard 'hospital-a/hospital-a' was already withdrawn",
    )
    # Uploads closed on a set that still holds the withdrawn shard.
    refs = [
        jpb.ShardRef(
            party_id=s.party_id,
            shard_id=s.shard_id,
            header_sha256=s.header_sha256,
            accepted_seq=s.seq,
        )
        for s in (a, b)
    ]
    refused(
        records,
        "uploads_closed",
        jpb.UploadsClosed(shards=refs, requested_by="hospital-a"),
        "its shard set is not exactly the shards accepted before it",
    )
    # The withdrawn shard accepted again, under its old id (its old, genuine entry re-chained).
    old = next(r for r in records if r.seq == a.seq)
    refused(
        records,
        "shard_accepted",
        old.entry.shard_accepted,
        r"shard hospital-a/hospital-a was withdrawn \(entry #\d+\); a withdrawn shard id",
    )


def test_the_journal_refuses_a_withdrawal_beyond_the_limit(tmp_path: Path) -> None:
    """A withdrawal past limits.withdrawals_per_provider, signed by the enclave key (what
    only a host holding it could write): replay refuses it, as the enclave did."""
    c = make_consortium(tmp_path / "c", start=MANUAL_START, limits={"withdrawals_per_provider": 1})
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, app):
        upload(address, c, "hospital-a", owners)
        with session(DataOwner, address, c, "hospital-a") as o:
            o.upload(write_shard(tmp_path / "two.npz", rows=30, seed=3), shard_id="two")
        key = app.state.keys.signing
        _withdraw(address, c, "hospital-a", "hospital-a", owners)
    records = _records(state)
    two = replay(records, c.signed.policy).shard("hospital-a", "two")
    assert two is not None
    body = jpb.ShardWithdrawn(
        request=_consent(c, "hospital-a", shard_id="two"),
        header_sha256=two.header_sha256,
        accepted_seq=two.seq,
    )
    with pytest.raises(JournalError, match="already withdrew 1 shard.*withdrawals_per_provider"):
        replay([*records, _chained(records, key, c, "shard_withdrawn", body)], c.signed.policy)


def test_a_flipped_byte_in_a_withdrawal_entry_stops_the_enclave(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        upload(address, c, "hospital-a", owners)
        receipt = _withdraw(address, c, "hospital-a", "hospital-a", owners)
    raws = journal_records(state)
    k = receipt.journal_seq
    assert kinds(raws)[k] == "shard_withdrawn"
    # In the party's signed consent (inside the entry), then in the enclave's signature.
    consent_sig = parse_record(raws[k], position=k).entry.shard_withdrawn.request.signature
    for where in (raws[k].index(consent_sig) + 5, len(raws[k]) - 1):
        edited = list(raws)
        record = bytearray(raws[k])
        record[where] ^= 0x01
        edited[k] = bytes(record)
        write_journal(state, edited)
        refused_start(
            c, state, rf"journal entry #{k} \(shard withdrawn\): not signed by this journal"
        )
    write_journal(state, raws)
    with running_enclave(c, state) as (_address, app):  # the control
        assert app.state.view.withdrawal("hospital-a", "hospital-a") is not None


def test_a_withdrawn_shards_ciphertext_put_back_is_removed_unread(tmp_path: Path) -> None:
    """A crash between the entry and the deletion, or a host restoring the file: the next
    start removes what no entry vouches for any more, and the shard stays out."""
    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        r = upload(address, c, "hospital-a", owners)
        ct = state / "shards" / f"{r.header_sha256.hex()}.ct"
        kept = ct.read_bytes()
        _withdraw(address, c, "hospital-a", "hospital-a", owners)
    assert not ct.exists()
    ct.write_bytes(kept)
    with running_enclave(c, state) as (address, app):
        assert not ct.exists()
        assert app.state.view.shards == ()
        assert _status(address, c).providers_uploaded == []


def test_a_journal_cut_back_to_before_a_withdrawal_does_not_start(tmp_path: Path) -> None:
    """The host cuts the withdrawal off the journal: the shard would be accepted again, but
    its ciphertext is gone, so the enclave refuses to start. (Had the host copied the file
    beforehand, the cut journal would replay: that is the rollback case, for the parties'
    memory of the journal head, and not detected here.)"""
    c = make_consortium(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        r = upload(address, c, "hospital-a", owners)
        _withdraw(address, c, "hospital-a", "hospital-a", owners)
    raws = journal_records(state)
    write_journal(state, raws[:-1])
    refused_start(
        c, state, rf"shard hospital-a/hospital-a \(journal entry #{r.journal_seq}\) is missing"
    )


# --------------------------------------------------------------------------- veto


def test_a_veto_ends_the_run_and_survives_a_restart(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", release=TWO_APPROVALS)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        for i, p in enumerate(PROVIDERS):
            upload(address, c, p, owners, seed=i)
        wait_phase(address, c, "awaiting_approval")
        msha = hashlib.sha256(_status(address, c).manifest).digest()
        release_dir = state / "release" / msha.hex()
        assert sorted(p.name for p in release_dir.iterdir()) == [
            f"{RECIPIENT}.enc",
            f"{RECIPIENT}.sealed",
        ]
        n = len(journal_records(state))

        # Not named by the release rule: neither a provider outside it nor the recipient.
        for outsider in ("hospital-c", RECIPIENT):
            with pytest.raises(
                PermissionDeniedError, match="not a data provider the release rule names"
            ):
                _veto_raw(address, c, outsider, _consent(c, outsider, action="veto", manifest=msha))
        # A veto of another manifest, and one signed by another key.
        with pytest.raises(ProtocolError, match="veto is for another manifest") as info:
            _veto_raw(
                address,
                c,
                "hospital-b",
                _consent(c, "hospital-b", action="veto", manifest=bytes(32)),
            )
        assert info.value.code == "FAILED_PRECONDITION"
        forged = _consent(c, "hospital-b", action="veto", manifest=msha, signer="hospital-c")
        with pytest.raises(ProtocolError, match="not signed by the policy key of 'hospital-b'"):
            _veto_raw(address, c, "hospital-b", forged)
        assert len(journal_records(state)) == n and _status(address, c).phase == "awaiting_approval"

        # hospital-a approves; hospital-b vetoes: nothing is released.
        with session(DataOwner, address, c, "hospital-a") as a:
            assert a.approve_release() == ["hospital-a"]
        with session(DataOwner, address, c, "hospital-b") as b:
            assert b.veto_release() == "vetoed"
        st = _status(address, c)
        assert st.phase == "vetoed" and "vetoed by hospital-b" in st.detail
        assert not release_dir.exists()
        with pytest.raises(ProtocolError, match="the release was vetoed by hospital-b"):
            _fetch(address, c)
        with session(DataOwner, address, c, "hospital-b") as b:
            with pytest.raises(ProtocolError, match="the release was vetoed by hospital-b"):
                b.approve_release()
        with session(DataOwner, address, c, "hospital-a") as a:
            assert a.veto_release() == "vetoed"  # idempotent: no second entry
    assert kinds(journal_records(state))[-2:] == ["approval", "vetoed"]

    # The host restores the sealed weights and restarts: removed, still vetoed.
    release_dir.mkdir(parents=True)
    (release_dir / f"{RECIPIENT}.enc").write_bytes(b"x")
    with running_enclave(c, state) as (address, app):
        assert not release_dir.exists()
        assert app.state.view.phase == "vetoed"
        with pytest.raises(ProtocolError, match="vetoed by hospital-b"):
            _fetch(address, c)
        with session(DataOwner, address, c, "hospital-c") as o:
            report = o.audit()
    assert report.state.vetoed_by == "hospital-b"
    assert report.history()[-1]["kind"] == "vetoed"

    # Nothing may follow a veto in the journal: a release entry the enclave key signs after
    # it is refused at the next start.
    records = _records(state)
    approvals = [e.entry.approval.approval for e in records if e.kind == "approval"]
    key = app.state.keys.signing
    extra = _chained(
        records,
        key,
        c,
        "released",
        jpb.Released(manifest_sha256=msha, approvals=approvals),
    )
    write_journal(state, [*journal_records(state), extra.raw])
    refused_start(
        c, state, rf"journal entry #{extra.seq} \(released\): comes after the run ended \(vetoed\)"
    )

    # In place of the real veto, vetoes the journal's rules refuse (enclave-signed, chained).
    before = records[:-1]
    for veto, match in (
        (
            _consent(c, "hospital-b", action="veto", manifest=bytes(32)),
            "veto is for another manifest",
        ),
        (
            _consent(c, "hospital-c", action="veto", manifest=msha),
            "'hospital-c' is not a party the release rule names",
        ),
        (
            _consent(c, "hospital-b", action="veto", manifest=msha, signer="hospital-a"),
            "consent is not signed by the policy key of 'hospital-b'",
        ),
        (
            _consent(c, "hospital-b", shard_id="hospital-b", manifest=msha),
            "consent action is 'withdraw', want 'veto'",
        ),
    ):
        forged = _chained(before, key, c, "vetoed", jpb.ReleaseVetoed(veto=veto))
        with pytest.raises(JournalError, match=rf"\(release vetoed\): .*{match}"):
            replay([*before, forged], c.signed.policy)
    replay(records, c.signed.policy)  # the control: the real veto


def test_a_veto_after_the_release_is_refused(finished_run: FinishedRun, tmp_path: Path) -> None:
    c = finished_run.consortium
    state = finished_run.copy_state(tmp_path / "state")
    n = len(journal_records(state))
    with running_enclave(c, state) as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as a:
            with pytest.raises(
                ProtocolError, match="release already happened .*too late to veto"
            ) as info:
                a.veto_release()
            assert info.value.code == "FAILED_PRECONDITION"
        assert _fetch(address, c).release.approved_by == ("hospital-a",)  # still released
    assert len(journal_records(state)) == n


def test_a_veto_before_there_is_a_manifest_is_refused(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", start=MANUAL_START, release=TWO_APPROVALS)
    with running_enclave(c, tmp_path / "state") as (address, _app):
        consent = _consent(c, "hospital-a", action="veto", manifest=bytes(32))
        with pytest.raises(ProtocolError, match=r"no release to veto \(phase: collecting\)"):
            _veto_raw(address, c, "hospital-a", consent)
        with session(DataOwner, address, c, "hospital-a") as a:
            with pytest.raises(ProtocolError, match="no release manifest yet"):
                a.veto_release()


def _expiring(tmp: Path, **overrides: Any) -> Consortium:
    expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=1)
    return make_consortium(tmp, expires=expires.isoformat().replace("+00:00", "Z"), **overrides)


def test_after_expiry_nothing_is_withdrawn_and_a_veto_stays_final(tmp_path: Path) -> None:
    clock = HostClock()
    c = _expiring(tmp_path / "c", start=MANUAL_START)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state, clock=clock) as (address, _app):
        upload(address, c, "hospital-a", owners, clock=clock)
        clock.offset = 2 * 3600
        with session(DataOwner, address, c, "hospital-a", clock=clock) as a:
            with pytest.raises(ProtocolError, match="policy expired .* takes no withdrawals"):
                a.withdraw("hospital-a", state_dir=owners)
            assert a.status().phase == "expired"
    assert kinds(journal_records(state)) == ["genesis", "shard_accepted", "expired"]

    clock = HostClock()
    c = _expiring(tmp_path / "c2", release=TWO_APPROVALS)
    state = tmp_path / "state2"
    with running_enclave(c, state, clock=clock) as (address, _app):
        for i, p in enumerate(PROVIDERS):
            upload(address, c, p, owners, seed=i, clock=clock)
        wait_phase(address, c, "awaiting_approval", clock=clock)
        with session(DataOwner, address, c, "hospital-b", clock=clock) as b:
            assert b.veto_release() == "vetoed"
        clock.offset = 2 * 3600
        # Expiry after a veto: every decision is refused for it, and the veto stays final
        # (no expiry entry can follow the terminal one).
        with session(Recipient, address, c, RECIPIENT, clock=clock) as r:
            with pytest.raises(ProtocolError, match="policy expired .* releases nothing"):
                r.fetch_model()
        with session(DataOwner, address, c, "hospital-a", clock=clock) as a:
            assert a.status().phase == "vetoed"
            with pytest.raises(ProtocolError, match="policy expired .* takes no vetoes"):
                a.veto_release()
    assert kinds(journal_records(state))[-1] == "vetoed"
    with running_enclave(c, state, clock=clock) as (_address, app):
        assert app.state.view.phase == "vetoed"


# --------------------------------------------------------------------------- CLI


def test_the_cli_withdraws_and_vetoes(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", start=MANUAL_START, release=TWO_APPROVALS)
    state, owners = tmp_path / "state", tmp_path / "owners"
    with running_enclave(c, state) as (address, _app):
        for i, p in enumerate(PROVIDERS):
            upload(address, c, p, owners, seed=i)
        upload(address, c, "hospital-a", owners, shard_id="extra", seed=7)

        code, out, err = _cli(
            c, tmp_path, "hospital-a", "withdraw", "--shard-id", "extra", "--enclave", address
        )
        assert code == 0, err
        assert (
            "withdrawn: party=hospital-a shard=extra; deletion receipt verified: journal entry #5"
            in out
        )
        home = tmp_path / "home-hospital-a" / "receipts" / c.signed.digest.hex()[:16]
        assert (home / "hospital-a-extra.deletion.json").is_file()
        code, _out, err = _cli(
            c, tmp_path, "hospital-a", "withdraw", "--shard-id", "../x", "--enclave", address
        )
        assert code == 2 and "must match" in err
        code, out, err = _cli(c, tmp_path, "hospital-b", "status", "--enclave", address)
        assert code == 0 and "detail: withdrawn before training: hospital-a/extra" in out, out

        code, _out, err = _cli(c, tmp_path, "hospital-a", "release", "veto", "--enclave", address)
        assert code == 1 and "no release manifest yet (phase: collecting)" in err
        _start(address, c)
        wait_phase(address, c, "awaiting_approval")
        code, out, err = _cli(c, tmp_path, "hospital-a", "release", "veto", "--enclave", address)
        assert code == 0, err
        assert "vetoed; phase: vetoed" in out
        code, _out, err = _cli(
            c, tmp_path, "hospital-a", "withdraw", "--shard-id", "hospital-a", "--enclave", address
        )
        assert code == 1 and "can no longer be withdrawn" in err
        code, out, err = _cli(c, tmp_path, "hospital-c", "audit", "--enclave", address)
        assert code == 0, err
        assert "release vetoed  by hospital-a of manifest" in out and out.rstrip().endswith(
            "phase: vetoed"
        )
