"""Properties of the journal's replay over a real journal (hypothesis picks the edits)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cctrain.journal import JournalError, RunState, read_journal_file, replay, unframe
from cctrain.policy import Policy
from tests.state.conftest import FinishedRun

SETTINGS = settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _replay_bytes(data: bytes, policy: Policy) -> RunState:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "journal.log"
        path.write_bytes(data)
        return replay(read_journal_file(path), policy)


@SETTINGS
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_every_flipped_bit_anywhere_is_refused(
    finished_run: FinishedRun, position: int, bit: int
) -> None:
    data = bytearray((finished_run.state / "journal.log").read_bytes())
    data[position % len(data)] ^= 1 << bit
    try:
        _replay_bytes(bytes(data), finished_run.consortium.signed.policy)
    except JournalError:
        return
    raise AssertionError(f"a flipped bit at {position % len(data)} replayed")


@SETTINGS
@given(cut=st.integers(min_value=1))
def test_a_cut_journal_is_refused_or_is_a_whole_prefix(finished_run: FinishedRun, cut: int) -> None:
    """Cut anywhere: refused, unless the cut falls between entries; then it is a shorter,
    valid journal (whole-entry rollback is for the parties to detect: the rollback issue)."""
    data = (finished_run.state / "journal.log").read_bytes()
    n = cut % len(data)
    raws, end = unframe(data[:n])
    try:
        state = _replay_bytes(data[:n], finished_run.consortium.signed.policy)
    except JournalError:
        assert end != n or not raws
        return
    assert end == n and state.head.seq == len(raws) - 1


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_journal_errors(finished_run: FinishedRun, data: bytes) -> None:
    try:
        _replay_bytes(data, finished_run.consortium.signed.policy)
    except JournalError:
        return
    raise AssertionError("arbitrary bytes replayed as a journal")
