"""Crash safety: sealed atomic checkpoints, resume after SIGKILL, stop and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cctrain_enclave.trainer import (
    CheckpointError,
    CheckpointStore,
    TrainingStopped,
    train,
)

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _store(directory: Path, key: bytes, every: int = 3) -> CheckpointStore:
    aead = AESGCM(key)

    def seal(data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, data, b"cctrain-checkpoint")

    def unseal(blob: bytes) -> bytes:
        return aead.decrypt(blob[:12], blob[12:], b"cctrain-checkpoint")

    return CheckpointStore(directory, seal, unseal, every_steps=every)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(384, 10)).astype(np.float32)
    y = (x @ rng.normal(size=(10, 3))).argmax(1).astype(np.int64)
    return x, y


TRAINING = {
    "task": "classification",
    "model": {"name": "mlp", "params": {"hidden": [16], "dropout": 0.1}},
    "optimizer": {"name": "adam", "lr": 0.01},
    "epochs": 3,
    "batch_size": 32,
    "seed": 5,
}
PRIVACY = {
    "enabled": True,
    "target_epsilon": 4.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "accountant": "rdp",
    "noise_source": "insecure-fast",  # reproducible, so resumed weights can be compared
    "grad_sample_mode": "auto",
}


def _run(store, *, progress=None, stop=None, privacy=PRIVACY):
    x, y = _data()
    return train(
        x,
        y,
        num_classes=3,
        training=TRAINING,
        privacy=privacy,
        simulated_platform=True,
        checkpoint=store,
        progress=progress,
        stop=stop,
        progress_every=1,
    )


def test_checkpoint_is_sealed_and_roundtrips(tmp_path):
    store = _store(tmp_path, AESGCM.generate_key(bit_length=256))
    state = {"model": {"w": torch.arange(6.0)}, "history": [[1.0, 0.1, 3]], "rng": {"s": 2**100}}
    store.save(state)
    raw = store.path.read_bytes()
    assert b"history" not in raw  # sealed, not plain torch.save bytes
    loaded = store.load()
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["history"] == [[1.0, 0.1, 3]] and loaded["rng"]["s"] == 2**100
    assert [p.name for p in tmp_path.iterdir()] == [CheckpointStore.FILENAME]  # no temp left


def test_tampered_or_foreign_checkpoint_is_refused(tmp_path):
    key = AESGCM.generate_key(bit_length=256)
    store = _store(tmp_path, key)
    store.save({"a": 1})
    blob = bytearray(store.path.read_bytes())
    blob[20] ^= 1
    store.path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="unsealed"):
        store.load()
    store.save({"a": 1})
    with pytest.raises(CheckpointError):
        _store(tmp_path, AESGCM.generate_key(bit_length=256)).load()


def test_checkpoint_of_another_run_is_refused(tmp_path):
    store = _store(tmp_path, AESGCM.generate_key(bit_length=256))
    _run(store, privacy=PRIVACY | {"target_epsilon": 5.0})
    with pytest.raises(CheckpointError, match="different training run"):
        _run(store)


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference = _run(None)
    store = _store(tmp_path, AESGCM.generate_key(bit_length=256), every=1000)
    stop = threading.Event()
    seen = []

    def progress(event):
        seen.append(event.step)
        if event.step == 17:  # mid-epoch, between periodic checkpoints
            stop.set()

    with pytest.raises(TrainingStopped):
        _run(store, progress=progress, stop=stop)
    resumed_steps = []
    result = _run(store, progress=lambda e: resumed_steps.append(e.step))
    assert resumed_steps[0] == 18  # continued, not restarted
    assert result.dp_certificate == reference.dp_certificate
    assert result.metrics == reference.metrics
    for name, tensor in reference.state_dict.items():
        torch.testing.assert_close(result.state_dict[name], tensor, atol=1e-6, rtol=1e-6)
    # A finished run's checkpoint makes a rerun return the same result without training more.
    again = []
    assert _run(store, progress=again.append).dp_certificate == reference.dp_certificate
    assert again == []


CHILD = r"""
import json, os, sys, time
import numpy as np, torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
sys.path.insert(0, sys.argv[1])
import test_trainer_checkpoint as t
torch.set_num_threads(1)
store = t._store(__import__("pathlib").Path(sys.argv[2]), bytes.fromhex(sys.argv[3]), every=4)
steps = []
def progress(event):
    steps.append(event.step)
    time.sleep(float(sys.argv[4]))  # slow enough for the parent to kill us mid-run
result = t._run(store, progress=progress)
torch.save(result.state_dict, sys.argv[5])
print(json.dumps({"first_step": steps[0] if steps else None, "cert": result.dp_certificate,
                  "metrics": result.metrics}))
"""


def _child(directory, key, delay, out):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(Path(__file__).parent),
            str(directory),
            key.hex(),
            str(delay),
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    key = AESGCM.generate_key(bit_length=256)
    crash_dir, clean_dir = tmp_path / "crash", tmp_path / "clean"
    victim = _child(crash_dir, key, 0.05, tmp_path / "victim.pt")
    path = crash_dir / CheckpointStore.FILENAME
    deadline = time.monotonic() + 120
    while not path.exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # a few more steps past the checkpoint, then crash hard
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL

    resumed = _child(crash_dir, key, 0.0, tmp_path / "resumed.pt")
    clean = _child(clean_dir, key, 0.0, tmp_path / "clean.pt")
    out_resumed, err_resumed = resumed.communicate(timeout=300)
    out_clean, err_clean = clean.communicate(timeout=300)
    assert resumed.returncode == 0, err_resumed
    assert clean.returncode == 0, err_clean
    r, c = json.loads(out_resumed), json.loads(out_clean)
    assert c["first_step"] == 1
    assert r["first_step"] > 1  # the step counter continued from the checkpoint
    assert r["cert"]["steps"] == c["cert"]["steps"] == 3 * 12
    assert r["cert"]["epsilon"] == c["cert"]["epsilon"]
    assert r["metrics"]["steps"] == c["metrics"]["steps"]
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)
    b = torch.load(tmp_path / "clean.pt", weights_only=True)
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-6)
