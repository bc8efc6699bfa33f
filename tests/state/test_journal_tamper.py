"""The host edits the journal of a finished run: the enclave refuses to start, naming the entry.

Every test starts from a byte-exact copy of a real enclave's state directory (a DP run with a
provider's approval), changes the journal as an operator with the disk could, and starts the
enclave on it. The unchanged copy starts and serves its release: that is the control.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cctrain.client import Recipient
from cctrain.journal import parse_record
from cctrain.protocol import JOURNAL_SIG_TAG
from cctrain.v1 import journal_pb2 as jpb
from tests.consortium import RECIPIENT, running_enclave
from tests.state.conftest import (
    FinishedRun,
    journal_records,
    kinds,
    refused_start,
    session,
    write_journal,
)

ENTRY_KINDS = (
    "genesis",
    "shard_accepted",
    "uploads_closed",
    "checkpoint",
    "manifest",
    "approval",
    "released",
)


@pytest.fixture
def copy(finished_run: FinishedRun, tmp_path: Path) -> Path:
    return finished_run.copy_state(tmp_path / "state")


def test_the_finished_run_has_every_kind_of_entry(finished_run: FinishedRun) -> None:
    k = kinds(journal_records(finished_run.state))
    assert k[:5] == [
        "genesis",
        "shard_accepted",
        "shard_accepted",
        "shard_accepted",
        "uploads_closed",
    ]
    assert k[-3:] == ["manifest", "approval", "released"]
    assert set(k[5:-3]) == {"checkpoint"}


def test_an_untouched_copy_starts_and_releases(finished_run: FinishedRun, copy: Path) -> None:
    c = finished_run.consortium
    with running_enclave(c, copy) as (address, app):
        assert app.state.view.phase == "released"
        with session(Recipient, address, c, RECIPIENT) as r:
            assert r.fetch_model().release.approved_by == ("hospital-a",)


@pytest.mark.parametrize("kind", ENTRY_KINDS)
@pytest.mark.parametrize("where", ["entry", "signature"])
def test_one_flipped_byte(finished_run: FinishedRun, copy: Path, kind: str, where: str) -> None:
    raws = journal_records(copy)
    k = kinds(raws).index(kind)
    record = bytearray(raws[k])
    # SignedJournalEntry is (entry, signature): the middle byte lies in the entry bytes,
    # the last byte in the signature.
    record[len(record) // 2 if where == "entry" else len(record) - 1] ^= 0x01
    raws[k] = bytes(record)
    write_journal(copy, raws)
    refused_start(finished_run.consortium, copy, rf"journal entry #{k}\b")


def test_a_flipped_length_field_in_the_middle(finished_run: FinishedRun, copy: Path) -> None:
    data = bytearray((copy / "journal.log").read_bytes())
    raws = journal_records(copy)
    offset = sum(4 + len(r) for r in raws[:2])  # the length field of entry #2
    data[offset + 3] ^= 0x01
    (copy / "journal.log").write_bytes(bytes(data))
    refused_start(finished_run.consortium, copy, r"journal entry #2\b")


def test_a_removed_entry(finished_run: FinishedRun, copy: Path) -> None:
    raws = journal_records(copy)
    del raws[2]  # the second shard: the start rule and the shard set would change
    write_journal(copy, raws)
    refused_start(finished_run.consortium, copy, r"journal entry #3 .*comes after entry #1")


def test_reordered_entries(finished_run: FinishedRun, copy: Path) -> None:
    raws = journal_records(copy)
    raws[1], raws[2] = raws[2], raws[1]
    write_journal(copy, raws)
    refused_start(finished_run.consortium, copy, r"journal entry #2 .*comes after entry #0")


def test_a_duplicated_entry(finished_run: FinishedRun, copy: Path) -> None:
    raws = journal_records(copy)
    k = kinds(raws).index("approval")
    raws.insert(k + 1, raws[k])
    write_journal(copy, raws)
    refused_start(finished_run.consortium, copy, rf"journal entry #{k}\b.*comes after entry #{k}")


def test_an_entry_signed_by_another_key(finished_run: FinishedRun, copy: Path) -> None:
    """The host rewrites an entry (here: the approval) and signs it with a key of its own."""
    raws = journal_records(copy)
    k = kinds(raws).index("approval")
    rec = parse_record(raws[k], position=k)
    rogue = Ed25519PrivateKey.generate()
    raws[k] = jpb.SignedJournalEntry(
        entry=rec.entry_bytes, signature=rogue.sign(JOURNAL_SIG_TAG + rec.entry_bytes)
    ).SerializeToString()
    write_journal(copy, raws)
    refused_start(
        finished_run.consortium,
        copy,
        rf"journal entry #{k} \(approval\): not signed by this journal",
    )


def test_an_approval_spliced_from_another_run(finished_run: FinishedRun, copy: Path) -> None:
    """Another run of the same policy, where the same provider approved: its genuine,
    enclave-signed approval entry does not belong to this journal."""
    ours = journal_records(copy)
    theirs = journal_records(finished_run.second_state)
    k = kinds(ours).index("approval")
    spliced = kinds(theirs).index("approval")
    ours[k] = theirs[spliced]
    write_journal(copy, ours)
    refused_start(finished_run.consortium, copy, rf"journal entry #{k}\b.*chain broken")


def test_a_whole_journal_of_another_run_with_this_runs_files(
    finished_run: FinishedRun, copy: Path
) -> None:
    """Same policy, same code, but the other run's journal over this run's keys and files."""
    (copy / "journal.log").write_bytes((finished_run.second_state / "journal.log").read_bytes())
    refused_start(finished_run.consortium, copy, "sealed identity does not open")


def test_garbage_appended_as_a_complete_record(finished_run: FinishedRun, copy: Path) -> None:
    raws = journal_records(copy)
    n = len(raws)
    write_journal(copy, [*raws, b"\x0a\x03abc\x12\x02zz"])
    refused_start(finished_run.consortium, copy, rf"journal entry #{n}\b")


def test_a_torn_final_append_is_cut_off(
    finished_run: FinishedRun, copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-append leaves a short last record: it was never acknowledged, so the
    enclave cuts it off and goes on from the entry before (here it re-appends the release
    of the approved manifest). Cutting whole entries is a rollback: the rollback issue."""
    raws = journal_records(copy)
    released = parse_record(raws[-1], position=len(raws) - 1)
    data = (copy / "journal.log").read_bytes()
    (copy / "journal.log").write_bytes(data[:-10])
    c = finished_run.consortium
    with caplog.at_level(logging.WARNING, logger="cctrain.enclave.state"):
        with running_enclave(c, copy) as (_address, app):
            view = app.state.view
            assert view.phase == "released"
            assert view.head.seq == released.seq  # the release was journaled again
            assert view.release_record is not None
            assert view.release_record.entry.released.manifest_sha256 == (
                released.entry.released.manifest_sha256
            )
    assert "incomplete append" in caplog.text


def test_a_missing_identity(finished_run: FinishedRun, copy: Path) -> None:
    (copy / "identity.sealed").unlink()
    refused_start(finished_run.consortium, copy, "identity.sealed is missing")


def test_deleted_release_files(finished_run: FinishedRun, copy: Path) -> None:
    for f in (copy / "release").rglob("*.sealed"):
        f.unlink()
    refused_start(finished_run.consortium, copy, f"sealed release for '{RECIPIENT}'.* is missing")


@pytest.mark.parametrize(
    "name",
    [
        "journal.log",
        "identity.sealed",
        "LOCK",
        "shards",
        "uploads",
        "release",
        "simulated-platform",
    ],
)
def test_a_state_file_replaced_by_something_unreadable(
    finished_run: FinishedRun, copy: Path, name: str
) -> None:
    """A directory where a file belongs (or the reverse): a clear refusal, not a traceback."""
    import shutil

    target = copy / name
    if target.is_dir():
        shutil.rmtree(target)
        target.write_bytes(b"not a directory")
    else:
        target.unlink(missing_ok=True)
        target.mkdir()
    refused_start(finished_run.consortium, copy, "cannot be used|sealed release .* is missing")


def test_a_party_reads_no_journal_beyond_its_bound(finished_run: FinishedRun) -> None:
    """``iter_pages`` (what every SDK session fetches the journal with) stops at its byte
    bound instead of holding whatever a source serves; the real journal reads in full."""
    from cctrain.errors import JournalError
    from cctrain.journal import iter_pages

    raws = journal_records(finished_run.state)

    def pages(from_seq: int) -> tuple[list[bytes], int]:
        return raws[from_seq : from_seq + 2], len(raws) - 1

    assert list(iter_pages(pages)) == raws
    total = sum(len(r) for r in raws)
    with pytest.raises(JournalError, match=f"longer than {total - 1} bytes"):
        list(iter_pages(pages, max_bytes=total - 1))

    def endless(from_seq: int) -> tuple[list[bytes], int]:  # a head that keeps moving away
        return [raws[1]], from_seq + 10

    with pytest.raises(JournalError, match="the journal is longer than"):
        list(iter_pages(endless, max_bytes=100 * len(raws[1])))
