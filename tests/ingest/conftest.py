from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.client import DataOwner, SimulatedEvidenceWarning
from tests.consortium import Consortium, make_consortium, running_enclave


@pytest.fixture
def consortium(tmp_path: Path) -> Consortium:
    return make_consortium(tmp_path / "consortium")


@pytest.fixture
def enclave(consortium: Consortium, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    with running_enclave(consortium, tmp_path / "state") as running:
        yield running


def make_owner(address: str, consortium: Consortium, party: str = "hospital-a") -> DataOwner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return DataOwner(
            address, policy=consortium.signed, key=consortium.keys[party], allow_simulated=True
        )


@pytest.fixture
def owner(enclave: tuple[str, Any], consortium: Consortium) -> Iterator[DataOwner]:
    o = make_owner(enclave[0], consortium)
    yield o
    o.close()


def write_shard(path: Path, rows: int = 200, *, seed: int = 0, **overrides: Any) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {
        "features": rng.normal(size=(rows, 4)).astype(np.float32),
        "labels": rng.integers(0, 2, size=rows).astype(np.int64),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path
