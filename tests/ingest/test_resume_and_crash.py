"""Resume after a dropped connection; SIGKILL of the enclave mid-upload, then restart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cctrain.client import DataOwner
from cctrain.errors import ProtocolError
from cctrain.local import LocalEnclave
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import Consortium, make_consortium, running_enclave
from tests.ingest.conftest import make_owner, write_shard


class _Drop(Exception):
    pass


def test_dropped_connection_resumes_from_last_ack(
    owner: DataOwner, enclave: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cctrain_enclave.ingest as ingest

    monkeypatch.setattr(ingest, "ACK_EVERY_BYTES", 64 << 10)  # ack every 64 KiB in this test
    shard = write_shard(tmp_path / "big.npz", rows=40_000)  # ~1 MiB -> 16 chunks of 64 KiB
    size = shard.stat().st_size
    state = tmp_path / "owner-state"

    app = enclave[1]

    def drop_midway(sent: int, total: int) -> None:
        # After 8 of 16 chunks, wait (however loaded the machine) until the enclave has made
        # some of them durable, then vanish mid-stream. Chunks already handed to gRPC keep
        # flowing while this callback waits; the next one is never sent.
        if sent < 8 * (64 << 10):
            return
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = app.store.partial_progress("hospital-a", "big")
            if progress is not None and progress[1] >= 2:
                break
            time.sleep(0.01)
        raise _Drop

    with pytest.raises((_Drop, ProtocolError)):
        owner.upload(shard, chunk_size=64 << 10, progress=drop_midway, state_dir=state)
    # The enclave keeps the acknowledged prefix (read once it has noticed the drop).
    deadline = time.time() + 10
    previous = None
    while time.time() < deadline:
        status = owner.unary("UploadStatus", pb.UploadStatusRequest(shard_id="big"))
        if status.state == pb.UploadStatusResponse.PARTIAL and previous == status.next_index:
            break
        previous = status.next_index if status.state == pb.UploadStatusResponse.PARTIAL else None
        time.sleep(0.2)
    assert status.state == pb.UploadStatusResponse.PARTIAL
    acked = status.next_index
    assert 2 <= acked <= 8  # durable progress, and nothing beyond what was sent

    starts: list[int] = []

    def record(sent: int, total: int) -> None:
        if not starts:
            starts.append(sent)

    receipt = owner.upload(shard, chunk_size=64 << 10, progress=record, state_dir=state)
    assert starts[0] == acked * (64 << 10)  # resumed, not restarted
    assert receipt.rows == 40_000
    assert receipt.plaintext_size == size
    assert not list((state / "uploads").glob("*.json"))  # resume state is cleaned up


def test_upload_is_idempotent_after_acceptance(owner: DataOwner, tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "once.npz")
    first = owner.upload(shard, state_dir=tmp_path / "s")
    again = owner.upload(shard, state_dir=tmp_path / "s")
    assert again.body == first.body  # the same signed receipt, no second copy


def _start_enclave(consortium: Consortium, state: Path, log: Path) -> LocalEnclave:
    enclave = LocalEnclave(
        policy=consortium.policy_path,
        state_dir=state,
        log=log,
        env=dict(os.environ, CCTRAIN_ACK_EVERY_BYTES=str(1 << 20)),
    )
    enclave.start(timeout=60)
    return enclave


def test_sigkill_mid_upload_then_restart(tmp_path: Path) -> None:
    consortium = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    log = tmp_path / "enclave.log"
    enclave = _start_enclave(consortium, state, log)
    address = enclave.address
    try:
        owner = make_owner(address, consortium)
        done = owner.upload(write_shard(tmp_path / "done.npz"), state_dir=tmp_path / "o")
        big = write_shard(tmp_path / "big.npz", rows=300_000)  # ~7 MiB, 1 MiB chunks

        progress_file = state / "uploads" / "hospital-a" / "big" / "progress.json"

        def kill_midway(sent: int, total: int) -> None:
            if sent >= 5 << 20 and enclave.running():
                deadline = time.time() + 20  # kill once the enclave has acknowledged something
                while time.time() < deadline:
                    try:
                        if json.loads(progress_file.read_text())["next_index"] >= 2:
                            break
                    except (OSError, ValueError):
                        pass
                    time.sleep(0.01)
                enclave.kill()

        with pytest.raises(ProtocolError):
            owner.upload(big, progress=kill_midway, state_dir=tmp_path / "o")
        owner.close()
        partial = state / "uploads" / "hospital-a" / "big"
        assert partial.exists()

        enclave = _start_enclave(consortium, state, log)
        address = enclave.address
        # Restart truncated the partial to its last durable ack.
        progress = json.loads((partial / "progress.json").read_text())
        assert (partial / "chunks.bin").stat().st_size == progress["offset"]
        assert progress["next_index"] >= 1

        owner = make_owner(address, consortium)
        kept = {r.shard_id: r for r in owner.receipts()}
        assert kept["done"].body == done.body  # the acknowledged shard survived the crash
        starts: list[int] = []
        receipt = owner.upload(
            big,
            progress=lambda s, t: starts.append(s) if not starts else None,
            state_dir=tmp_path / "o",
        )
        assert starts[0] == progress["next_index"] * (1 << 20)
        assert receipt.rows == 300_000
        owner.close()
    finally:
        status = enclave.stop()
    assert status == 0  # graceful stop on SIGTERM


def test_unresumable_partial_is_discarded_on_restart(tmp_path: Path) -> None:
    """A partial with no durable progress record keeps nothing after a restart."""
    c = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    with running_enclave(c, state) as (_address, app):
        junk = app.store.partial_dir("hospital-a", "x")
    junk.mkdir(parents=True)
    (junk / "chunks.bin").write_bytes(b"ciphertext")
    with running_enclave(c, state):
        assert not junk.exists()
