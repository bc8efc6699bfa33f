"""Floods against a real loopback enclave: nobody can hold what every caller needs.

Before the limits, 32 idle reflection streams from a stranger, 32 watches from one party,
or stalled uploads took every worker thread: health checks and every party's requests
blocked. Each test here holds more streams than the worker pool has threads' worth of
budget, then asks the enclave for its health (as a stranger) and its status (as another
party), and checks the flood's extra streams were refused at once with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.limits import ServerLimits
from tests.consortium import make_consortium, running_enclave
from tests.hostile.helpers import (
    HEALTH_DEADLINE_S,
    first_response,
    health_check,
    open_stream,
    signed_metadata,
    tls_channel,
    upload_header_request,
)
from tests.ingest.conftest import make_owner, write_shard

SERVING = health_pb2.HealthCheckResponse.SERVING
FLOOD = 40  # more than any budget, and more than the 32 that starved the old server


def _held_streams(open_one: Any, n: int) -> tuple[list[Any], list[grpc.RpcError]]:
    """Open ``n`` streams; return (the calls, the errors of those refused at once)."""
    calls, refused = [], []
    for _ in range(n):
        call = open_one()
        calls.append(call)
    for call in calls:
        msg, err = first_response(call, timeout=2.0)
        if err is not None:
            refused.append(err)
    return calls, refused


def _over_budget(refused: list[grpc.RpcError]) -> list[grpc.RpcError]:
    """The refusals by the enclave's budgets. The others must be HTTP/2 REFUSED_STREAM: one
    connection may open only ``streams_per_connection`` streams at once, and a client that
    opens more before it has the server's settings has the extra ones reset."""
    out = []
    for err in refused:
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            out.append(err)
        else:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            assert "RST_STREAM" in (err.details() or "") and "error code 7" in (err.details() or "")
    return out


def test_reflection_is_off_unless_asked_for(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        with tls_channel(address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            with pytest.raises(grpc.RpcError) as e:
                list(call)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_idle_reflection_and_health_watch_streams_from_a_stranger(tmp_path: Path) -> None:
    import queue

    from grpc_reflection.v1alpha import reflection_pb2_grpc

    limits = ServerLimits(reflection=True)
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state", limits=limits) as (address, _app):
        channels = [tls_channel(address) for _ in range(FLOOD)]
        try:
            outboxes: list[queue.Queue[Any]] = []

            def reflection() -> Any:
                ch = channels[len(outboxes) % FLOOD]
                box: queue.Queue[Any] = queue.Queue()
                outboxes.append(box)
                return open_stream(
                    reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo, box
                )

            def health_watch() -> Any:
                ch = channels[len(outboxes) % FLOOD]
                outboxes.append(None)  # type: ignore[arg-type]
                return health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())

            calls, refused = _held_streams(reflection, FLOOD // 2)
            more, refused_more = _held_streams(health_watch, FLOOD // 2)
            held = len(calls) + len(more) - len(refused) - len(refused_more)
            assert held <= limits.open_streams
            for err in _over_budget(refused + refused_more):
                assert "unauthenticated streams" in (err.details() or "")
            assert health_check(address) == SERVING
            with make_owner(address, c, "hospital-b") as other:
                assert other.status().phase == "collecting"
            for call in calls + more:
                call.cancel()
            for box in outboxes:
                if box is not None:
                    box.put(None)
        finally:
            for ch in channels:
                ch.close()
        # The slots come back when the streams end.
        deadline = time.monotonic() + HEALTH_DEADLINE_S
        while _app is not None and time.monotonic() < deadline:
            with tls_channel(address) as ch:
                call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
                msg, err = first_response(call, timeout=5.0)
                call.cancel()
            if err is None:
                break
            time.sleep(0.2)
        assert err is None and msg.status == SERVING


def test_watch_flood_from_one_party(tmp_path: Path) -> None:
    limits = ServerLimits()
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state", limits=limits) as (address, _app):
        with make_owner(address, c, "hospital-a") as flooder:
            req = pb.WatchTrainingRequest()

            def watch() -> Any:
                md = signed_metadata(flooder, "WatchTraining", req.SerializeToString())
                return flooder.stub.WatchTraining(req, metadata=md)

            calls, refused = _held_streams(watch, FLOOD)
            assert len(calls) - len(refused) == limits.watches_per_party
            over_budget = _over_budget(refused)
            assert over_budget, "no watch was refused by the enclave's budget"
            assert "hospital-a" in (over_budget[0].details() or "")
            assert health_check(address) == SERVING
            # Its own short requests, and every other party's, still answer.
            assert flooder.status().phase == "collecting"
            with make_owner(address, c, "hospital-b") as other:
                assert other.status().phase == "collecting"
            for call in calls:
                call.cancel()
            # Cancelled watches give their slots back.
            deadline = time.monotonic() + HEALTH_DEADLINE_S
            while True:
                call = watch()
                msg, err = first_response(call, timeout=5.0)
                call.cancel()
                if err is None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert err is None and msg.phase == "collecting"


def test_stalled_uploads_are_bounded_and_time_out(tmp_path: Path) -> None:
    import queue

    limits = ServerLimits(upload_idle_s=1.0)
    c = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    with running_enclave(c, state, limits=limits) as (address, _app):
        with make_owner(address, c, "hospital-a") as staller:
            boxes: list[queue.Queue[Any]] = []
            calls = []
            for i in range(4):
                box: queue.Queue[Any] = queue.Queue()
                box.put(upload_header_request(staller, f"stall-{i}"))
                boxes.append(box)
                calls.append(
                    open_stream(
                        staller.stub.Upload, box, metadata=signed_metadata(staller, "Upload")
                    )
                )
            results = [first_response(call, timeout=HEALTH_DEADLINE_S) for call in calls]
            codes = sorted(err.code().name for _msg, err in results if err is not None)
            # The policy allows 2 uploads at once per provider: 2 refused at once, and the
            # 2 admitted closed by the enclave after 1 s without a message.
            assert codes.count("RESOURCE_EXHAUSTED") == 2, codes
            assert codes.count("DEADLINE_EXCEEDED") == 2, codes
            for _msg, err in results:
                if err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "limits.concurrent_uploads_per_provider" in (err.details() or "")
            for box in boxes:
                box.put(None)
            assert health_check(address) == SERVING
            # The slots are free again: a real upload goes through.
            shard = write_shard(tmp_path / "a.npz", rows=50)
            receipt = staller.upload(shard, shard_id="real", state_dir=tmp_path / "owner")
            assert receipt.rows == 50


def test_unauthenticated_requests_are_refused_fast_and_hold_nothing(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        with tls_channel(address) as ch:
            from cctrain.v1 import enclave_pb2_grpc as pb_grpc

            stub = pb_grpc.EnclaveStub(ch)  # type: ignore[no-untyped-call]
            for _ in range(200):
                with pytest.raises(grpc.RpcError) as e:
                    stub.GetStatus(pb.GetStatusRequest(), timeout=HEALTH_DEADLINE_S)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_check(address) == SERVING
