"""``cctrain audit`` and the SDK's audit: any party verifies the journal offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cctrain.cli import main
from cctrain.client import DataOwner
from cctrain.journal import read_journal_file
from tests.state.conftest import FinishedRun, session

KEY_FILE = "hospital-b.key"
# The CLI warns on every use of simulated evidence (its tests elsewhere check that it does).
pytestmark = pytest.mark.filterwarnings("ignore::cctrain.client.SimulatedEvidenceWarning")


def _cli(run: FinishedRun, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    if not (tmp_path / KEY_FILE).exists():
        run.consortium.keys["hospital-b"].save(tmp_path)
    result = CliRunner().invoke(
        main,
        ["audit", "--policy", str(run.consortium.policy_path), "--allow-simulated", *args],
    )
    return result.exit_code, result.stdout, result.stderr


def test_audit_a_finished_run_from_the_enclave(finished_run: FinishedRun, tmp_path: Path) -> None:
    code, out, err = _cli(
        finished_run,
        tmp_path,
        "--enclave",
        finished_run.address,
        "--key",
        str(tmp_path / KEY_FILE),
        "--save",
        str(tmp_path / "journal.bin"),
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("verified: ")
    history = "\n".join(lines[2:])
    for text in (
        "genesis",
        "shard accepted  hospital-a/hospital-a: 50 rows",
        "uploads closed  3 shards; started by the start rule",
        "checkpoint      step ",
        "manifest built  model ",
        "approval        by hospital-a",
        "released        recipients may fetch; approved by hospital-a",
    ):
        assert text in history, history
    assert lines[-1] == "phase: released"
    assert "SIMULATED" in err  # the simulated root is announced, loudly

    # The saved journal verifies offline, to the same head, in JSON for machines.
    code, out, err = _cli(
        finished_run, tmp_path, "--journal", str(tmp_path / "journal.bin"), "--format", "json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verified"] is True and doc["phase"] == "released"
    assert doc["policy_digest"] == finished_run.consortium.signed.digest.hex()
    entries = doc["entries"]
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert entries[-1]["kind"] == "released" and entries[-1]["approved_by"] == ["hospital-a"]
    assert len(entries[0]["enclave_signing_key"]) == 64  # hashes and keys in full
    assert doc["head"]["seq"] == entries[-1]["seq"]


def test_the_hosts_own_copy_of_the_journal_audits(
    finished_run: FinishedRun, tmp_path: Path
) -> None:
    code, out, err = _cli(
        finished_run, tmp_path, "--journal", str(finished_run.state / "journal.log")
    )
    assert code == 0, err
    assert out.splitlines()[-1] == "phase: released"


def test_a_tampered_journal_fails_the_audit(finished_run: FinishedRun, tmp_path: Path) -> None:
    data = bytearray((finished_run.state / "journal.log").read_bytes())
    records = read_journal_file(finished_run.state / "journal.log")
    k = next(r.seq for r in records if r.kind == "approval")
    offset = sum(4 + len(r.raw) for r in records[:k]) + 4 + len(records[k].raw) // 2
    data[offset] ^= 0x01
    tampered = tmp_path / "tampered.log"
    tampered.write_bytes(bytes(data))
    code, out, err = _cli(finished_run, tmp_path, "--journal", str(tampered))
    assert code == 1
    assert f"error: journal entry #{k}" in err
    assert out == ""


def test_simulated_evidence_needs_the_opt_in(finished_run: FinishedRun, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "audit",
            "--policy",
            str(finished_run.consortium.policy_path),
            "--journal",
            str(finished_run.state / "journal.log"),
        ],
    )
    assert result.exit_code == 1
    assert "simulated; refusing without --allow-simulated" in result.stderr


def test_audit_needs_exactly_one_source(finished_run: FinishedRun, tmp_path: Path) -> None:
    code, _out, err = _cli(finished_run, tmp_path)
    assert code == 2 and "exactly one of --enclave" in err


def test_sdk_audit_matches_the_status_head(finished_run: FinishedRun) -> None:
    c = finished_run.consortium
    with session(DataOwner, finished_run.address, c, "hospital-c") as owner:
        report = owner.audit()
        status = owner.status()
        receipts = owner.receipts()
    assert report.state.head.seq == status.journal_seq
    assert report.state.head.sha256 == bytes(status.journal_head_sha256)
    assert report.state.phase == "released"
    # The party's receipt names the journal entry that records it.
    [mine] = receipts
    entry = report.records[mine.journal_seq]
    assert entry.kind == "shard_accepted"
    assert entry.entry.prev_sha256 == mine.journal_prev_sha256
    assert entry.entry.shard_accepted.receipt.body == mine.body
