"""Request messages that do not parse are refused (INVALID_ARGUMENT), not crashed on.

Found by the fuzzing campaign (tests/campaigns/test_fuzz_rpcs.py): gRPC deserializes
streamed and unauthenticated requests itself unless told not to, and answers a message
that does not parse with INTERNAL ("Exception deserializing request!") and an ERROR log
record with a traceback, for anyone who sends one: a stranger's health check, a party's
upload stream.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import make_consortium, running_enclave
from tests.hostile.helpers import HEALTH_DEADLINE_S, health_check, signed_metadata, tls_channel
from tests.ingest.conftest import make_owner

#: Not a protobuf message: a field with wire type 7, which does not exist.
GARBAGE = b"\x0f\xff\xff"
SERVING = 1  # HealthCheckResponse.SERVING


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("method", ["Check", "Watch"])
def test_a_health_request_that_does_not_parse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    # Would catch: INTERNAL and a logged traceback for a stranger's undecodable request.
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        with tls_channel(address) as ch:
            path = f"/grpc.health.v1.Health/{method}"
            with pytest.raises(grpc.RpcError) as e:
                if method == "Check":
                    ch.unary_unary(path)(GARBAGE, timeout=HEALTH_DEADLINE_S)
                else:
                    list(ch.unary_stream(path)(GARBAGE, timeout=HEALTH_DEADLINE_S))
        assert health_check(address) == SERVING
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details() == "malformed request message"
    assert _errors(caplog) == []


@pytest.mark.parametrize("position", ["first", "after the header"])
def test_an_upload_message_that_does_not_parse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, position: str
) -> None:
    # Would catch: INTERNAL and a logged traceback for a party's undecodable stream
    # message, and any byte of the refused upload kept.
    from tests.hostile.helpers import upload_header_request

    c = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        with make_owner(address, c, "hospital-a") as a:
            upload = a._channel.stream_stream("/cctrain.v1.Enclave/Upload")  # noqa: SLF001
            messages = [GARBAGE]
            if position != "first":
                messages.insert(0, upload_header_request(a, "s").SerializeToString())
            with pytest.raises(grpc.RpcError) as e:
                list(upload(iter(messages), metadata=signed_metadata(a, "Upload"), timeout=15))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert e.value.details() == "malformed request message"
            status = a.unary("UploadStatus", pb.UploadStatusRequest(shard_id="s"))
            assert status.state == pb.UploadStatusResponse.UNKNOWN  # nothing kept
            assert a.status().phase == "collecting"
    assert _errors(caplog) == []
    assert not any((state / "uploads" / "hospital-a").glob("*"))
