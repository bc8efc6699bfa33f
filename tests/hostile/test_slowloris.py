"""Headers without a body: nobody holds a worker by never sending its request message.

gRPC's synchronous server hands an RPC to a worker thread, and for a unary method the
worker waits for the request message without a timeout. Found by an independent review: a
stranger with no key opened 132 health checks (or any unary call) that sent their headers
and never their message, took the whole pool, and every later RPC, health checks included,
queued behind them. Now the interceptor authenticates from the metadata and takes the
RPC's slots before a worker is involved (a unary request's signature covers its body's
digest, sent as ``cctrain-body-sha256``), the health check answers without reading its
request, and a unary handler waits for its message at most ``request_timeout_s``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cctrain.client import TLS_SERVER_NAME, _parse_address, fetch_server_certificate
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.limits import ServerLimits
from tests.consortium import make_consortium, running_enclave
from tests.hostile.helpers import health_check, signed_metadata
from tests.ingest.conftest import make_owner

SERVING = health_pb2.HealthCheckResponse.SERVING


def _own_connection(address: str) -> grpc.Channel:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    host, port = _parse_address(address)
    der = fetch_server_certificate(host, port)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=pem),
        options=[
            ("grpc.ssl_target_name_override", TLS_SERVER_NAME),
            ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
        ],
    )


def _code(call: Any) -> str:
    exc = call.exception(timeout=30)
    return "OK" if exc is None else str(exc.code().name)


def _rx_threads() -> int:
    return sum(t.name == "cctrain-rpc-rx" for t in threading.enumerate())


@pytest.mark.parametrize("who", ["stranger: health check", "stranger: GetStatus", "party"])
def test_headers_without_a_body_take_no_worker(tmp_path: Path, who: str) -> None:
    limits = ServerLimits(request_timeout_s=2.0)  # 128 workers, 16 streams per connection
    c = make_consortium(tmp_path / "c")
    never = threading.Event()

    def no_message() -> Any:  # the request stream a unary method waits on: it never yields
        never.wait()
        return
        yield  # pragma: no cover

    with running_enclave(c, tmp_path / "state", limits=limits) as (address, _app):
        owner = make_owner(address, c, "hospital-a")
        n = limits.workers + 4
        channels = [_own_connection(address) for _ in range(n // limits.streams_per_connection + 1)]
        calls = []
        try:
            for i in range(n):
                ch = channels[i % len(channels)]
                if who == "stranger: health check":
                    hold = ch.stream_unary("/grpc.health.v1.Health/Check")
                    md: list[tuple[str, Any]] = []
                else:
                    hold = ch.stream_unary("/cctrain.v1.Enclave/GetStatus")
                    md = signed_metadata(
                        owner, "GetStatus", pb.GetStatusRequest().SerializeToString()
                    )
                    if who.startswith("stranger"):
                        md = [(k, b"\0" * 64 if k.endswith("-bin") else v) for k, v in md]
                # A stream-unary call on a unary method: HEADERS go out, no DATA follows.
                calls.append(hold.future(no_message(), metadata=md))
            time.sleep(1.0)
            # The claim (docs/hostile.md): a worker is always free for a health check, and
            # for every other party.
            assert health_check(address) == SERVING
            with make_owner(address, c, "hospital-b") as other:
                assert other.status().phase == "collecting"
            codes = sorted({_code(call) for call in calls})
        finally:
            never.set()
            for call in calls:
                call.cancel()
            for ch in channels:
                ch.close()
            owner.close()
    if who == "stranger: health check":
        # Answered without waiting for the message, or (past the 4 at once) refused.
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"} and "OK" in codes, codes
    elif who == "stranger: GetStatus":
        assert set(codes) <= {"UNAUTHENTICATED", "UNAVAILABLE"}, codes
    else:
        # The party's own budget holds some until the timeout; the rest are refused at once.
        assert set(codes) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes
        assert "DEADLINE_EXCEEDED" in codes and "RESOURCE_EXHAUSTED" in codes, codes
    # The threads that waited for the messages have ended with their RPCs.
    deadline = time.monotonic() + 15
    while _rx_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _rx_threads() == 0
