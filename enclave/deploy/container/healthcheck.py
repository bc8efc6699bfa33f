#!/opt/cctrain/bin/python
"""Container health check for the enclave: ``cctrain-healthcheck [HOST:PORT]``.

Asks the standard gRPC health service (``grpc.health.v1.Health/Check``, service ``""``)
over TLS and exits 0 when it answers SERVING, 1 otherwise (not listening, no TLS, any other
status), 2 on a malformed address. It is a liveness probe for the orchestrator, not
attestation: it takes whatever certificate the port presents (the enclave makes a fresh one
at each start) and proves nothing about what runs there. Parties attest with ``cctrain``.
"""

from __future__ import annotations

import socket
import ssl
import sys

TLS_SERVER_NAME = "cctrain-enclave"  # the name in the enclave's certificate (cctrain.client)
TIMEOUT_S = 4.0


def server_certificate(host: str, port: int) -> bytes:
    """The PEM certificate the port presents (TLS with ALPN h2, as gRPC requires)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # liveness only: see the module docstring
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        with ctx.wrap_socket(sock, server_hostname=TLS_SERVER_NAME) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("no certificate presented")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def check(address: str) -> int:
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        print(f"address: got {address!r}, want HOST:PORT", file=sys.stderr)
        return 2
    host = host.strip("[]")
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        pem = server_certificate(host, int(port_text))
        target = f"[{host}]:{port_text}" if ":" in host else f"{host}:{port_text}"
        with grpc.secure_channel(
            target,
            grpc.ssl_channel_credentials(root_certificates=pem),
            options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)],
        ) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
    except (OSError, ssl.SSLError, grpc.RpcError) as exc:
        print(f"unhealthy: {address}: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: cctrain-healthcheck [HOST:PORT]", file=sys.stderr)
        return 2
    return check(argv[0] if argv else "127.0.0.1:7443")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
