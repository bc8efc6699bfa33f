"""An internal error while an upload streams (a bug, not bad input) is refused as INTERNAL,
the upload discarded, and the host's log names the error's type and code locations only:
never its message, which may quote the shard's bytes."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from cctrain.client import DataOwner, SimulatedEvidenceWarning
from cctrain.errors import CctrainError
from tests.consortium import make_consortium, running_enclave
from tests.ingest.conftest import write_shard

MARKER = "SHARD-BYTES-7f3a9c"


def test_an_internal_error_is_logged_without_its_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cctrain_enclave import ingest

    def broken(self: object, chunk: object) -> None:
        raise RuntimeError(f"a bug that quotes the data: {MARKER}")

    # The bug is planted in ingest; the thing under test is the service's handling of it.
    monkeypatch.setattr(ingest.UploadSession, "add_chunk", broken)
    c = make_consortium(tmp_path / "c")
    caplog.set_level(logging.DEBUG)
    with running_enclave(c, tmp_path / "state") as (address, _):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulatedEvidenceWarning)
            with DataOwner(
                address, policy=c.signed, key=c.keys["hospital-a"], allow_simulated=True
            ) as owner:
                with pytest.raises(CctrainError, match="internal error"):
                    owner.upload(write_shard(tmp_path / "a.npz"), state_dir=tmp_path / "a")
    assert "internal error during upload from hospital-a: RuntimeError" in caplog.text
    assert MARKER not in caplog.text
