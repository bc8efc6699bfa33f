"""Health.Check no longer tells services apart: it answers SERVING for any name.

``_health_check_handler`` (auth.py) answers without reading the request, so a probe for a
service the server does not have (a typo in a load balancer's config, a check for a service
that was removed) is told SERVING instead of NOT_FOUND, which the standard health protocol
(and grpc_health's servicer, used before) answers. The message does not have to be waited
for without a bound: it could be read with the same ``request_timeout_s`` helper as the
other unary requests (the ``health`` budget bounds the workers that wait).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.consortium import make_consortium, running_enclave
from tests.hostile.helpers import tls_channel


def test_unknown_service_is_not_found(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        with tls_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                resp = stub.Check(
                    health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10
                )
                pytest.fail(
                    f"answered {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
