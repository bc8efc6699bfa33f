"""The SDK's watch(): a step event carries the released loss; a phase change carries none
(protobuf's default 0.0 is not a loss)."""

from __future__ import annotations

from pathlib import Path

from cctrain.client import DataOwner
from tests.consortium import make_consortium, running_enclave
from tests.release.test_release import _quiet, upload_all


def test_phase_events_carry_no_loss(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c")  # releases train_loss, so steps stream it
    with running_enclave(c, tmp_path / "state") as (address, _):
        with _quiet(DataOwner, address, c, "hospital-a") as owner:
            upload_all(address, c, tmp_path)
            events = list(owner.watch(timeout=120))
    steps = [e for e in events if e.total_steps]
    phases = [e for e in events if not e.total_steps]
    assert steps and all(isinstance(e.loss, float) for e in steps)
    assert phases and all(e.loss is None for e in phases)
    assert events[-1].phase == "released"
