"""The host kills a worker mid-run: rank 0 does not fail the run (the host could fail any run
that way) but pauses it at its last checkpoint; the host restarts rank 0 on the same state
directory and starts a new worker; the run resumes from the checkpoint, attests the new
cluster afresh, and releases a model whose ε covers every step taken before the kill."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from cctrain.client import DataOwner, Recipient
from tests.cluster.conftest import spawn_worker, worker_argv
from tests.consortium import RECIPIENT, make_consortium, running_enclave
from tests.release.test_release import _quiet, upload_all

pytest.importorskip("torch")

DP = {
    "enabled": True,
    "target_epsilon": 8.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "noise_source": "csprng",
    "grad_sample_mode": "fast",
}


def _worker(policy_path: Path, port: int, state: Path) -> subprocess.Popen[str]:
    return spawn_worker(worker_argv(policy_path, 1, port, state))


def test_a_killed_worker_pauses_the_run_and_a_restart_resumes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = make_consortium(
        tmp_path / "c",
        privacy=DP,
        training={
            "model": {"name": "logreg"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 6,
            "batch_size": 16,
        },
        cluster={"ranks": 2, "timeout_s": 30},
    )
    state = tmp_path / "state"
    caplog.set_level(logging.INFO)
    with running_enclave(c, state, cluster_listen=("127.0.0.1", 0)) as (address, app):
        port = int(app.cluster_address.rsplit(":", 1)[1])
        worker = _worker(c.policy_path, port, tmp_path / "rank1")
        try:
            upload_all(address, c, tmp_path)
            with _quiet(DataOwner, address, c, "hospital-a") as owner:
                for ev in owner.watch(timeout=120):
                    if ev.step > 40:  # past the first epoch's checkpoint
                        worker.kill()  # the host kills rank 1 mid-run
                        break
            worker.communicate(timeout=30)
            run = app._opened.run
            run._thread.join(timeout=60)  # rank 0 notices and pauses
            assert not run._thread.is_alive()
            with _quiet(DataOwner, address, c, "hospital-a") as owner:
                status = owner.status()
            assert status.phase == "training"  # not failed: paused at its checkpoint
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert "training paused at training" in caplog.text
    # The host restarts rank 0 on the same state and a fresh worker: the run resumes.
    with running_enclave(c, state, cluster_listen=("127.0.0.1", 0)) as (address, app):
        port = int(app.cluster_address.rsplit(":", 1)[1])
        worker = _worker(c.policy_path, port, tmp_path / "rank1b")
        try:
            with _quiet(DataOwner, address, c, "hospital-a") as owner:
                assert owner.wait_for_phase(("released", "failed"), timeout=180) == "released"
            with _quiet(Recipient, address, c, RECIPIENT) as r:
                model = r.fetch_model()  # both ranks' evidence re-verified
            out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0, out[-2000:]
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    cert = model.manifest["dp_certificate"]
    assert cert["epsilon"] <= 8.0
    assert (
        cert["steps"] == model.manifest["dp_certificate"]["steps_planned"] or cert["stopped_early"]
    )
    assert "resuming training after a restart" in caplog.text
