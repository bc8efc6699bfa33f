"""Broken setups that look alive: ``cctrain-enclave serve`` (and ``cctrain enclave serve``)
refuses to start, with exit status 2 and one clear line on stderr, on every setup it could not
train with; and a trainer that fails to import at training time anyway fails the run (the
journal says so, ``watch`` ends), instead of "training" forever.

Each refusal runs the real command in a fresh interpreter; "torch missing" hides torch, Opacus
and safetensors from that interpreter's imports (nothing is uninstalled).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from cctrain.crypto.dsse import Envelope
from cctrain.policy import PAYLOAD_TYPES
from tests.cli_process import assert_clean_error, cctrain, cctrain_enclave, environment
from tests.consortium import PROVIDERS, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import make_owner, write_shard

GOOD_MODEL = b"""
from torch import nn


def build_model(shape, classes):
    return nn.Sequential(nn.Linear(shape[0], 8), nn.Tanh(), nn.Linear(8, classes))
"""

WRONG_SHAPE_MODEL = b"""
from torch import nn


def build_model(shape, classes):
    return nn.Linear(7, classes)  # the policy's rows have 4 features
"""


def _custom_consortium(root: Path, source: bytes) -> Consortium:
    return make_consortium(
        root,
        training={
            "model": {"name": "custom", "source_sha256": hashlib.sha256(source).hexdigest()},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": 16,
        },
    )


def serve(
    tmp: Path,
    policy: Path,
    state: Path,
    *extra: str,
    entry: str = "cctrain-enclave",
    hide_trainer: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``cctrain-enclave serve`` (or ``cctrain enclave serve``) on the simulated platform."""
    args = ["serve", "--policy", str(policy), "--state-dir", str(state), "--platform", "simulated"]
    run = cctrain_enclave if entry == "cctrain-enclave" else partial(cctrain, "enclave")
    return run(*args, *extra, cwd=tmp, env=environment(tmp / "home"), hide_trainer=hide_trainer)


@pytest.fixture
def consortium(tmp_path: Path) -> Consortium:
    return make_consortium(tmp_path / "c")


@pytest.mark.parametrize("entry", ["cctrain-enclave", "cctrain"])
def test_refuses_to_start_without_the_trainer(
    tmp_path: Path, consortium: Consortium, entry: str
) -> None:
    state = tmp_path / "state"
    proc = serve(tmp_path, consortium.policy_path, state, entry=entry, hide_trainer=True)
    line = assert_clean_error(proc, 2)
    assert "the trainer cannot be loaded: importing torch failed" in line
    assert "pip install 'cctrain[enclave]'" in line
    assert "listening" not in proc.stdout
    assert not (state / "journal.log").exists()  # no run: nothing anyone could upload to


def _unsigned_toml(tmp: Path, c: Consortium) -> Path:
    path = tmp / "policy.toml"
    path.write_text('version = 1\nname = "not signed"\n')
    return path


def _incomplete(tmp: Path, c: Consortium) -> Path:
    doc = json.loads(c.policy_path.read_text())
    doc["signatures"] = doc["signatures"][:2]
    path = tmp / "incomplete.signed.json"
    path.write_text(json.dumps(doc))
    return path


def _malformed(tmp: Path, c: Consortium) -> Path:
    path = tmp / "malformed.signed.json"
    path.write_text(c.policy_path.read_text()[:-20])
    return path


def _signed_but_invalid(tmp: Path, c: Consortium) -> Path:
    payload = json.dumps({"version": 1, "name": "fields missing"}).encode()
    env = Envelope(PAYLOAD_TYPES["json"], payload).sign(
        "hospital-a", c.keys["hospital-a"].signing_key
    )
    path = tmp / "invalid.signed.json"
    path.write_text(env.to_json())
    return path


@pytest.mark.parametrize(
    ("make_policy", "needle"),
    [
        (_unsigned_toml, "policy.toml is not a signed policy (sign it first"),
        (_incomplete, "policy is not fully signed and valid"),
        (_malformed, "is not a signed policy: not a DSSE envelope"),
        (_signed_but_invalid, "invalid policy"),
    ],
    ids=["unsigned", "incomplete", "malformed", "fields-missing"],
)
def test_refuses_a_policy_it_cannot_use(
    tmp_path: Path,
    consortium: Consortium,
    make_policy: Callable[[Path, Consortium], Path],
    needle: str,
) -> None:
    proc = serve(tmp_path, make_policy(tmp_path, consortium), tmp_path / "state")
    assert needle in assert_clean_error(proc, 2)


def _a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("")
    return tmp / "a-file"


def _under_a_file(tmp: Path) -> Path:
    return _a_file(tmp) / "state"


def _not_creatable(tmp: Path) -> Path:
    return Path("/proc/cctrain-no-such-dir/state")  # nobody, root included, creates this


@pytest.mark.parametrize(
    "make_state",
    [_a_file, _under_a_file, _not_creatable],
    ids=["is-a-file", "under-a-file", "not-creatable"],
)
def test_refuses_an_unusable_state_directory(
    tmp_path: Path, consortium: Consortium, make_state: Callable[[Path], Path]
) -> None:
    state = make_state(tmp_path)
    line = assert_clean_error(serve(tmp_path, consortium.policy_path, state), 2)
    assert f"the state directory {state} cannot be used" in line


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a read-only directory ('not-creatable' covers it)"
)
def test_refuses_a_state_directory_it_cannot_write(tmp_path: Path, consortium: Consortium) -> None:
    state = tmp_path / "read-only"
    state.mkdir(mode=0o500)
    try:
        line = assert_clean_error(serve(tmp_path, consortium.policy_path, state), 2)
    finally:
        state.chmod(0o700)
    assert "cannot be used: Permission denied" in line


def test_refuses_a_state_directory_locked_by_another_process(
    tmp_path: Path, consortium: Consortium
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with open(state / "LOCK", "a") as held:  # as a running enclave holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = assert_clean_error(serve(tmp_path, consortium.policy_path, state), 2)
    assert "is in use by another enclave process" in line


def test_refuses_a_custom_model_source_that_does_not_match(tmp_path: Path) -> None:
    c = _custom_consortium(tmp_path / "c", GOOD_MODEL)
    other = tmp_path / "model.py"
    other.write_bytes(GOOD_MODEL + b"# edited\n")
    line = assert_clean_error(
        serve(tmp_path, c.policy_path, tmp_path / "state", "--model-source", str(other)), 2
    )
    assert f"custom model source {other} has SHA-256" in line
    line = assert_clean_error(serve(tmp_path, c.policy_path, tmp_path / "state"), 2)
    assert "pass --model-source" in line


def test_refuses_a_training_plan_that_cannot_run(tmp_path: Path) -> None:
    c = _custom_consortium(tmp_path / "c", WRONG_SHAPE_MODEL)
    source = tmp_path / "model.py"
    source.write_bytes(WRONG_SHAPE_MODEL)
    proc = serve(tmp_path, c.policy_path, tmp_path / "state", "--model-source", str(source))
    line = assert_clean_error(proc, 2)
    assert "the policy's training plan cannot run; refusing to start" in line
    assert "a training step on synthetic data failed" in proc.stderr
    assert not (tmp_path / "state" / "journal.log").exists()


def test_refuses_a_port_it_cannot_listen_on(tmp_path: Path, consortium: Consortium) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(tmp_path, consortium.policy_path, tmp_path / "state", "--port", str(port))
    line = assert_clean_error(proc, 2)
    assert f"cannot listen on 127.0.0.1:{port}" in line


_TEE_INTERFACES = ("/sys/kernel/config/tsm/report", "/dev/sev-guest")


@pytest.mark.skipif(
    any(Path(p).exists() for p in _TEE_INTERFACES), reason="this host has an SEV-SNP interface"
)
def test_refuses_a_platform_this_host_does_not_have(tmp_path: Path, consortium: Consortium) -> None:
    args = ["serve", "--policy", str(consortium.policy_path), "--state-dir", str(tmp_path / "s")]
    proc = cctrain_enclave(*args, "--platform", "sev-snp", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: no evidence interface for SEV-SNP found")
    assert "Traceback" not in proc.stderr


def test_a_trainer_that_fails_to_import_at_training_time_fails_the_run(
    tmp_path: Path, consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_enclave(consortium, tmp_path / "state") as (address, _app):
        # From here on, importing the trainer fails (as a broken install would).
        monkeypatch.setitem(sys.modules, "cctrain_enclave.trainer", None)
        for i, pid in enumerate(PROVIDERS):
            with make_owner(address, consortium, pid) as owner:
                owner.upload(write_shard(tmp_path / f"{pid}.npz", seed=i), state_dir=tmp_path)
        with make_owner(address, consortium) as watcher:
            events = list(watcher.watch(timeout=120))  # ends: the run does not train forever
            status = watcher.status()
    assert events[-1].phase == "failed", events
    assert status.phase == "failed"
    assert status.detail.startswith("run failed while loading the trainer")
