"""training.device: CPU results unchanged, CUDA refused where there is none (at start, not at
the first step), and the policy's rule that a GPU outside the TEE is not trusted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cctrain.crypto.keys import PartyKeys
from cctrain.errors import CctrainError, PolicyError
from cctrain.policy import parse_policy
from tests.cli_process import assert_clean_error
from tests.consortium import PROVIDERS, RECIPIENT, make_consortium, policy_document
from tests.enclave.test_startup_checks import serve

torch = pytest.importorskip("torch")
from cctrain_enclave.trainer import train  # noqa: E402
from cctrain_enclave.trainer.train import resolve_device  # noqa: E402

NO_CUDA = not torch.cuda.is_available()
TRAINING = {
    "model": {"name": "mlp", "params": {"hidden": [8]}},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 1,
    "batch_size": 16,
    "seed": 2,
}


def _train(**extra: object) -> object:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return train(
        x,
        y,
        num_classes=2,
        training=TRAINING | extra,
        privacy={"enabled": False},
        simulated_platform=True,
        checkpoint=None,
        progress=None,
    )


def test_cpu_is_the_default_and_bit_for_bit_the_same() -> None:
    a, b = _train(), _train(device="cpu")
    assert a.device == b.device == "cpu"  # type: ignore[attr-defined]
    for k, v in a.state_dict.items():  # type: ignore[attr-defined]
        assert torch.equal(v, b.state_dict[k])  # type: ignore[attr-defined]


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: nothing to refuse")
def test_auto_is_the_cpu_here_and_cuda_is_refused() -> None:
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("auto", allow_gpu=False).type == "cpu"
    with pytest.raises(CctrainError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(CctrainError, match="no CUDA device"):
        _train(device="cuda")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: nothing to refuse")
def test_enclave_refuses_to_start_with_cuda_and_no_gpu(tmp_path: Path) -> None:
    training = {k: v for k, v in TRAINING.items() if k != "seed"} | {"device": "cuda"}
    c = make_consortium(tmp_path / "c", training=training)
    proc = serve(tmp_path, c.policy_path, tmp_path / "state")
    line = assert_clean_error(proc, 2)
    assert "no CUDA device" in proc.stderr, line
    assert not (tmp_path / "state" / "journal.log").exists()  # refused before any genesis


def _problems(**overrides: object) -> str:
    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}
    doc = policy_document(keys, **overrides)
    try:
        parse_policy(json.dumps(doc).encode(), "json")
    except PolicyError as exc:
        return "\n".join(exc.problems)
    return ""


def test_policy_a_gpu_must_be_attested_to_be_trusted() -> None:
    snp = {"platforms": ["sev-snp"], "reference": {"sev-snp": {"measurements": ["00" * 48]}}}
    training = {k: v for k, v in TRAINING.items() if k != "seed"} | {"device": "cuda"}
    assert 'needs attestation.gpu = "required"' in _problems(attestation=snp, training=training)
    assert _problems(attestation=snp | {"gpu": "required"}, training=training) == ""
    assert _problems(training=training) == ""  # simulated: protects nothing anyway
    assert "must be one of" in _problems(training=training | {"device": "tpu"})
