"""Play a malicious party or a stranger against a real loopback enclave: raw gRPC calls,
streams held open, health checks with a deadline."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cctrain.client import TLS_SERVER_NAME, DataOwner, _parse_address, fetch_server_certificate
from cctrain.v1 import enclave_pb2 as pb

#: How long a health check may take. Generous on purpose: what the flood tests tell apart is
#: "answered" from "blocked behind the flood" (before the limits, it never answered).
HEALTH_DEADLINE_S = 15.0


def tls_channel(address: str) -> grpc.Channel:
    """A TLS channel to the enclave as anyone (a stranger holds no party key)."""
    host, port = _parse_address(address)
    der = fetch_server_certificate(host, port)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=pem),
        options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)],
    )


def health_check(address: str) -> int:
    """The enclave's health status, asked by a stranger on a fresh connection."""
    with tls_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S
        )
    return int(resp.status)


@dataclass
class HeldStream:
    """A client stream kept open: messages go in through ``send``; it ends on ``close``."""

    call: Any
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    first: Any = None
    error: grpc.RpcError | None = None

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()


def requests_from(outbox: queue.Queue[Any]) -> Iterator[Any]:
    while (item := outbox.get()) is not None:
        yield item


def open_stream(method: Any, outbox: queue.Queue[Any], **kw: Any) -> Any:
    return method(requests_from(outbox), **kw)


def first_response(call: Any, timeout: float = HEALTH_DEADLINE_S) -> tuple[Any, Any]:
    """(first response, None) or (None, the RpcError): read on a thread, bounded wait."""
    box: dict[str, Any] = {}

    def read() -> None:
        try:
            box["msg"] = next(call)
        except grpc.RpcError as exc:
            box["err"] = exc
        except StopIteration:
            box["msg"] = None

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return box.get("msg"), box.get("err")


def signed_metadata(owner: DataOwner, method: str, body: bytes = b"") -> list[tuple[str, Any]]:
    return owner.metadata(method, body)


def upload_header_request(owner: DataOwner, shard_id: str, *, size: int = 1 << 16) -> Any:
    """A valid signed upload header for ``size`` bytes (never followed by data)."""
    header, sig, _key = owner._new_header("npz", shard_id, 1 << 14, size)
    return pb.UploadRequest(header=pb.UploadHeader(header=header, signature=sig))
