"""Helpers for playing the host operator: restart the enclave, copy, edit, delete, restore
its state files, move its clock, and run the same code under a policy of one's own."""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cctrain.client import DataOwner, Recipient, SimulatedEvidenceWarning
from cctrain.errors import CctrainError
from cctrain.journal import frame, unframe
from cctrain.protocol import Receipt
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard


def session(cls: Any, address: str, c: Consortium, party: str, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return cls(address, policy=c.signed, key=c.keys[party], allow_simulated=True, **kw)


def upload(
    address: str,
    c: Consortium,
    party: str,
    tmp: Path,
    *,
    rows: int = 50,
    seed: int = 0,
    shard_id: str | None = None,
    **kw: Any,
) -> Receipt:
    tmp.mkdir(parents=True, exist_ok=True)
    shard = write_shard(tmp / f"{party}-{shard_id or 'shard'}-{seed}.npz", rows=rows, seed=seed)
    # The owner's state directory (its memory of the journal) lives under ``tmp``: a test
    # that runs the same policy twice on purpose gives each run its own owners.
    home = tmp / f"owner-{party}"
    with session(
        DataOwner,
        address,
        c,
        party,
        state_dir=home,
        **{k: v for k, v in kw.items() if k == "clock"},
    ) as o:
        receipt: Receipt = o.upload(
            shard, shard_id=shard_id or party, **{k: v for k, v in kw.items() if k != "clock"}
        )
    return receipt


def upload_all(address: str, c: Consortium, tmp: Path, **kw: Any) -> list[Receipt]:
    return [upload(address, c, p, tmp, seed=i, **kw) for i, p in enumerate(PROVIDERS)]


def wait_phase(address: str, c: Consortium, *phases: str, timeout: float = 120, **kw: Any) -> str:
    with session(DataOwner, address, c, "hospital-a", **kw) as o:
        return str(o.wait_for_phase(phases, timeout=timeout))


def refused_start(c: Consortium, state: Path, match: str) -> str:
    """Start the enclave on ``state`` as the host would; it must refuse, saying ``match``."""
    from cctrain_enclave.app import AppConfig
    from cctrain_enclave.server import create_server

    config = AppConfig(policy_path=c.policy_path, state_dir=state, platform="simulated")
    with pytest.raises(CctrainError, match=match) as info:
        _server, _port, app = create_server(config)
        app.shutdown()  # only reached if it wrongly started
    return str(info.value)


def journal_records(state: Path) -> list[bytes]:
    raws, end = unframe((state / "journal.log").read_bytes())
    assert end == (state / "journal.log").stat().st_size
    return raws


def write_journal(state: Path, raws: list[bytes]) -> None:
    (state / "journal.log").write_bytes(b"".join(frame(r) for r in raws))


def kinds(raws: list[bytes]) -> list[str]:
    from cctrain.journal import parse_record

    return [parse_record(r, position=i).kind for i, r in enumerate(raws)]


class HostClock:
    """The host's clock: real time plus an offset the operator sets."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class FinishedRun:
    """A whole DP run with one approval: genesis, 3 shards, uploads closed, checkpoints,
    manifest, approval, released. ``state`` must not be modified: copy it."""

    consortium: Consortium
    state: Path
    address: str
    second_state: Path  # another run of the same policy (another genesis, another key)

    def copy_state(self, dest: Path) -> Path:
        shutil.copytree(self.state, dest, ignore=shutil.ignore_patterns("LOCK", "endpoint.json"))
        return dest


APPROVING_RELEASE = {
    "recipients": [RECIPIENT],
    "metrics": ["steps", "samples"],
    "non_private": ["samples"],  # the realised batch sizes: outside DP, so opted in
    "approvals_required_from": ["hospital-a"],
}
DP = {"enabled": True, "target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
SHORT_TRAINING = {
    "model": {"name": "logreg"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 3,
    "batch_size": 16,
}


def run_to_release(address: str, c: Consortium, tmp: Path) -> None:
    upload_all(address, c, tmp)
    home = tmp / "owner-hospital-a"
    assert wait_phase(address, c, "awaiting_approval", state_dir=home) == "awaiting_approval"
    with session(DataOwner, address, c, "hospital-a", state_dir=home) as owner:
        assert owner.approve_release() == ["hospital-a"]
    assert wait_phase(address, c, "released", state_dir=home) == "released"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    tmp = tmp_path_factory.mktemp("finished")
    c = make_consortium(tmp / "c", privacy=DP, training=SHORT_TRAINING, release=APPROVING_RELEASE)
    with running_enclave(c, tmp / "second") as (address, _app):
        run_to_release(address, c, tmp / "second-owners")
    with running_enclave(c, tmp / "state") as (address, _app):
        run_to_release(address, c, tmp / "owners")
        with session(Recipient, address, c, RECIPIENT) as r:
            r.fetch_model()  # the control: this run releases
        yield FinishedRun(c, tmp / "state", address, tmp / "second")
