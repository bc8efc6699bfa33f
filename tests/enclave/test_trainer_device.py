"""training.device: CPU results unchanged, CUDA refused where there is none (when the enclave
starts, not at the first step), and the policy's rule that a GPU outside the TEE is trusted
with nothing. The tests marked ``cuda`` run only on a machine with a GPU
(``benchmarks/gpu_check.sh`` runs them there); everything else runs everywhere."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from cctrain.cli import main
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PolicyError
from cctrain.policy import Policy, gpu_allowed, parse_policy
from tests.cli_process import assert_clean_error, error_lines
from tests.consortium import (
    PROVIDERS,
    RECIPIENT,
    make_consortium,
    policy_document,
    running_enclave,
)
from tests.enclave.test_startup_checks import serve

torch = pytest.importorskip("torch")
from cctrain_enclave.trainer import (  # noqa: E402
    CheckpointError,
    CheckpointStore,
    TrainingStopped,
    train,
)
from cctrain_enclave.trainer.checkpoint import deserialize  # noqa: E402
from cctrain_enclave.trainer.train import (  # noqa: E402
    TrainingDeviceError,
    TrainingResult,
    _to_cpu,
    resolve_device,
)

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: nothing to refuse")

TRAINING = {
    "model": {"name": "mlp", "params": {"hidden": [8]}},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 1,
    "batch_size": 16,
}
DROPOUT_MLP = {"name": "mlp", "params": {"hidden": [8], "dropout": 0.2}}
DP = {
    "enabled": True,
    "target_epsilon": 4.0,
    "delta": 1e-4,
    "max_grad_norm": 1.0,
    "accountant": "rdp",
    "noise_source": "insecure-fast",  # reproducible: results of two runs can be compared
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(rows: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _train(
    *,
    privacy: dict[str, Any] | None = None,
    checkpoint: Any = None,
    stop: threading.Event | None = None,
    allow_gpu: bool = True,
    **extra: Any,
) -> TrainingResult:
    x, y = _data()
    return train(
        x,
        y,
        num_classes=2,
        training=TRAINING | {"seed": 2} | extra,
        privacy=privacy or {"enabled": False},
        simulated_platform=True,
        checkpoint=checkpoint,
        progress=(lambda _e: stop.set()) if stop is not None else None,
        progress_every=2,  # stopped (with a checkpoint) at the step after the first event
        stop=stop,
        allow_gpu=allow_gpu,
    )


def _same(a: TrainingResult, b: TrainingResult) -> bool:
    return a.state_dict.keys() == b.state_dict.keys() and all(
        torch.equal(v, b.state_dict[k]) for k, v in a.state_dict.items()
    )


# --------------------------------------------------------------------------- everywhere


@pytest.mark.parametrize(
    "privacy",
    [None, DP | {"grad_sample_mode": "fast"}, DP | {"grad_sample_mode": "hooks"}],
    ids=["plain", "dp-fast", "dp-hooks"],
)
def test_cpu_is_the_default_and_bit_for_bit_the_same(privacy: dict[str, Any] | None) -> None:
    default = _train(privacy=privacy)
    assert default.device == "cpu"
    assert _same(default, _train(privacy=privacy, device="cpu"))
    if not HAS_CUDA:  # auto is the CPU here
        assert _same(default, _train(privacy=privacy, device="auto"))


def _policy(attestation: dict[str, Any] | None = None, **training: Any) -> Policy:
    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}
    overrides: dict[str, Any] = {"training": TRAINING | training}
    if attestation is not None:
        overrides["attestation"] = attestation
    return parse_policy(json.dumps(policy_document(keys, **overrides)).encode(), "json")


def _problems(attestation: dict[str, Any] | None = None, **training: Any) -> list[str]:
    try:
        _policy(attestation, **training)
    except PolicyError as exc:
        return list(exc.problems)
    return []


def _snp(**att: Any) -> dict[str, Any]:
    return {"platforms": ["sev-snp"], "reference": {"sev-snp": {"measurements": ["00" * 48]}}} | att


def test_policy_a_gpu_sees_data_only_when_every_party_requires_it_attested() -> None:
    for gpu in ("forbidden", "optional"):
        (problem,) = _problems(_snp(gpu=gpu), device="cuda")
        assert problem.startswith(
            f"training.device: got 'cuda' with attestation.gpu = {gpu!r}, want "
            "attestation.gpu = 'required'"
        ), problem
    assert _problems(_snp(gpu="required"), device="cuda") == []
    assert _problems(device="cuda") == []  # simulated only: protects nothing anyway
    assert _problems(_snp(gpu="optional"), device="auto") == []  # auto: the CPU there
    (problem,) = _problems(device="tpu")
    assert problem == "training.device: must be one of ['auto', 'cpu', 'cuda'], got 'tpu'"

    assert _policy().training["device"] == "cpu"  # the default: reproducible runs stay so
    assert gpu_allowed(_policy())  # simulated only
    assert gpu_allowed(_policy(_snp(gpu="required")))
    assert not gpu_allowed(_policy(_snp(gpu="optional")))  # a party may accept no GPU evidence
    assert not gpu_allowed(_policy(_snp()))  # forbidden, the default
    assert resolve_device("auto", allow_gpu=False).type == "cpu"


def test_cuda_is_refused_where_the_policy_lets_no_gpu_see_the_data() -> None:
    with pytest.raises(TrainingDeviceError, match="the policy lets no GPU see the data"):
        resolve_device("cuda", allow_gpu=False)
    with pytest.raises(PolicyError) as info:
        resolve_device("gpu")
    assert list(info.value.problems) == ["training.device: got 'gpu', want one of auto, cpu, cuda"]


@no_cuda
def test_auto_is_the_cpu_here_and_cuda_is_refused() -> None:
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(TrainingDeviceError, match="want a CUDA device, but this machine has none"):
        resolve_device("cuda")
    with pytest.raises(TrainingDeviceError, match="refusing to train on the CPU instead"):
        _train(device="cuda")


@no_cuda
def test_enclave_refuses_to_start_with_cuda_and_no_gpu(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", training=TRAINING | {"device": "cuda"})
    proc = serve(tmp_path, c.policy_path, tmp_path / "state")
    line = assert_clean_error(proc, 2)
    assert error_lines(proc.stderr) == [line]  # one line: not a list of plan problems
    assert line.startswith(
        "error: refusing to start: training.device: got 'cuda', want a CUDA device, but this "
        "machine has none ("
    ), line
    assert "listening" not in proc.stdout
    assert not (tmp_path / "state" / "journal.log").exists()  # refused before any genesis


def test_policy_check_on_a_signers_machine_checks_a_cuda_plan_on_the_cpu(tmp_path: Path) -> None:
    """The signers need no GPU to check the plan: only the enclave needs the device."""
    keys = {pid: PartyKeys.generate(pid) for pid in (*PROVIDERS, RECIPIENT)}
    p = tmp_path / "p.json"
    p.write_text(json.dumps(policy_document(keys, training=TRAINING | {"device": "cuda"})))
    r = CliRunner().invoke(main, ["policy", "check", str(p)])
    assert r.exit_code == 0, r.output
    assert "training plan: ok" in r.output
    assert "training.device = 'cuda': checked here on the CPU" in r.output


def test_checkpoint_tensors_are_copied_to_the_cpu_whatever_their_nesting() -> None:
    w = torch.arange(4.0)
    state = {"model": {"w": w}, "optimizer": {"state": {0: {"m": [w, (w, 3)]}}}, "n": None}
    out = _to_cpu(state)
    assert torch.equal(out["model"]["w"], w) and out["n"] is None
    m = out["optimizer"]["state"][0]["m"]
    assert isinstance(m, list) and isinstance(m[1], tuple) and m[1][1] == 3
    assert all(t.device.type == "cpu" for t in (m[0], m[1][0]))


# --------------------------------------------------------------------------- on a GPU


@cuda
@pytest.mark.parametrize(
    "privacy",
    [None, DP | {"grad_sample_mode": "fast"}, DP | {"grad_sample_mode": "hooks"}]
    + [DP | {"grad_sample_mode": "ghost"}],
    ids=["plain", "dp-fast", "dp-hooks", "dp-ghost"],
)
def test_cuda_trains_what_the_cpu_trains(privacy: dict[str, Any] | None) -> None:
    """Same initial weights (built on the CPU), batches (sampled on the CPU) and noise (drawn
    on the CPU): only float rounding differs. The weights come back as CPU tensors."""
    on_cpu, on_gpu = _train(privacy=privacy), _train(privacy=privacy, device="cuda")
    assert on_gpu.device.startswith("cuda:") and on_gpu.device != "cuda:"
    assert _train(privacy=privacy, device="auto").device == on_gpu.device  # auto: the GPU
    for k, v in on_cpu.state_dict.items():
        got = on_gpu.state_dict[k]
        assert got.device.type == "cpu"
        assert torch.allclose(got, v, rtol=1e-3, atol=1e-4), (k, (got - v).abs().max())
    assert (on_gpu.dp_certificate is None) == (privacy is None)


@cuda
def test_a_cuda_checkpoint_holds_cpu_tensors_and_resumes_where_the_policy_says(
    tmp_path: Path,
) -> None:
    """Stopped on the GPU, resumed on the GPU (the CUDA generator restored: the dropout masks
    continue) or, under ``auto`` on a machine where GPUs are not allowed, on the CPU; under
    another ``training.device`` the checkpoint is another run's, refused."""

    def store(d: Path) -> CheckpointStore:
        return CheckpointStore(d, lambda b: b, lambda b: b, every_steps=2)

    run = {"privacy": DP | {"grad_sample_mode": "fast"}, "model": DROPOUT_MLP, "device": "auto"}
    whole = _train(**run)
    assert whole.device.startswith("cuda:")
    for resume_on_gpu in (True, False):
        d = tmp_path / str(resume_on_gpu)
        with pytest.raises(TrainingStopped):
            _train(**run, checkpoint=store(d), stop=threading.Event())
        saved = deserialize(store(d).path.read_bytes())  # weights_only, no map_location
        tensors = [v for v in _leaves(saved) if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == "cpu" for t in tensors)
        assert saved["cuda_rng"] is not None
        with pytest.raises(CheckpointError, match="different training run"):
            _train(**(run | {"device": "cuda"}), checkpoint=store(d))
        resumed = _train(**run, checkpoint=store(d), allow_gpu=resume_on_gpu)
        assert resumed.device.startswith("cuda:") == resume_on_gpu
        assert resumed.metrics["steps"] == whole.metrics["steps"]
        if resume_on_gpu:  # on the CPU the dropout masks come from the CPU's generator
            for k, v in whole.state_dict.items():
                assert torch.allclose(resumed.state_dict[k], v, rtol=1e-5, atol=1e-6), k


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _copies_to_host(epochs: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        warnings.simplefilter("ignore")  # the profiler's own notes are not the trainer's
        _train(privacy=DP | {"grad_sample_mode": "fast"}, device="cuda", epochs=epochs)
    events = prof.key_averages()
    if not any("Memcpy" in e.key for e in events):
        pytest.skip("the profiler records no CUDA copies here (CUPTI unavailable)")
    assert any("HtoD" in e.key for e in events)  # the batches and the noise
    return sum(e.count for e in events if "DtoH" in e.key)


@cuda
def test_no_gradient_leaves_the_gpu_during_a_dp_step() -> None:
    """Copies from the device to the host (the final evaluation's sums, the weights, the
    release checks) happen once per run, not once per step: 6 DP steps make as many as 24."""
    assert _copies_to_host(epochs=4) == _copies_to_host(epochs=1)


@cuda
def test_the_release_names_the_gpu_it_trained_on(tmp_path: Path) -> None:
    from cctrain.client import DataOwner, Recipient
    from tests.release.test_release import _quiet, upload_all

    c = make_consortium(tmp_path / "c", training=TRAINING | {"device": "cuda"})
    with running_enclave(c, tmp_path / "state") as (address, _app):
        upload_all(address, c, tmp_path)
        with _quiet(DataOwner, address, c, "hospital-a") as owner:
            assert owner.wait_for_phase(("released",), timeout=120) == "released"
        with _quiet(Recipient, address, c, RECIPIENT) as r:
            model = r.fetch_model()  # verified: a simulated GPU run needs no GPU evidence
    index = torch.cuda.current_device()
    assert model.manifest["training_device"] == f"cuda:{index} {torch.cuda.get_device_name(index)}"
    assert model.manifest["training"]["device"] == "cuda"
