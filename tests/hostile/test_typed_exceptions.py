"""failure_report trusts exception *types*: a message of PolicyError, DpStateViolation,
CheckpointError or a plain CctrainError goes verbatim to the journal (every party, the host)
and the log. Custom model code runs in the same process and can raise those types, so
hostile.md's "any other exception raised while the data is in memory (torch, numpy, the
model's code) ... is withheld from everyone" does not hold: the model below is
tests/hostile/test_quiet.py's LEAKY with ``ValueError`` replaced by ``CctrainError``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from cctrain.client import DataOwner
from tests.consortium import PROVIDERS, make_consortium, running_enclave
from tests.hostile.test_quiet import _everything_the_host_reads, _journal_bytes, _leaks
from tests.state.conftest import session, wait_phase

#: Exactly representable in float32 (test_quiet's MARKER becomes 987654336 in training).
MARKER = 123_456_768

LEAKY = b"""
from torch import nn
from cctrain.errors import CctrainError


class Leaky(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        if self.training and float(x[:, 0].max()) > 1e8:
            raise CctrainError("cannot handle the value %d" % int(x[:, 0].max()))
        return self.fc(x)


def build_model(shape, classes):
    return Leaky(shape[0], classes)
"""


def test_a_model_error_of_a_trusted_type_reaches_everyone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = tmp_path / "model.py"
    source.write_bytes(LEAKY)
    c = make_consortium(
        tmp_path / "c",
        training={
            "model": {"name": "custom", "source_sha256": hashlib.sha256(LEAKY).hexdigest()},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": 16,
        },
    )
    state = tmp_path / "state"
    with running_enclave(c, state, model_source=source) as (address, _app):
        for i, party in enumerate(PROVIDERS):
            rng = np.random.default_rng(i)
            x = rng.normal(size=(40, 4)).astype(np.float32)
            if party == "hospital-b":
                x[3, 0] = MARKER
            path = tmp_path / f"{party}.npz"
            np.savez(path, features=x, labels=rng.integers(0, 2, size=40))
            with session(DataOwner, address, c, party) as o:
                o.upload(path, shard_id="s", state_dir=tmp_path / f"o-{party}")
        assert wait_phase(address, c, "released", "failed") == "failed"
        with session(DataOwner, address, c, "hospital-a") as o:
            seen = o.status().SerializeToString() + _journal_bytes(o)
    assert _leaks(seen, MARKER) == [], "hospital-b's marker reached hospital-a"
    assert _leaks(_everything_the_host_reads(state, caplog), MARKER) == [], (
        "marker reached the host"
    )
