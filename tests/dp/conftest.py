"""A DP consortium whose pinned custom model is the test's instrument: real enclave, real
uploads, and row ids in feature 0 so that what the trainer did can be compared with what
anyone could compute from the public record."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cctrain.client import DataOwner, Recipient
from cctrain.journal import MANIFEST_TYPE
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.state.conftest import session, wait_phase

ROWS_PER_PARTY = 30
ID_BASE = 1000  # row ids are ≥ 1000; the enclave's synthetic pre-check rows are not

#: A logistic regression that appends the row ids of every training batch to a file.
RECORDER = b"""
import json
from torch import nn


class Recorder(nn.Module):
    def __init__(self, width, classes, log):
        super().__init__()
        self.fc = nn.Linear(width, classes)
        self.log = log

    def forward(self, x):
        if self.training:
            with open(self.log, "a") as fh:
                fh.write(json.dumps(sorted(int(v) for v in x[:, 0].tolist())) + "\\n")
        return self.fc(x)


def build_model(shape, classes, *, log):
    return Recorder(shape[0], classes, log)
"""


def dp_privacy(**overrides: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "target_epsilon": 8.0,
        "delta": 1e-3,
        "max_grad_norm": 1.0,
    } | overrides


def party_rows(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Party ``index``'s rows: feature 0 is the row's id, the rest small noise."""
    rng = np.random.default_rng(100 + index)
    ids = ID_BASE + index * ROWS_PER_PARTY + np.arange(ROWS_PER_PARTY)
    x = np.concatenate(
        [ids[:, None].astype(np.float32), rng.normal(size=(ROWS_PER_PARTY, 3)).astype(np.float32)],
        axis=1,
    )
    y = (x[:, 1] > 0).astype(np.int64)
    return x, y


@dataclass
class DpRun:
    consortium: Consortium
    manifest: dict[str, Any]
    bundle_manifest: bytes
    log: Path

    def recorded_batches(self) -> list[list[int]]:
        """The row ids each training step saw, in order (the model's own record)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        batches = [json.loads(line) for line in lines]
        return [b for b in batches if b and min(b) >= ID_BASE]


def recorder_consortium(
    root: Path, log: Path, *, privacy: dict[str, Any], source: bytes = RECORDER, **training: Any
) -> tuple[Consortium, Path]:
    source_path = root / "model.py"
    root.mkdir(parents=True, exist_ok=True)
    source_path.write_bytes(source)
    c = make_consortium(
        root / "consortium",
        training={
            "model": {
                "name": "custom",
                "source_sha256": hashlib.sha256(source).hexdigest(),
                "params": {"log": str(log)},
            },
            "optimizer": {"name": "sgd", "lr": 0.01},
            "epochs": 4,
            "batch_size": 30,
            "seed": 5,
        }
        | training,
        privacy=privacy,
        release={"recipients": [RECIPIENT], "metrics": ["steps"]},
        data={
            "features": {"shape": [4], "dtype": "float32"},
            "labels": {"num_classes": 2},
            "max_rows": 1000,
            "max_bytes": 1 << 20,
        },
    )
    return c, source_path


def upload_parties(address: str, c: Consortium, tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    for i, party in enumerate(PROVIDERS):
        x, y = party_rows(i)
        path = tmp / f"{party}.npz"
        np.savez(path, features=x, labels=y)
        with session(DataOwner, address, c, party) as owner:
            owner.upload(path, shard_id=party, state_dir=tmp / f"owner-{party}")


def run_dp(
    root: Path, *, privacy: dict[str, Any], source: bytes = RECORDER, **training: Any
) -> DpRun:
    """A whole run on a fresh enclave: upload, train, fetch; the recipient verifies it."""
    log = root / "batches.log"
    c, source_path = recorder_consortium(root, log, privacy=privacy, source=source, **training)
    with running_enclave(c, root / "state", model_source=source_path) as (address, _app):
        upload_parties(address, c, root / "uploads")
        assert wait_phase(address, c, "released", "failed") == "released"
        with session(Recipient, address, c, RECIPIENT) as r:
            model = r.fetch_model()
    assert model.manifest["type"] == MANIFEST_TYPE
    return DpRun(c, model.manifest, b"", log)


def status_detail(address: str, c: Consortium) -> pb.GetStatusResponse:
    with session(DataOwner, address, c, "hospital-a") as o:
        return o.status()
