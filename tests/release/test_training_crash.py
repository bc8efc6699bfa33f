"""SIGKILL the enclave process mid-training; the restarted enclave resumes and ε counts every step."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from opacus.accountants import RDPAccountant

from cctrain.client import DataOwner, Recipient, SimulatedEvidenceWarning
from cctrain.journal import JournalError, read_journal_file, replay
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium
from tests.ingest.conftest import make_owner, write_shard
from tests.ingest.test_resume_and_crash import _start_enclave


def test_sigkill_during_training_then_restart_resumes(tmp_path: Path) -> None:
    privacy = {"enabled": True, "target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
    training = {
        "model": {"name": "mlp", "params": {"hidden": [32]}},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "epochs": 40,
        "batch_size": 16,
    }
    c = make_consortium(tmp_path / "c", privacy=privacy, training=training)
    state = tmp_path / "state"
    log = tmp_path / "enclave.log"
    enclave = _start_enclave(c, state, log)
    address = enclave.address
    checkpoints = state / "checkpoints"
    try:
        for i, pid in enumerate(PROVIDERS):
            owner = make_owner(address, c, pid)
            owner.upload(write_shard(tmp_path / f"{pid}.npz", seed=i), state_dir=tmp_path / pid)
            owner.close()
        deadline = time.time() + 120
        while not _journaled_checkpoint(state, c) and time.time() < deadline:
            time.sleep(0.005)
        assert _journaled_checkpoint(state, c), log.read_text()
        enclave.kill()
        assert not any((state / "release").iterdir())  # killed before the end
        view = replay(read_journal_file(state / "journal.log"), c.signed.policy)
        assert view.phase == "training" and view.checkpoint is not None
        assert (checkpoints / f"{view.checkpoint.sha256.hex()}.sealed").exists()
        eps_at_kill = view.epsilon_spent

        enclave = _start_enclave(c, state, log)
        address = enclave.address
        watcher: DataOwner = make_owner(address, c, "hospital-a")
        events = list(watcher.watch(timeout=300))
        watcher.close()
        assert events[-1].phase == "released", events[-1]
        progress = [e for e in events if e.total_steps]
        if progress:  # the restarted run continued, it did not start over
            assert progress[0].step > 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulatedEvidenceWarning)
            recipient = Recipient(
                address, policy=c.signed, key=c.keys[RECIPIENT], allow_simulated=True
            )
        cert = recipient.fetch_model().release.dp_certificate
        recipient.close()
        assert cert is not None
        assert cert["steps"] == cert["steps_planned"] and not cert["stopped_early"]
        # ε covers every step before and after the crash: recompute it independently.
        acc = RDPAccountant()
        acc.history = [(cert["noise_multiplier"], cert["sample_rate"], cert["steps"])]
        assert abs(acc.get_epsilon(delta=cert["delta"]) - cert["epsilon"]) < 1e-9
        assert cert["epsilon"] <= 4.0
        assert eps_at_kill is not None and cert["epsilon"] >= eps_at_kill  # nothing under-counted
        assert "resuming training after a restart" in log.read_text()
    finally:
        enclave.stop(grace_s=60)


def _journaled_checkpoint(state: Path, c: Consortium) -> bool:
    """Whether the journal (read as the host can read it) records a checkpoint yet."""
    try:
        view = replay(read_journal_file(state / "journal.log"), c.signed.policy)
    except (OSError, JournalError):  # not there yet, or caught mid-append
        return False
    return view.checkpoint is not None
