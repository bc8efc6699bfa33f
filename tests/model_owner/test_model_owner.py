"""A model owner's package through a real enclave: pinned, never visible to the host, trained.

Roles played: two hospitals (data), a model owner (package; the only recipient), a data
provider who tries to upload a package, and the host, who reads and edits the state dir.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.client import DataOwner, ModelOwner, Recipient, SimulatedEvidenceWarning
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PermissionDeniedError, PolicyError, UploadRejectedError
from cctrain.package import PACKAGE_SHARD_ID, UPLOAD_FORMAT, build_package, package_sha256
from cctrain.policy import parse_policy
from tests.consortium import Consortium, make_consortium, policy_document, running_enclave
from tests.ingest.conftest import write_shard

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

OWNER = "model-owner"
HOSPITALS = ("hospital-a", "hospital-b")
SOURCE_MARKER = "CCTRAIN-SOURCE-MARKER-5d1f0a9e"
#: 16 bytes whose four float32 values are finite: the marker tensor's exact contents.
TENSOR_MARKER = b"MARKERTENSOR7731"

PLAN = f'''
"""{SOURCE_MARKER}: the model owner's secret architecture."""
import torch
from torch import nn

from . import layers


def build_model(feature_shape, num_outputs, *, hidden=8):
    return layers.Net(feature_shape[0], hidden, num_outputs)
'''
LAYERS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width, hidden, outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, outputs))
        self.register_buffer("marker", torch.zeros(4))

    def forward(self, x):
        return self.body(x.flatten(1))
"""


def initial_weights(seed: int = 3) -> bytes:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "body.0.weight": torch.randn(8, 4, generator=g) * 0.1,
        "body.0.bias": torch.zeros(8),
        "body.2.weight": torch.randn(2, 8, generator=g) * 0.1,
        "body.2.bias": torch.zeros(2),
        "marker": torch.from_numpy(np.frombuffer(TENSOR_MARKER, dtype=np.float32).copy()),
    }
    out: bytes = safetensors_torch.save(tensors)
    return out


def make_package(**extra_files: str) -> bytes:
    return build_package({"plan.py": PLAN, "layers.py": LAYERS, **extra_files}, initial_weights())


#: The model owner's roles: it provides the package and is the only recipient.
OWNER_ROLES = ("model_provider", "recipient")


def package_training(package: bytes) -> dict[str, Any]:
    """``training``: the model is the owner's package, pinned by its hash."""
    return {
        "model": {
            "name": "package",
            "provider": OWNER,
            "package_sha256": package_sha256(package),
            "params": {"hidden": 8},
        },
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 2,
        "batch_size": 16,
    }


def owner_consortium(root: Path, package: bytes, **overrides: Any) -> Consortium:
    """The hospitals (data) and the model owner (package; the recipient), training
    ``package``: the consortium builder's policy with these parties and this model."""
    overrides.setdefault("name", "model-owner-test")
    overrides.setdefault("training", package_training(package))
    overrides.setdefault("release", {"recipients": [OWNER], "metrics": ["train_accuracy"]})
    return make_consortium(
        root, providers=HOSPITALS, recipient=OWNER, recipient_roles=OWNER_ROLES, **overrides
    )


def session(cls: Any, address: str, c: Consortium, party: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return cls(address, policy=c.signed, key=c.keys[party], allow_simulated=True)


def separable_shard(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    np.savez(path, features=x, labels=y)
    return path


def upload_data(address: str, c: Consortium, tmp: Path) -> None:
    for i, pid in enumerate(HOSPITALS):
        with session(DataOwner, address, c, pid) as owner:
            owner.upload(separable_shard(tmp / f"{pid}.npz", seed=i), state_dir=tmp / pid)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _marker_forms() -> list[bytes]:
    forms = []
    for raw in (SOURCE_MARKER.encode(), TENSOR_MARKER):
        forms += [raw, raw.hex().encode(), base64.b64encode(raw)[:20]]
    return forms


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("model-owner")
    package = make_package()
    (tmp / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp / "c", package)
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        with running_enclave(c, tmp / "state") as (address, app):
            upload_data(address, c, tmp)
            with session(DataOwner, address, c, "hospital-a") as a:
                status_before = a.status()
            with session(ModelOwner, address, c, OWNER) as mo:
                receipt = mo.upload_package(tmp / "model.pkg", state_dir=tmp / OWNER)
                assert mo.wait_for_phase(("released", "failed"), timeout=180) == "released"
                model = mo.fetch_model()
            with session(Recipient, address, c, "hospital-b") as b:
                try:
                    b.fetch_release()
                    other_fetch: Exception | None = None
                except Exception as exc:  # noqa: BLE001 - the test inspects it
                    other_fetch = exc
            yield {
                "tmp": tmp,
                "c": c,
                "package": package,
                "receipt": receipt,
                "model": model,
                "status_before": status_before,
                "other_fetch": other_fetch,
                "logs": capture.lines,
                "state": tmp / "state",
            }
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)


def test_training_waits_for_the_package(trained: dict[str, Any]) -> None:
    # Both hospitals had uploaded, auto_start is on: still collecting without the package.
    assert trained["status_before"].phase == "collecting"


def test_model_owner_receives_the_trained_model(trained: dict[str, Any]) -> None:
    model, receipt, package = trained["model"], trained["receipt"], trained["package"]
    assert receipt.shard_id == PACKAGE_SHARD_ID
    assert receipt.rows == 0
    assert receipt.package_sha256 == hashlib.sha256(package).digest()
    assert receipt.commitment != receipt.package_sha256  # salted, even for the public pin
    m = model.manifest
    assert m["model"]["name"] == "package"
    assert m["model"]["package_sha256"] == package_sha256(package)
    assert len(m["receipts"]) == 3  # two data shards and the package
    assert m["recipients"] == [OWNER]
    sd = model.state_dict()
    # The buffer is the package's initial value (it is not trained); the layers were trained.
    assert sd["marker"].tobytes() == TENSOR_MARKER
    start = safetensors_torch.load(initial_weights())
    assert not np.allclose(sd["body.0.weight"], start["body.0.weight"].numpy())
    assert m["metrics"]["train_accuracy"] > 0.85


def test_model_owner_rebuilds_the_model_with_its_package(trained: dict[str, Any]) -> None:
    model = trained["model"]
    with pytest.raises(PolicyError, match="pass package="):
        model.to_torch()
    net = model.to_torch(package=trained["tmp"] / "model.pkg")
    x = torch.from_numpy(np.random.default_rng(9).normal(size=(64, 4)).astype(np.float32))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    assert (net(x).argmax(1) == y).float().mean() > 0.8
    other = build_package({"plan.py": PLAN + "\n# another\n", "layers.py": LAYERS})
    with pytest.raises(Exception, match="none of its code was run"):
        model.to_torch(package=other)


def test_no_other_party_receives_it(trained: dict[str, Any]) -> None:
    assert isinstance(trained["other_fetch"], PermissionDeniedError)


def test_host_never_sees_the_package(trained: dict[str, Any]) -> None:
    """Everything the host can read: every file of the state dir, every log record (at
    DEBUG), this process's arguments and environment."""
    forms = _marker_forms()
    for path in trained["state"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for form in forms:
                assert form not in data, f"{form!r} in {path}"
    logs = "\n".join(trained["logs"]).encode()
    assert logs, "no log records captured: the check would prove nothing"
    for form in forms:
        assert form not in logs
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
        cmdline = fh.read()
    with open(f"/proc/{os.getpid()}/environ", "rb") as fh:
        environ = fh.read()
    for form in forms:
        assert form not in cmdline and form not in environ


def _bare_owner(address: str, c: Consortium, party: str) -> Any:
    return session(ModelOwner, address, c, party)


def _send_raw(mo: Any, path: Path, tmp: Path, *, fmt: str = UPLOAD_FORMAT) -> Any:
    """Bypass the SDK's own checks: stream ``path`` as a package, as a hostile client would."""
    return mo._send_file(
        path,
        fmt=fmt,
        shard_id=PACKAGE_SHARD_ID,
        chunk_size=1 << 16,
        progress=None,
        receipts_dir=tmp / "receipts",
        on_refused=lambda: None,
    )


def test_unpinned_package_is_refused_before_any_code_runs(tmp_path: Path) -> None:
    pinned = make_package()
    flag = tmp_path / "ran"
    rogue = build_package(
        {"plan.py": f"open({str(flag)!r}, 'w').close()\n" + PLAN, "layers.py": LAYERS},
        initial_weights(),
    )
    (tmp_path / "rogue.pkg").write_bytes(rogue)
    c = owner_consortium(tmp_path / "c", pinned)
    with running_enclave(c, tmp_path / "state") as (address, _):
        with _bare_owner(address, c, OWNER) as mo:
            with pytest.raises(PolicyError, match="the policy pins"):
                mo.upload_package(tmp_path / "rogue.pkg", state_dir=tmp_path / "o")
            with pytest.raises(UploadRejectedError, match="the policy pins"):
                _send_raw(mo, tmp_path / "rogue.pkg", tmp_path)
            assert mo.receipts() == []
    assert not flag.exists()
    uploads = tmp_path / "state" / "uploads"
    assert not [p for p in uploads.rglob("*") if p.is_file()]


def test_only_the_model_provider_uploads_a_package(tmp_path: Path) -> None:
    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    with running_enclave(c, tmp_path / "state") as (address, _):
        with session(ModelOwner, address, c, "hospital-a") as impostor:
            with pytest.raises(PolicyError, match="not the policy's model provider"):
                impostor.upload_package(tmp_path / "model.pkg")
            with pytest.raises(PermissionDeniedError, match="not the model provider"):
                _send_raw(impostor, tmp_path / "model.pkg", tmp_path)
        with session(ModelOwner, address, c, OWNER) as mo:
            # ... and the model provider uploads no data under the package's format.
            with pytest.raises(PolicyError, match="not a data provider"):
                mo.upload(write_shard(tmp_path / "x.npz"))


def test_package_altered_at_rest_fails_the_run(tmp_path: Path) -> None:
    """The host flips a byte of the stored package ciphertext before training starts."""
    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    with running_enclave(c, tmp_path / "state") as (address, _):
        with session(ModelOwner, address, c, OWNER) as mo:
            receipt = mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
        stored = tmp_path / "state" / "shards" / f"{receipt.header_sha256.hex()}.ct"
        data = bytearray(stored.read_bytes())
        data[100] ^= 0x01
        stored.write_bytes(bytes(data))
        upload_data(address, c, tmp_path)
        with session(DataOwner, address, c, "hospital-a") as a:
            assert a.wait_for_phase(("released", "failed"), timeout=120) == "failed"
            detail = a.status().detail
    assert "loading the model package" in detail
    assert "altered at rest" in detail


def test_initial_weights_that_do_not_fit_fail_with_counts(tmp_path: Path) -> None:
    weights = safetensors_torch.save({"body.0.weight": torch.zeros(3, 3)})
    package = build_package({"plan.py": PLAN, "layers.py": LAYERS}, weights)
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    with running_enclave(c, tmp_path / "state") as (address, _):
        upload_data(address, c, tmp_path)
        with session(ModelOwner, address, c, OWNER) as mo:
            mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
            assert mo.wait_for_phase(("released", "failed"), timeout=120) == "failed"
            detail = mo.status().detail
    assert "4 tensor(s) missing, 0 unexpected, 1 of another shape" in detail
    assert "body" not in detail  # tensor names are the model owner's, not every party's


def test_model_code_failure_hides_its_locations(tmp_path: Path) -> None:
    broken = PLAN.replace("return layers.Net", "return _hidden_helper_q7() #") + (
        "\n\ndef _hidden_helper_q7():\n    raise RuntimeError('secret detail')\n"
    )
    package = build_package({"plan.py": broken, "layers.py": LAYERS}, None)
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        with running_enclave(c, tmp_path / "state") as (address, _):
            upload_data(address, c, tmp_path)
            with session(ModelOwner, address, c, OWNER) as mo:
                mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
                assert mo.wait_for_phase(("released", "failed"), timeout=120) == "failed"
                detail = mo.status().detail
    finally:
        logging.getLogger().removeHandler(capture)
    assert "RuntimeError (message withheld" in detail
    logs = "\n".join(capture.lines)
    assert "in the model package's code" in logs
    assert "_hidden_helper_q7" not in logs and "secret detail" not in logs


def test_policy_rules_for_packages() -> None:
    keys = {pid: PartyKeys.generate(pid) for pid in (*HOSPITALS, OWNER)}
    package = make_package()

    def problems(mutate: Any) -> str:
        c_doc = policy_document(
            keys,
            recipient=OWNER,
            recipient_roles=OWNER_ROLES,
            training=package_training(package),
        )
        mutate(c_doc)
        with pytest.raises(PolicyError) as err:
            parse_policy(json.dumps(c_doc).encode(), "json")
        return "\n".join(err.value.problems)

    assert "does not have the 'model_provider' role" in problems(
        lambda d: d["training"]["model"].update(provider="hospital-a")
    )
    assert "training.model.name is not 'package'" in problems(
        lambda d: d["training"].update(model={"name": "logreg"})
    )
    assert "package_sha256" in problems(
        lambda d: d["training"]["model"].update(package_sha256="ab")
    )
    assert "allowed only on the simulated platform" in problems(
        lambda d: (
            d["parties"][2].update(roles=["recipient"]),
            d["training"].update(model={"name": "custom", "source_sha256": "a" * 64}),
            d["attestation"].update(
                platforms=["sev-snp"],
                allow_simulated=False,
                reference={"sev-snp": {"measurements": ["00" * 48]}},
            ),
        )
    )


def test_dp_training_of_a_package(tmp_path: Path) -> None:
    """Under DP the package's model trains with the enclave's own DP step; the certificate
    covers the trained layers, and the buffer is released at its (owner's) initial value."""
    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(
        tmp_path / "c",
        package,
        privacy={
            "enabled": True,
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "noise_source": "insecure-fast",
        },
        release={"recipients": [OWNER], "metrics": ["steps"]},
    )
    with running_enclave(c, tmp_path / "state") as (address, _):
        upload_data(address, c, tmp_path)
        with session(ModelOwner, address, c, OWNER) as mo:
            mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
            assert mo.wait_for_phase(("released", "failed"), timeout=180) == "released"
            model = mo.fetch_model()
    cert = model.manifest["dp_certificate"]
    # The names are the model owner's: sealed in the weights, which its SDK opened and checked.
    assert cert["tensor_names"] == "sealed" and "covers" not in cert
    assert model.dp_tensors is not None
    assert model.dp_tensors.covers == (
        "body.0.bias",
        "body.0.weight",
        "body.2.bias",
        "body.2.weight",
    )
    assert model.dp_tensors.unchanged_from_initialisation == ("marker",)
    assert cert["epsilon"] <= 8.0
    assert model.state_dict()["marker"].tobytes() == TENSOR_MARKER


def test_cli_model_upload_follows_the_contract(tmp_path: Path) -> None:
    from tests.cli_process import assert_clean_error, cctrain, environment

    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    (tmp_path / "other.pkg").write_bytes(build_package({"plan.py": PLAN, "layers.py": LAYERS}))
    c = owner_consortium(tmp_path / "c", package)
    key_file, _ = c.keys[OWNER].save(tmp_path / "keys")
    env = environment(tmp_path / "home")
    with running_enclave(c, tmp_path / "state") as (address, _):
        common = ("--enclave", address, "--policy", str(c.policy_path), "--key", str(key_file))
        wrong = cctrain(
            "model",
            "upload",
            str(tmp_path / "other.pkg"),
            *common,
            "--allow-simulated",
            cwd=tmp_path,
            env=env,
        )
        assert "the policy pins" in assert_clean_error(wrong, 2)  # the wrong file: bad input
        proc = cctrain(
            "model",
            "upload",
            str(tmp_path / "model.pkg"),
            *common,
            "--allow-simulated",
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"sha256={package_sha256(package)}" in proc.stdout
    # The model owner's own check, before uploading: its package against the policy.
    (tmp_path / "policy.json").write_bytes(c.signed.policy.raw)
    ok = cctrain(
        "policy", "check", "policy.json", "--model-package", "model.pkg", cwd=tmp_path, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert "training plan: ok" in ok.stdout
    bad = cctrain(
        "policy", "check", "policy.json", "--model-package", "other.pkg", cwd=tmp_path, env=env
    )
    assert bad.returncode == 1
    assert "the policy pins" in bad.stderr


def test_a_withdrawn_package_cannot_come_back_and_says_why(tmp_path: Path) -> None:
    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    with running_enclave(c, tmp_path / "state") as (address, _):
        with session(ModelOwner, address, c, OWNER) as mo:
            mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
            mo.withdraw(PACKAGE_SHARD_ID, state_dir=tmp_path / OWNER)
            with pytest.raises(UploadRejectedError, match="the consortium needs a new policy"):
                mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
