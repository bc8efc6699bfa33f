"""The owner-side ε ledger: one dataset, two policies, one lifetime budget.

hospital-a keeps one state directory for all its work. Its dataset's lifetime budget is
ε 6; two consortium policies of the same parties each ask for ε 4 (DP, one release). The
first upload is allowed; the second, to the other policy's enclave, is refused before a
byte is sent, naming the policy that spent the budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cctrain.client import DataOwner, file_sha256
from cctrain.errors import UploadRejectedError
from cctrain.memory import BudgetExceededError, PartyMemory
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import Consortium, another_policy, make_consortium, running_enclave
from tests.ingest.conftest import write_shard
from tests.state.conftest import DP, session

TRAINING = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 1,
    "batch_size": 16,
}


def _second(c: Consortium, root: Path, **overrides: object) -> Consortium:
    signed = another_policy(c, privacy=DP, training=TRAINING, **overrides)
    root.mkdir(parents=True)
    (root / "policy.signed.json").write_text(signed.envelope.to_json())
    return Consortium(root, c.keys, signed)


@pytest.fixture
def two_policies(tmp_path: Path) -> tuple[Consortium, Consortium]:
    first = make_consortium(
        tmp_path / "c1", privacy=DP, training=TRAINING, start={"auto_start": False}
    )
    second = _second(first, tmp_path / "c2", name="second-study", start={"auto_start": False})
    assert first.signed.policy.digest != second.signed.policy.digest
    return first, second


def test_an_upload_over_the_lifetime_budget_is_refused_across_policies(
    two_policies: tuple[Consortium, Consortium], tmp_path: Path
) -> None:
    first, second = two_policies
    home = tmp_path / "home-a"
    shard = write_shard(tmp_path / "a.npz", rows=40, seed=0)
    dataset, _ = file_sha256(shard)
    with PartyMemory(home) as mem:
        mem.set_budget(dataset, 6.0, label="a.npz")
    with running_enclave(first, tmp_path / "s1") as (address, _):
        with session(DataOwner, address, first, "hospital-a", state_dir=home) as o:
            assert o.upload(shard).rows == 40
    with running_enclave(second, tmp_path / "s2") as (address, _):
        with session(DataOwner, address, second, "hospital-a", state_dir=home) as o:
            with pytest.raises(BudgetExceededError) as info:
                o.upload(shard)
            # Nothing of it reached the enclave.
            st = o.unary("UploadStatus", pb.UploadStatusRequest(shard_id="a"))
            assert st.state == pb.UploadStatusResponse.UNKNOWN
            assert list(o.status().providers_uploaded) == []
    text = str(info.value)
    assert "lifetime budget 6" in text and "'second-study'" in text
    assert "test-consortium" in text  # the policy that spent it is named
    # The refused upload granted nothing: only the first policy holds the dataset.
    with PartyMemory(home) as mem:
        assert [g.policy_name for g in mem.grants(dataset)] == ["test-consortium"]


def test_within_budget_both_policies_are_recorded_and_shown(
    two_policies: tuple[Consortium, Consortium], tmp_path: Path
) -> None:
    first, second = two_policies
    home = tmp_path / "home-a"
    shard = write_shard(tmp_path / "a.npz", rows=40, seed=0)
    (home).mkdir()
    (home / "config.toml").write_text("[ledger]\nlifetime_epsilon = 8\n")
    for c, state in ((first, tmp_path / "s1"), (second, tmp_path / "s2")):
        with running_enclave(c, state) as (address, _):
            with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
                o.upload(shard)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cctrain.cli",
            "ledger",
            "--state-dir",
            str(home),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(out.stdout)
    assert row["budget"] == 8.0 and row["granted"] == 8.0
    assert sorted(p["policy_name"] for p in row["policies"]) == ["second-study", "test-consortium"]
    text = subprocess.run(
        [sys.executable, "-m", "cctrain.cli", "ledger", "--state-dir", str(home)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ε granted 8, budget 8" in text


def test_a_policy_without_dp_exceeds_any_budget(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", training=TRAINING, start={"auto_start": False})
    home = tmp_path / "home-a"
    shard = write_shard(tmp_path / "a.npz", rows=40, seed=0)
    with PartyMemory(home) as mem:
        mem.set_budget(file_sha256(shard)[0], 100.0, label="a.npz")
    with running_enclave(c, tmp_path / "s") as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            with pytest.raises(BudgetExceededError, match=r"may spend ε unbounded \(no DP\)"):
                o.upload(shard)


def test_the_approval_checks_the_ledger_too(tmp_path: Path) -> None:
    """Uploaded from another machine (no ledger entry there), approved from this one, whose
    ledger already holds ε 4 of the dataset for another policy: the approval is refused."""
    release = {
        "recipients": ["research-lab"],
        "metrics": ["steps"],
        "approvals_required_from": ["hospital-a"],
    }
    c = make_consortium(tmp_path / "c", privacy=DP, training=TRAINING, release=release)
    other = _second(c, tmp_path / "c2", name="earlier-study")
    shards = [
        write_shard(tmp_path / f"{p}.npz", rows=40, seed=i)
        for i, p in enumerate(("hospital-a", "hospital-b", "hospital-c"))
    ]
    dataset, _ = file_sha256(shards[0])
    home = tmp_path / "home-a"
    with PartyMemory(home) as mem:
        mem.set_budget(dataset, 6.0, label="a.npz")
        mem.grant(
            other.signed.policy,
            dataset_sha256=dataset,
            plaintext_sha256=dataset,
            party_id="hospital-a",
            shard_id="hospital-a",
            status="approved",
            what="test",
        )
    with running_enclave(c, tmp_path / "s") as (address, _):
        for p, shard in zip(("hospital-a", "hospital-b", "hospital-c"), shards, strict=True):
            with session(DataOwner, address, c, p, state_dir=tmp_path / f"laptop-{p}") as o:
                o.upload(shard)
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            o.wait_for_phase(("awaiting_approval",), timeout=300)
            with pytest.raises(BudgetExceededError, match="approve this release.*earlier-study"):
                o.approve_release()
            assert list(o.status().approvals) == []
        # Nothing was counted as an approved release either.
        with PartyMemory(home) as mem:
            assert mem.approvals(c.signed.policy.digest, "hospital-a") == []


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cctrain.cli", *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_a_named_dataset_is_one_budget_across_exports(
    two_policies: tuple[Consortium, Consortium], tmp_path: Path
) -> None:
    """The ledger names data by its file bytes unless the owner names it: two exports of
    one dataset (here two files with other bytes) are two datasets to the ledger, one
    with ``--dataset``. The named one is refused by the second policy; the control, the
    same upload without the name, is accepted."""
    first, second = two_policies
    home = tmp_path / "home-a"
    export_1 = write_shard(tmp_path / "export-1.npz", rows=40, seed=0)
    export_2 = write_shard(tmp_path / "export-2.npz", rows=40, seed=1)
    assert file_sha256(export_1)[0] != file_sha256(export_2)[0]
    _cli(
        "ledger", "budget", "--dataset", "patients-2026", "--epsilon", "6", "--state-dir", str(home)
    )
    with running_enclave(first, tmp_path / "s1") as (address, _):
        with session(DataOwner, address, first, "hospital-a", state_dir=home) as o:
            o.upload(export_1, dataset="patients-2026")
    with running_enclave(second, tmp_path / "s2") as (address, _):
        with session(DataOwner, address, second, "hospital-a", state_dir=home) as o:
            with pytest.raises(BudgetExceededError, match="lifetime budget 6.*test-consortium"):
                o.upload(export_2, dataset="patients-2026")
            assert list(o.status().providers_uploaded) == []
            o.upload(export_2)  # the control: under its file bytes it is a fresh dataset
    rows = {
        r["label"]: r
        for r in json.loads(_cli("ledger", "--state-dir", str(home), "--format", "json"))
    }
    assert rows["patients-2026"]["granted"] == 4.0 and rows["patients-2026"]["budget"] == 6.0
    assert [p["policy_name"] for p in rows["patients-2026"]["policies"]] == ["test-consortium"]


def test_a_bad_dataset_name_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    from cctrain.errors import InputError
    from cctrain.memory import dataset_key

    for bad in ("", "../x", "a b", "x" * 129, "é"):
        with pytest.raises(InputError, match="dataset label"):
            dataset_key(bad)


def test_only_the_process_that_created_a_grant_may_give_it_back(tmp_path: Path) -> None:
    """Two processes of one party (two PartyMemory connections to one database) grant the
    same shard: exactly one of them created the grant, and only that one may forget it when
    its upload is refused. A grant is named by the file it was made for: forgetting another
    file's grant under the same shard id (a later run of the policy) leaves it alone. Each
    live shard of a dataset counts: two exports of the same rows in one policy are ε twice."""
    c = make_consortium(tmp_path / "c", privacy=DP, training=TRAINING)
    policy, dataset, other_file = c.signed.policy, b"\x01" * 32, b"\x02" * 32
    home = tmp_path / "home"
    with PartyMemory(home) as one, PartyMemory(home) as two:
        kw = {"dataset_sha256": dataset, "plaintext_sha256": dataset, "party_id": "hospital-a"}
        assert one.grant(policy, shard_id="s1", status="uploaded", what="upload", **kw) is True
        assert two.grant(policy, shard_id="s1", status="uploaded", what="upload", **kw) is False
        assert two.grant(policy, shard_id="s2", status="uploaded", what="upload", **kw) is True
        assert one.granted(dataset) == 8.0  # one policy, two shards holding the same rows
        two.forget_grant(policy.digest, "hospital-a", "s2", other_file)  # another file's
        assert sorted(g.shard_id for g in one.grants(dataset)) == ["s1", "s2"]
        two.forget_grant(policy.digest, "hospital-a", "s2", dataset)
        assert [g.shard_id for g in one.grants(dataset)] == ["s1"]
        one.set_status(policy.digest, "hospital-a", "s1", other_file, "withdrawn")
        assert one.granted(dataset) == 4.0  # not that file's grant: still counted
        one.set_status(policy.digest, "hospital-a", "s1", dataset, "withdrawn")
        assert one.granted(dataset) == 0.0


def test_a_refused_upload_gives_back_only_its_own_grant(tmp_path: Path) -> None:
    """The same file uploaded again under a second shard id is refused (the policy takes no
    duplicate shards): the grant that upload created is given back (the enclave holds
    nothing under that id); the accepted shard's grant stays."""
    c = make_consortium(tmp_path / "c", privacy=DP, training=TRAINING, start={"auto_start": False})
    home = tmp_path / "home-a"
    shard = write_shard(tmp_path / "s.npz", rows=40, seed=0)
    with running_enclave(c, tmp_path / "st") as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            o.upload(shard)
            with pytest.raises(UploadRejectedError, match="same content"):
                o.upload(shard, shard_id="again")
    with PartyMemory(home) as mem:
        assert [g.shard_id for g in mem.grants(file_sha256(shard)[0])] == ["s"]


def test_a_refused_upload_in_a_later_run_keeps_an_earlier_runs_grant(tmp_path: Path) -> None:
    """Run 1 holds dataset D1 under shard id "cohort"; it is abandoned and forgotten (cctrain
    memory forget keeps the ledger). In run 2 of the same policy another file is refused
    under the same shard id: D1's grant (run 1, still on the host's disk) stays."""
    import numpy as np

    c = make_consortium(tmp_path / "c", privacy=DP, training=TRAINING, start={"auto_start": False})
    home = tmp_path / "home-a"
    d1 = write_shard(tmp_path / "d1.npz", rows=40, seed=1)
    with running_enclave(c, tmp_path / "run1") as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            o.upload(d1, shard_id="cohort")
            run1 = o.journal_view.run_id
    with running_enclave(c, tmp_path / "run2") as (address, _):
        with PartyMemory(home) as mem:
            mem.forget_run(c.signed.policy.digest, run1.hex()[:12])
        bad = write_shard(
            tmp_path / "d2.npz", rows=40, seed=2, features=np.zeros((40, 3), dtype=np.float32)
        )
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            with pytest.raises(UploadRejectedError):
                o.upload(bad, shard_id="cohort")
    with PartyMemory(home) as mem:
        assert mem.granted(file_sha256(d1)[0]) == 4.0
        assert mem.grants(file_sha256(bad)[0]) == []  # the refused file's own grant is gone


def test_two_exports_of_one_named_dataset_in_one_policy_count_twice(tmp_path: Path) -> None:
    """The same rows in two files (another row order), both named --dataset cohort, in one
    DP policy: both are accepted (only identical bytes are duplicates) and every row is
    trained on twice, so the ledger counts the policy's ε for each."""
    import numpy as np

    from cctrain.memory import dataset_key

    c = make_consortium(tmp_path / "c", privacy=DP, training=TRAINING, start={"auto_start": False})
    home = tmp_path / "home-a"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 2, size=40).astype(np.int64)
    perm = rng.permutation(40)
    np.savez(tmp_path / "e1.npz", features=x, labels=y)
    np.savez(tmp_path / "e2.npz", features=x[perm], labels=y[perm])
    with running_enclave(c, tmp_path / "st") as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            o.upload(tmp_path / "e1.npz", dataset="cohort")
            o.upload(tmp_path / "e2.npz", dataset="cohort")
    with PartyMemory(home) as mem:
        assert mem.granted(dataset_key("cohort")) == 8.0


@pytest.mark.parametrize("approver", [True, False])
def test_a_withdrawal_gives_epsilon_back_only_to_a_party_every_release_needs(
    tmp_path: Path, approver: bool
) -> None:
    """Withdrawn before training, the shard was never trained on in the journal this party
    saw. A host that restores the state from before the withdrawal could still train on it;
    only a party whose approval every release needs refuses that fork. So only its ledger
    gives the ε back; another's keeps counting it (status withdrawn-counted)."""
    release = {"recipients": ["research-lab"], "metrics": ["steps"]}
    if approver:
        release["approvals_required_from"] = ["hospital-a"]  # type: ignore[assignment]
    c = make_consortium(
        tmp_path / "c", privacy=DP, training=TRAINING, release=release, start={"auto_start": False}
    )
    home = tmp_path / "home-a"
    shard = write_shard(tmp_path / "a.npz", rows=40, seed=0)
    with running_enclave(c, tmp_path / "st") as (address, _):
        with session(DataOwner, address, c, "hospital-a", state_dir=home) as o:
            o.upload(shard)
            o.withdraw("a")
    with PartyMemory(home) as mem:
        (g,) = mem.grants(file_sha256(shard)[0])
        assert g.status == ("withdrawn" if approver else "withdrawn-counted")
        assert mem.granted(file_sha256(shard)[0]) == (0.0 if approver else 4.0)
