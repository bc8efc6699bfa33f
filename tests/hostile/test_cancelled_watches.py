"""A cancelled RPC gives its slots back when its worker is done, not when gRPC says it ended.

Found by an independent review: slots were given back from ``context.add_callback``, which
gRPC runs when the RPC terminates (at the client's cancel), while the worker may still be
inside the handler; ``WatchTraining`` noticed a cancel only on its next 1 s wait. A party
that opened a watch, read the first event and cancelled, in a loop, kept ~100 of the 128
workers inside ``watch`` with the default limits while its budget of 2 showed free. Now the
slots come back when the behaviour returns or its response generator ends (a single
response is serialized before that), and a cancelled watch wakes at once. This test runs
the loop against a 12-worker server and counts the workers inside ``watch``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import grpc

from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.limits import ServerLimits
from tests.consortium import make_consortium, running_enclave
from tests.hostile.helpers import tls_channel
from tests.ingest.conftest import make_owner


def _workers_inside_watch() -> int:
    n = 0
    for frame in sys._current_frames().values():  # one atomic snapshot of every thread
        f = frame
        while f is not None:
            if f.f_code.co_name == "watch" and f.f_code.co_filename.endswith("run.py"):
                n += 1
                break
            f = f.f_back
    return n


def test_watch_cancel_loop_holds_no_more_workers_than_its_budget(tmp_path: Path) -> None:
    limits = ServerLimits(
        workers=12, health=1, open_streams=1, unary=2, unary_per_party=2,
        streams=4, streams_per_party=4, watches_per_party=2,
    )  # fmt: skip
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state", limits=limits) as (address, _app):
        owner = make_owner(address, c, "hospital-a")
        stop = threading.Event()

        def watch_and_cancel() -> None:
            with tls_channel(address) as ch:
                watch = ch.unary_stream(
                    "/cctrain.v1.Enclave/WatchTraining",
                    request_serializer=pb.WatchTrainingRequest.SerializeToString,
                    response_deserializer=pb.TrainingEvent.FromString,
                )
                body = pb.WatchTrainingRequest().SerializeToString()
                while not stop.is_set():
                    call = watch(
                        pb.WatchTrainingRequest(),
                        metadata=owner.metadata("WatchTraining", body),
                    )
                    try:
                        next(call)
                    except grpc.RpcError:
                        pass
                    call.cancel()

        threads = [threading.Thread(target=watch_and_cancel, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        peak = 0
        try:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                peak = max(peak, _workers_inside_watch())
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            owner.close()
    # One party's watches may hold at most watches_per_party workers. Observed: the whole
    # pool (12 of 12 here; 34 with the default 128 workers from two client threads).
    assert peak <= limits.watches_per_party, (
        f"{peak} workers inside WatchTraining with a budget of {limits.watches_per_party} "
        f"(pool of {limits.workers})"
    )
